//! Enumerations stored in SIF headers and descriptors, with the numeric codes
//! of sylabs/sif v2 and the human-readable names its `siftool` prints.
//!
//! Every enum that is decoded from an untrusted field has an `Unknown` variant
//! (keeping the raw code where there is one) so that decoding never fails.

use std::fmt;

/// Mask that marks group ids in the descriptor group and link fields.
pub const GROUP_MASK: u32 = 0xf000_0000;

/// Kind of data object a descriptor describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// Definition file (0x4001).
    Deffile,
    /// Environment variables (0x4002).
    EnvVar,
    /// JSON labels (0x4003).
    Labels,
    /// File system partition (0x4004).
    Partition,
    /// Signature (0x4005).
    Signature,
    /// Generic JSON (0x4006).
    GenericJson,
    /// Generic / raw data (0x4007).
    Generic,
    /// Cryptographic message (0x4008).
    CryptoMessage,
    /// Software bill of materials (0x4009).
    Sbom,
    /// OCI root index (0x400a).
    OciRootIndex,
    /// OCI blob (0x400b).
    OciBlob,
    /// Any other code, kept verbatim. Construct through [`DataType::from_raw`]
    /// so that known codes never end up here.
    Unknown(i32),
}

impl DataType {
    /// Decodes an on-disk data type code.
    pub fn from_raw(v: i32) -> Self {
        match v {
            0x4001 => Self::Deffile,
            0x4002 => Self::EnvVar,
            0x4003 => Self::Labels,
            0x4004 => Self::Partition,
            0x4005 => Self::Signature,
            0x4006 => Self::GenericJson,
            0x4007 => Self::Generic,
            0x4008 => Self::CryptoMessage,
            0x4009 => Self::Sbom,
            0x400a => Self::OciRootIndex,
            0x400b => Self::OciBlob,
            other => Self::Unknown(other),
        }
    }

    /// The on-disk code.
    pub fn to_raw(self) -> i32 {
        match self {
            Self::Deffile => 0x4001,
            Self::EnvVar => 0x4002,
            Self::Labels => 0x4003,
            Self::Partition => 0x4004,
            Self::Signature => 0x4005,
            Self::GenericJson => 0x4006,
            Self::Generic => 0x4007,
            Self::CryptoMessage => 0x4008,
            Self::Sbom => 0x4009,
            Self::OciRootIndex => 0x400a,
            Self::OciBlob => 0x400b,
            Self::Unknown(v) => v,
        }
    }
}

impl fmt::Display for DataType {
    /// The names `siftool` prints ("FS", "Def.FILE", ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deffile => "Def.FILE",
            Self::EnvVar => "Env.Vars",
            Self::Labels => "JSON.Labels",
            Self::Partition => "FS",
            Self::Signature => "Signature",
            Self::GenericJson => "JSON.Generic",
            Self::Generic => "Generic/Raw",
            Self::CryptoMessage => "Cryptographic Message",
            Self::Sbom => "SBOM",
            Self::OciRootIndex => "OCI.RootIndex",
            Self::OciBlob => "OCI.Blob",
            Self::Unknown(_) => "Unknown",
        })
    }
}

