//! sifrun runtime (in progress).
