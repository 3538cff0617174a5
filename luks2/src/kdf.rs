//! Key derivation for keyslots (passphrase → keyslot key) and for the
//! volume-key digest. Costs come from hostile headers, so they are bounded.

use sha2::Sha256;

use crate::error::{Error, Result};

/// Largest Argon2 memory cost accepted, in KiB (cryptsetup's own maximum, 4 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Largest Argon2 parallelism accepted (cryptsetup's own maximum).
pub const MAX_ARGON2_LANES: u32 = 4;
/// Largest Argon2 time cost accepted.
pub const MAX_ARGON2_TIME: u32 = 1000;
/// Smallest PBKDF2 iteration count cryptsetup accepts (so we write no less).
pub const MIN_PBKDF2_ITERATIONS: u32 = 1000;
/// Most PBKDF2-SHA256 iterations one derivation may cost (a keyslot or the
/// volume-key digest), a few seconds of one core: cryptsetup's default
/// (`--iter-time 2000`) gives one to four million on current CPUs. A header
/// asking for more is refused before any work is done.
pub const MAX_PBKDF2_ITERATIONS: u32 = 16_000_000;
/// Most Argon2 work one derivation may cost, in KiB × passes: 4 passes
/// over 4 GiB (cryptsetup's defaults are at most 4 passes over 1 GiB).
pub const MAX_ARGON2_WORK: u64 = 16 * 1024 * 1024;
/// Keyslots tried per unlock (Apptainer writes one; cryptsetup allows 32).
pub const MAX_KEYSLOTS_TRIED: usize = 4;

/// A keyslot key-derivation function and its costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC-SHA256.
    Pbkdf2 {
        /// Iteration count.
        iterations: u32,
    },
    /// Argon2id (version 0x13).
    Argon2id {
        /// Passes over memory.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Lanes.
        parallel: u32,
    },
}

impl Kdf {
    /// The default for human passphrases: Argon2id, 4 passes over 128 MiB
    /// (about a second here). Cheap enough to unlock at every run, costly
    /// enough to make guessing slow.
    pub const PASSPHRASE_DEFAULT: Kdf = Kdf::Argon2id {
        time: 4,
        memory_kib: 128 * 1024,
        parallel: 4,
    };

    /// For random 64-byte keys (the PEM case): guessing is hopeless
    /// whatever the cost, so the minimum PBKDF2 keeps runs fast.
    pub const RANDOM_KEY_DEFAULT: Kdf = Kdf::Pbkdf2 {
        iterations: MIN_PBKDF2_ITERATIONS,
    };

    /// Derives `out.len()` bytes from `passphrase` and `salt`.
    pub fn derive(&self, passphrase: &[u8], salt: &[u8], out: &mut [u8]) -> Result<()> {
        match *self {
            Kdf::Pbkdf2 { iterations } => {
                if iterations == 0 {
                    return Err(Error::corrupt("PBKDF2 with zero iterations"));
                }
                if iterations > MAX_PBKDF2_ITERATIONS {
                    return Err(Error::Unsupported(format!(
                        "PBKDF2 cost beyond limits ({iterations} iterations, at most {MAX_PBKDF2_ITERATIONS})"
                    )));
                }
                pbkdf2::pbkdf2_hmac::<Sha256>(passphrase, salt, iterations, out);
                Ok(())
            }
            Kdf::Argon2id {
                time,
                memory_kib,
                parallel,
            } => {
                if memory_kib > MAX_ARGON2_MEMORY_KIB
                    || parallel > MAX_ARGON2_LANES
                    || time > MAX_ARGON2_TIME
                    || u64::from(time) * u64::from(memory_kib) > MAX_ARGON2_WORK
                {
                    return Err(Error::Unsupported(format!(
                        "Argon2 cost beyond limits (time {time}, memory {memory_kib} KiB, {parallel} lanes)"
                    )));
                }
                let params = argon2::Params::new(memory_kib, time, parallel, Some(out.len()))
                    .map_err(|e| Error::Crypto(format!("Argon2 parameters: {e}")))?;
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase, salt, out)
                    .map_err(|e| Error::Crypto(format!("Argon2: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64).
        let mut out = [0u8; 64];
        Kdf::Pbkdf2 { iterations: 1 }
            .derive(b"passwd", b"salt", &mut out)
            .unwrap();
        assert_eq!(&out[..8], &[0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }

    #[test]
    fn hostile_pbkdf2_costs_are_refused_without_work() {
        let mut out = [0u8; 32];
        let start = std::time::Instant::now();
        let k = Kdf::Pbkdf2 {
            iterations: u32::MAX,
        };
        assert!(matches!(
            k.derive(b"x", b"saltsalt", &mut out),
            Err(Error::Unsupported(_))
        ));
        // 2^32 iterations would take half an hour; the refusal is instant.
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Argon2 within each limit but too much work in total.
        let k = Kdf::Argon2id {
            time: 1000,
            memory_kib: 4 * 1024 * 1024,
            parallel: 1,
        };
        assert!(matches!(
            k.derive(b"x", b"saltsalt", &mut out),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn hostile_argon2_costs_are_refused() {
        let mut out = [0u8; 32];
        let k = Kdf::Argon2id {
            time: 1,
            memory_kib: u32::MAX,
            parallel: 1,
        };
        assert!(matches!(
            k.derive(b"x", b"saltsalt", &mut out),
            Err(Error::Unsupported(_))
        ));
    }
}