/// Defines a C-like enum decoded from an `i32` with an `Unknown(i32)` fallback.
macro_rules! coded_enum {
    (
        $(#[$meta:meta])*
        $name:ident, unknown = $unknown_name:literal,
        { $( $(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// Any other code, kept verbatim.
            Unknown(i32),
        }

        impl $name {
            /// Decodes an on-disk code.
            pub fn from_raw(v: i32) -> Self {
                match v {
                    $( $code => Self::$variant, )+
                    other => Self::Unknown(other),
                }
            }

            /// The on-disk code.
            pub fn to_raw(self) -> i32 {
                match self {
                    $( Self::$variant => $code, )+
                    Self::Unknown(v) => v,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $( Self::$variant => $text, )+
                    Self::Unknown(_) => $unknown_name,
                })
            }
        }
    };
}

coded_enum! {
    /// File system type of a partition object. Display names follow `siftool`.
    FsType, unknown = "Unknown", {
        /// SquashFS (read-only).
        Squashfs = 1 => "Squashfs",
        /// ext3 (deprecated).
        Ext3 = 2 => "Ext3",
        /// Immutable object archive.
        ImmutableObject = 3 => "Archive",
        /// Raw data.
        Raw = 4 => "Raw",
        /// SquashFS inside a LUKS2 container.
        EncryptedSquashfs = 5 => "Encrypted squashfs",
        /// gocryptfs-in-SquashFS (apptainer/sif only).
        GocryptfsSquashfs = 6 => "Gocryptfs squashfs",
    }
}

coded_enum! {
    /// Role of a partition object. `PrimSys` displays as `*System`, like `siftool`.
    PartType, unknown = "Unknown", {
        /// Operating system partition.
        System = 1 => "System",
        /// Primary operating system partition (at most one per image).
        PrimSys = 2 => "*System",
        /// Data-only partition.
        Data = 3 => "Data",
        /// Overlay partition.
        Overlay = 4 => "Overlay",
    }
}

coded_enum! {
    /// Hash algorithm recorded in a signature descriptor. Display names follow Go's `crypto.Hash`.
    HashType, unknown = "Unknown", {
        /// SHA-256.
        Sha256 = 1 => "SHA-256",
        /// SHA-384.
        Sha384 = 2 => "SHA-384",
        /// SHA-512.
        Sha512 = 3 => "SHA-512",
        /// BLAKE2s-256.
        Blake2s256 = 4 => "BLAKE2s-256",
        /// BLAKE2b-256.
        Blake2b256 = 5 => "BLAKE2b-256",
    }
}

coded_enum! {
    /// Encoding of a cryptographic message object.
    CryptoFormat, unknown = "Unknown", {
        /// OpenPGP.
        OpenPgp = 1 => "OpenPGP",
        /// PEM.
        Pem = 2 => "PEM",
    }
}

coded_enum! {
    /// Kind of message held by a cryptographic message object.
    MessageType, unknown = "Unknown", {
        /// OpenPGP clear-signed message.
        ClearSignature = 0x100 => "Clear Signature",
        /// RSA-OAEP encrypted key.
        RsaOaep = 0x200 => "RSA-OAEP",
    }
}

coded_enum! {
    /// Format of an SBOM object.
    SbomFormat, unknown = "unknown", {
        /// CycloneDX JSON.
        CycloneDxJson = 1 => "cyclonedx-json",
        /// CycloneDX XML.
        CycloneDxXml = 2 => "cyclonedx-xml",
        /// GitHub dependency snapshot JSON.
        GitHubJson = 3 => "github-json",
        /// SPDX JSON.
        SpdxJson = 4 => "spdx-json",
        /// SPDX RDF/XML.
        SpdxRdf = 5 => "spdx-rdf",
        /// SPDX tag/value.
        SpdxTagValue = 6 => "spdx-tag-value",
        /// SPDX YAML.
        SpdxYaml = 7 => "spdx-yaml",
        /// Syft JSON.
        SyftJson = 8 => "syft-json",
    }
}

/// CPU architecture, stored as two ASCII digits plus NUL in the header and in
/// partition descriptors. Display gives the Go runtime name ("amd64").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `00`, or any code this crate does not know.
    Unknown,
    /// `01`: 386.
    I386,
    /// `02`: amd64.
    Amd64,
    /// `03`: arm.
    Arm,
    /// `04`: arm64.
    Arm64,
    /// `05`: ppc64.
    Ppc64,
    /// `06`: ppc64le.
    Ppc64le,
    /// `07`: mips.
    Mips,
    /// `08`: mipsle.
    Mipsle,
    /// `09`: mips64.
    Mips64,
    /// `10`: mips64le.
    Mips64le,
    /// `11`: s390x.
    S390x,
    /// `12`: riscv64.
    Riscv64,
    /// `13`: loong64.
    Loong64,
}

const ARCH_TABLE: [(Arch, &[u8; 3], &str); 14] = [
    (Arch::Unknown, b"00\0", "unknown"),
    (Arch::I386, b"01\0", "386"),
    (Arch::Amd64, b"02\0", "amd64"),
    (Arch::Arm, b"03\0", "arm"),
    (Arch::Arm64, b"04\0", "arm64"),
    (Arch::Ppc64, b"05\0", "ppc64"),
    (Arch::Ppc64le, b"06\0", "ppc64le"),
    (Arch::Mips, b"07\0", "mips"),
    (Arch::Mipsle, b"08\0", "mipsle"),
    (Arch::Mips64, b"09\0", "mips64"),
    (Arch::Mips64le, b"10\0", "mips64le"),
    (Arch::S390x, b"11\0", "s390x"),
    (Arch::Riscv64, b"12\0", "riscv64"),
    (Arch::Loong64, b"13\0", "loong64"),
];

impl Arch {
    /// Decodes the 3-byte on-disk code; anything unrecognised is `Unknown`
    /// (sylabs/sif compares all three bytes, NUL included).
    pub fn from_code(code: [u8; 3]) -> Self {
        ARCH_TABLE
            .iter()
            .find(|(_, c, _)| **c == code)
            .map_or(Self::Unknown, |(a, _, _)| *a)
    }

    /// The 3-byte on-disk code (`b"02\0"` for amd64).
    pub fn code(self) -> [u8; 3] {
        *ARCH_TABLE
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, c, _)| *c)
            .unwrap_or(b"00\0")
    }

    /// Go runtime name ("amd64", "386", ... or "unknown").
    pub fn go_name(self) -> &'static str {
        ARCH_TABLE
            .iter()
            .find(|(a, _, _)| *a == self)
            .map_or("unknown", |(_, _, n)| n)
    }

    /// Parses a Go runtime architecture name; `None` for names not in the table.
    pub fn from_go_name(name: &str) -> Option<Self> {
        ARCH_TABLE
            .iter()
            .find(|(a, _, n)| *a != Self::Unknown && *n == name)
            .map(|(a, _, _)| *a)
    }

    /// Architecture of the running binary.
    pub fn host() -> Self {
        if cfg!(target_arch = "x86_64") {
            Self::Amd64
        } else if cfg!(target_arch = "x86") {
            Self::I386
        } else if cfg!(target_arch = "aarch64") {
            Self::Arm64
        } else if cfg!(target_arch = "arm") {
            Self::Arm
        } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
            Self::Ppc64le
        } else if cfg!(target_arch = "powerpc64") {
            Self::Ppc64
        } else if cfg!(all(target_arch = "mips", target_endian = "little")) {
            Self::Mipsle
        } else if cfg!(target_arch = "mips") {
            Self::Mips
        } else if cfg!(all(target_arch = "mips64", target_endian = "little")) {
            Self::Mips64le
        } else if cfg!(target_arch = "mips64") {
            Self::Mips64
        } else if cfg!(target_arch = "s390x") {
            Self::S390x
        } else if cfg!(target_arch = "riscv64") {
            Self::Riscv64
        } else if cfg!(target_arch = "loongarch64") {
            Self::Loong64
        } else {
            Self::Unknown
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.go_name())
    }
}

