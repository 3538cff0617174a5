//! AES-XTS with the `plain64` IV: the sector number, little-endian, as the
//! XTS tweak. Used for keyslot areas and for the data segment.

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use xts_mode::{get_tweak_default, Xts128};

use crate::error::{Error, Result};

/// An `aes-xts-plain64` key: two AES keys of 128 or 256 bits each.
pub enum SectorCipher {
    /// 32-byte key.
    Aes128(Box<Xts128<Aes128>>),
    /// 64-byte key.
    Aes256(Box<Xts128<Aes256>>),
}

impl SectorCipher {
    /// Splits `key` (32 or 64 bytes) into the data and tweak keys.
    pub fn new(key: &[u8]) -> Result<Self> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        let bad = |_| Error::Crypto(format!("invalid AES-XTS key length {}", key.len()));
        match key.len() {
            32 => Ok(SectorCipher::Aes128(Box::new(Xts128::new(
                Aes128::new_from_slice(k1).map_err(bad)?,
                Aes128::new_from_slice(k2).map_err(bad)?,
            )))),
            64 => Ok(SectorCipher::Aes256(Box::new(Xts128::new(
                Aes256::new_from_slice(k1).map_err(bad)?,
                Aes256::new_from_slice(k2).map_err(bad)?,
            )))),
            n => Err(Error::Unsupported(format!(
                "aes-xts-plain64 key of {n} bytes (32 or 64 supported)"
            ))),
        }
    }

    /// Decrypts whole sectors in place; `first_iv` is the IV of the first.
    pub fn decrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        debug_assert_eq!(buf.len() % sector_size, 0);
        match self {
            SectorCipher::Aes128(x) => {
                x.decrypt_area(buf, sector_size, first_iv.into(), get_tweak_default)
            }
            SectorCipher::Aes256(x) => {
                x.decrypt_area(buf, sector_size, first_iv.into(), get_tweak_default)
            }
        }
    }

    /// Encrypts whole sectors in place; `first_iv` is the IV of the first.
    pub fn encrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        debug_assert_eq!(buf.len() % sector_size, 0);
        match self {
            SectorCipher::Aes128(x) => {
                x.encrypt_area(buf, sector_size, first_iv.into(), get_tweak_default)
            }
            SectorCipher::Aes256(x) => {
                x.encrypt_area(buf, sector_size, first_iv.into(), get_tweak_default)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_iv_matters() {
        let c = SectorCipher::new(&[7u8; 64]).unwrap();
        let plain: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let mut a = plain.clone();
        c.encrypt(&mut a, 512, 5);
        assert_ne!(a, plain);
        let mut b = plain.clone();
        c.encrypt(&mut b, 512, 6);
        assert_ne!(a[..512], b[..512]);
        c.decrypt(&mut a, 512, 5);
        assert_eq!(a, plain);
        assert!(SectorCipher::new(&[0u8; 48]).is_err());
    }
}
