module sifchecker

go 1.18
