// Command go-checker drives the reference Go library (github.com/sylabs/sif/v2)
// for the sif crate's interoperability tests:
//
//	go-checker print <image>                    load and print header and descriptors
//	go-checker add <image> <type> <data> <name> append an object (deterministic, group 1)
//	go-checker delete <image> <id> <zero> <compact>
//	                                            delete an object (deterministic; zero/compact are 0 or 1)
//	go-checker sign <image> <key.asc> [group|object N]
//	                                            sign with pkg/integrity (deterministic, fixed time)
//	go-checker verify <image> <keyring.asc> [legacy]
//	                                            verify with pkg/integrity; prints "ok" or the error
//	go-checker metadata <image> <key.asc> <group>
//	                                            print the JSON document pkg/integrity signs for a group
//
// "print" writes a stable line-oriented description that the Rust tests
// compare with what the sif crate reads; any load error exits non-zero.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/sylabs/sif/v2/pkg/sif"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: go-checker print|add|delete|sign|verify|metadata <image> ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "print":
		printImage(os.Args[2])
	case "add":
		if len(os.Args) != 6 {
			fail("usage: go-checker add <image> <type> <data> <name>")
		}
		addObject(os.Args[2], os.Args[3], os.Args[4], os.Args[5])
	case "delete":
		if len(os.Args) != 6 {
			fail("usage: go-checker delete <image> <id> <zero> <compact>")
		}
		deleteObject(os.Args[2], os.Args[3], os.Args[4] == "1", os.Args[5] == "1")
	case "sign":
		signImage(os.Args[2:])
	case "verify":
		verifyImage(os.Args[2:])
	case "metadata":
		printMetadata(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}

func addObject(path, typ, dataPath, name string) {
	t, err := strconv.ParseInt(typ, 0, 32)
	if err != nil {
		fail("type: %v", err)
	}
	data, err := os.ReadFile(dataPath)
	if err != nil {
		fail("data: %v", err)
	}
	di, err := sif.NewDescriptorInput(sif.DataType(t), bytes.NewReader(data), sif.OptObjectName(name))
	if err != nil {
		fail("input: %v", err)
	}
	f, err := sif.LoadContainerFromPath(path)
	if err != nil {
		fail("load: %v", err)
	}
	defer f.UnloadContainer()
	if err := f.AddObject(di, sif.OptAddDeterministic()); err != nil {
		fail("add: %v", err)
	}
}

func deleteObject(path, idText string, zero, compact bool) {
	id, err := strconv.ParseUint(idText, 10, 32)
	if err != nil {
		fail("id: %v", err)
	}
	f, err := sif.LoadContainerFromPath(path)
	if err != nil {
		fail("load: %v", err)
	}
	defer f.UnloadContainer()
	err = f.DeleteObject(uint32(id), sif.OptDeleteZero(zero), sif.OptDeleteCompact(compact), sif.OptDeleteDeterministic())
	if err != nil {
		fail("delete: %v", err)
	}
}

func printImage(path string) {
	f, err := sif.LoadContainerFromPath(path, sif.OptLoadWithFlag(os.O_RDONLY))
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	defer f.UnloadContainer()

	fmt.Printf("header launch=%q version=%s arch=%s id=%s created=%d modified=%d free=%d total=%d descoff=%d descsize=%d dataoff=%d datasize=%d\n",
		f.LaunchScript(), f.Version(), f.PrimaryArch(), f.ID(),
		f.CreatedAt().Unix(), f.ModifiedAt().Unix(),
		f.DescriptorsFree(), f.DescriptorsTotal(), f.DescriptorsOffset(),
		f.DescriptorsSize(), f.DataOffset(), f.DataSize())

	if p, err := f.GetDescriptor(sif.WithPartitionType(sif.PartPrimSys)); err == nil {
		fmt.Printf("primary id=%d\n", p.ID())
	} else if !errors.Is(err, sif.ErrObjectNotFound) && !errors.Is(err, sif.ErrNoObjects) {
		fmt.Fprintln(os.Stderr, "primary:", err)
		os.Exit(1)
	}

	var failed error
	f.WithDescriptors(func(d sif.Descriptor) bool {
		link, isGroup := d.LinkedID()
		data, err := d.GetData()
		if err != nil {
			failed = fmt.Errorf("object %d: %w", d.ID(), err)
			return true
		}
		fmt.Printf("object id=%d type=%d group=%d link=%d linkgroup=%t offset=%d size=%d created=%d modified=%d name=%q datalen=%d",
			d.ID(), int32(d.DataType()), d.GroupID(), link, isGroup, d.Offset(), d.Size(),
			d.CreatedAt().Unix(), d.ModifiedAt().Unix(), d.Name(), len(data))
		switch d.DataType() {
		case sif.DataPartition:
			fs, pt, arch, err := d.PartitionMetadata()
			if err != nil {
				failed = err
				return true
			}
			fmt.Printf(" fs=%d part=%d arch=%s", int32(fs), int32(pt), arch)
		case sif.DataSignature:
			ht, fp, err := d.SignatureMetadata()
			if err != nil {
				failed = err
				return true
			}
			fmt.Printf(" hash=%v fp=%X", ht, fp)
		case sif.DataCryptoMessage:
			ft, mt, err := d.CryptoMessageMetadata()
			if err != nil {
				failed = err
				return true
			}
			fmt.Printf(" format=%d message=%d", int32(ft), int32(mt))
		case sif.DataSBOM:
			sf, err := d.SBOMMetadata()
			if err != nil {
				failed = err
				return true
			}
			fmt.Printf(" sbom=%d", int32(sf))
		}
		fmt.Println()
		return false
	})
	if failed != nil {
		fmt.Fprintln(os.Stderr, "descriptor:", failed)
		os.Exit(1)
	}
}