/// What a descriptor's linked-id field points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// Not linked.
    None,
    /// Linked to the object with this id.
    Object(u32),
    /// Linked to the object group with this id.
    Group(u32),
}

impl Link {
    /// Decodes the raw linked-id field the way sylabs/sif does: the id is the
    /// value without the group mask, and it is a group link only when all
    /// mask bits are set. An id of 0 means "not linked".
    pub fn from_raw(raw: u32) -> Self {
        let id = raw & !GROUP_MASK;
        if id == 0 {
            Self::None
        } else if raw & GROUP_MASK == GROUP_MASK {
            Self::Group(id)
        } else {
            Self::Object(id)
        }
    }

    /// Encodes the link for the on-disk linked-id field.
    pub fn to_raw(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Object(id) => id,
            Self::Group(id) => id | GROUP_MASK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_type_round_trips_and_keeps_unknown_codes() {
        for code in 0x4001..=0x400b {
            assert_eq!(DataType::from_raw(code).to_raw(), code);
            assert!(!matches!(DataType::from_raw(code), DataType::Unknown(_)));
        }
        assert_eq!(DataType::from_raw(0x4242), DataType::Unknown(0x4242));
        assert_eq!(DataType::Unknown(0x4242).to_raw(), 0x4242);
        assert_eq!(DataType::Partition.to_string(), "FS");
    }

    #[test]
    fn arch_codes_and_names() {
        assert_eq!(Arch::from_code(*b"02\0"), Arch::Amd64);
        assert_eq!(Arch::from_code(*b"02 "), Arch::Unknown);
        assert_eq!(Arch::Loong64.code(), *b"13\0");
        assert_eq!(Arch::I386.to_string(), "386");
        assert_eq!(Arch::from_go_name("arm64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_go_name("unknown"), None);
        assert_ne!(Arch::host(), Arch::Unknown);
    }

    #[test]
    fn link_decoding_matches_go() {
        assert_eq!(Link::from_raw(0), Link::None);
        assert_eq!(Link::from_raw(GROUP_MASK), Link::None);
        assert_eq!(Link::from_raw(0xf000_0002), Link::Group(2));
        assert_eq!(Link::from_raw(3), Link::Object(3));
        // Only some mask bits set: Go treats it as an object link.
        assert_eq!(Link::from_raw(0x1000_0003), Link::Object(3));
        assert_eq!(Link::Group(2).to_raw(), 0xf000_0002);
    }

    #[test]
    fn coded_enums_display_siftool_names() {
        assert_eq!(PartType::PrimSys.to_string(), "*System");
        assert_eq!(FsType::ImmutableObject.to_string(), "Archive");
        assert_eq!(HashType::from_raw(1).to_string(), "SHA-256");
        assert_eq!(SbomFormat::from_raw(99).to_string(), "unknown");
        assert_eq!(MessageType::from_raw(0x200), MessageType::RsaOaep);
    }
}
