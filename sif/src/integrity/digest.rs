//! Digest algorithms, `alg:hex` digest values, and fast streaming hashing of
//! object data.

use std::fmt;
use std::io::{self, Read};
use std::sync::mpsc;

use sha2::Digest as _;

/// Hash algorithms a signed metadata document may name (those sylabs/sif
/// accepts), with their JSON spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlg {
    /// SHA-224.
    Sha224,
    /// SHA-256, the default for new signatures.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA-512/224.
    Sha512_224,
    /// SHA-512/256.
    Sha512_256,
}

impl DigestAlg {
    const ALL: [DigestAlg; 6] = [
        Self::Sha224,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
        Self::Sha512_224,
        Self::Sha512_256,
    ];

    /// Name used in `alg:hex` digest strings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha224 => "sha224",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
            Self::Sha512_224 => "sha512_224",
            Self::Sha512_256 => "sha512_256",
        }
    }

    /// The algorithm with JSON name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha224 | Self::Sha512_224 => 28,
            Self::Sha256 | Self::Sha512_256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// A fresh streaming hasher.
    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            Self::Sha224 => Inner::Sha224(sha2::Sha224::new()),
            Self::Sha256 => Inner::Sha256(sha2::Sha256::new()),
            Self::Sha384 => Inner::Sha384(sha2::Sha384::new()),
            Self::Sha512 => Inner::Sha512(sha2::Sha512::new()),
            Self::Sha512_224 => Inner::Sha512_224(sha2::Sha512_224::new()),
            Self::Sha512_256 => Inner::Sha512_256(sha2::Sha512_256::new()),
        })
    }

    /// Digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for DigestAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Inner {
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Sha512_224(sha2::Sha512_224),
    Sha512_256(sha2::Sha512_256),
}

/// Streaming hasher for one [`DigestAlg`]. The sha2 crate picks the SHA-NI /
/// AVX2 implementation at run time, so no build flags are needed for speed.
pub struct Hasher(Inner);

impl Hasher {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Sha224(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
            Inner::Sha384(h) => h.update(data),
            Inner::Sha512(h) => h.update(data),
            Inner::Sha512_224(h) => h.update(data),
            Inner::Sha512_256(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            Inner::Sha224(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
            Inner::Sha384(h) => h.finalize().to_vec(),
            Inner::Sha512(h) => h.finalize().to_vec(),
            Inner::Sha512_224(h) => h.finalize().to_vec(),
            Inner::Sha512_256(h) => h.finalize().to_vec(),
        }
    }
}

/// A digest value with its algorithm, written `alg:lowercase-hex` in the
/// signed metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Algorithm.
    pub alg: DigestAlg,
    /// Raw digest bytes (`alg.digest_len()` of them).
    pub value: Vec<u8>,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// Not of the form `alg:hex`.
    #[error("digest {0:?} is not of the form alg:hex")]
    Form(String),
    /// Algorithm not one of the six accepted ones.
    #[error("unsupported digest algorithm {0:?}")]
    Algorithm(String),
    /// Hex that does not decode or has the wrong length for the algorithm.
    #[error("malformed {0} digest value")]
    Value(DigestAlg),
}

impl Digest {
    /// Parses `alg:hex` (one colon, hex of the right length; upper-case hex
    /// is accepted because Go's decoder accepts it).
    pub fn parse(s: &str) -> Result<Self, DigestParseError> {
        let mut parts = s.split(':');
        let (Some(name), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(DigestParseError::Form(truncate(s)));
        };
        let alg = DigestAlg::from_name(name)
            .ok_or_else(|| DigestParseError::Algorithm(truncate(name)))?;
        let value = decode_hex(hex).ok_or(DigestParseError::Value(alg))?;
        if value.len() != alg.digest_len() {
            return Err(DigestParseError::Value(alg));
        }
        Ok(Self { alg, value })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, hex(&self.value))
    }
}

/// Keeps hostile strings short in error messages.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex (either case); `None` on odd length or a non-hex character.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Size of one read when streaming object data. Small enough that the
/// buffers in flight stay in the CPU caches (the hashing thread reads what
/// the reader thread just copied from the cache, not from memory) and that
/// the pipeline fills fast for small images; large enough that system
/// calls stay negligible. Measured with `ci/bench-verify` at 64 MiB: 4 MiB
/// chunks cost a third more CPU (3,351 page faults instead of 469) and
/// about 15 % of the wall time.
const CHUNK: usize = 256 << 10;

/// Hashes everything `r` yields with each of `algs` (usually one).
#[cfg(test)]
pub fn hash_reader<R: Read + Send>(r: R, algs: &[DigestAlg]) -> io::Result<Vec<Vec<u8>>> {
    let mut hashers: Vec<Hasher> = algs.iter().map(|a| a.hasher()).collect();
    feed_reader(r, &mut hashers)?;
    Ok(hashers.into_iter().map(Hasher::finish).collect())
}

/// Feeds everything `r` yields into each of `hashers`, reading on a helper
/// thread while this thread hashes, so that copying data out of the page
/// cache overlaps with hashing and throughput approaches that of the hash
/// function alone.
pub fn feed_reader<R: Read + Send>(r: R, hashers: &mut [Hasher]) -> io::Result<()> {
    // Two buffers in flight plus one being filled: enough to keep both
    // threads busy without holding much memory.
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        empty_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut r = r;
            while let Ok(mut buf) = empty_rx.recv() {
                match read_full(&mut r, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if full_tx.send(Ok((buf, n))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        for item in full_rx {
            let (buf, n) = item?;
            for h in hashers.iter_mut() {
                h.update(&buf[..n]);
            }
            // The reader may already have stopped; a failed send only means
            // the buffer is no longer needed.
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        let d = Digest::parse(
            "sha256:635fa0a14a8ef0c0351ed3e985799ed1d4f75ce973dea3cc76c99710795cc3f1",
        )
        .unwrap();
        assert_eq!(d.alg, DigestAlg::Sha256);
        assert_eq!(
            d.to_string(),
            "sha256:635fa0a14a8ef0c0351ed3e985799ed1d4f75ce973dea3cc76c99710795cc3f1"
        );
    }

    #[test]
    fn parse_refuses_bad_digests() {
        for s in [
            "",
            "sha256",
            "sha256:",
            "sha256:ab",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:zz5fa0a14a8ef0c0351ed3e985799ed1d4f75ce973dea3cc76c99710795cc3f1",
            "sha256:a:b",
            "sha256:635",
        ] {
            assert!(Digest::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let got = hash_reader(&data[..], &[DigestAlg::Sha256, DigestAlg::Sha384]).unwrap();
        assert_eq!(got[0], DigestAlg::Sha256.digest(&data));
        assert_eq!(got[1], DigestAlg::Sha384.digest(&data));
        let empty = hash_reader(&[][..], &[DigestAlg::Sha256]).unwrap();
        assert_eq!(empty[0], DigestAlg::Sha256.digest(b""));
    }

    #[test]
    fn lengths_match_hashers() {
        for a in DigestAlg::ALL {
            assert_eq!(a.digest(b"x").len(), a.digest_len(), "{a}");
        }
    }
}
