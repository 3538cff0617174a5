//! The anti-forensic information splitter (LUKS "luks1" AF type).
//!
//! A key is stored as `stripes` blocks such that every block is needed to
//! recover it; overwriting any part of the keyslot area destroys the key.
//! Blocks 0..n-1 are random; the running value `d` is passed through the
//! diffusion function after each, and the last block is `d XOR key`.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The one hash supported for diffusion.
pub const HASH: &str = "sha256";

/// Replaces `block` by its diffusion: each digest-sized chunk `j` becomes
/// `H(be32(j) || chunk)`, truncated for a short last chunk.
fn diffuse(block: &mut [u8]) {
    for (j, chunk) in block.chunks_mut(Sha256::output_size()).enumerate() {
        let mut h = Sha256::new();
        h.update((j as u32).to_be_bytes());
        h.update(&*chunk);
        let out = h.finalize();
        chunk.copy_from_slice(&out[..chunk.len()]);
    }
}

/// Splits `key` into `stripes` blocks with random material from `random`.
pub fn split(
    key: &[u8],
    stripes: usize,
    mut random: impl FnMut(&mut [u8]) -> Result<()>,
) -> Result<Vec<u8>> {
    let n = key.len();
    let mut out = vec![0u8; n * stripes];
    let mut d = vec![0u8; n];
    for i in 0..stripes - 1 {
        let stripe = &mut out[i * n..(i + 1) * n];
        random(stripe)?;
        xor_into(&mut d, stripe);
        diffuse(&mut d);
    }
    let last = &mut out[(stripes - 1) * n..];
    for ((o, d), k) in last.iter_mut().zip(&d).zip(key) {
        *o = d ^ k;
    }
    Ok(out)
}

/// Recovers a `key_len`-byte key from split `material`.
pub fn merge(material: &[u8], key_len: usize, stripes: usize, hash: &str) -> Result<Vec<u8>> {
    if hash != HASH {
        return Err(Error::Unsupported(format!("anti-forensic hash {hash}")));
    }
    if key_len == 0 || stripes == 0 || material.len() < key_len * stripes {
        return Err(Error::corrupt(
            "keyslot material shorter than key size x stripes",
        ));
    }
    let mut d = vec![0u8; key_len];
    for stripe in material.chunks_exact(key_len).take(stripes - 1) {
        xor_into(&mut d, stripe);
        diffuse(&mut d);
    }
    let last = &material[(stripes - 1) * key_len..stripes * key_len];
    xor_into(&mut d, last);
    Ok(d)
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_recovers_the_key() {
        let key: Vec<u8> = (0..64).collect();
        let mut seed = 1u8;
        let material = split(&key, 4000, |b| {
            for x in b.iter_mut() {
                seed = seed.wrapping_mul(31).wrapping_add(7);
                *x = seed;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(material.len(), 64 * 4000);
        assert_eq!(merge(&material, 64, 4000, "sha256").unwrap(), key);
        let mut damaged = material.clone();
        damaged[100] ^= 1;
        assert_ne!(merge(&damaged, 64, 4000, "sha256").unwrap(), key);
        assert!(merge(&material[..10], 64, 4000, "sha256").is_err());
    }
}
