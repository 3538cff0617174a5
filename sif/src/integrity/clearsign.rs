//! The OpenPGP cleartext signature framework (RFC 4880 §7) as SIF signature
//! objects use it: parsing follows the reference (go-crypto) decoder's rules
//! so that the same bytes are accepted, and encoding produces the same layout
//! the reference signer writes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

const BEGIN_MESSAGE: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";
const BEGIN_SIGNATURE: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const END_SIGNATURE: &[u8] = b"-----END PGP SIGNATURE-----";

/// A decoded clear-signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearSigned {
    /// The message text: each line followed by `\n`, dash-escapes and
    /// trailing blanks removed.
    pub text: Vec<u8>,
    /// The bytes the signature covers: the lines joined by CRLF, no final
    /// line end.
    pub signed: Vec<u8>,
    /// The binary OpenPGP packets of the signature block.
    pub signature: Vec<u8>,
}

/// Splits off one line; the line excludes `\n` and a `\r` before it.
fn get_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        None => (data, &data[data.len()..]),
        Some(i) => {
            let line = &data[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, &data[i + 1..])
        }
    }
}

fn trim_blanks_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a clear-signed message. Returns `None` for anything that is not a
/// complete, well-formed one (the caller reports it as malformed).
pub fn decode(data: &[u8]) -> Option<ClearSigned> {
    // The start line must begin the data or follow a line end.
    let mut rest = if let Some(r) = data.strip_prefix(BEGIN_MESSAGE) {
        r
    } else {
        let mut start = b"\n".to_vec();
        start.extend_from_slice(BEGIN_MESSAGE);
        let i = find(data, &start)?;
        &data[i + start.len()..]
    };
    let (suffix, r) = get_line(rest);
    if !suffix.is_empty() {
        return None;
    }
    rest = r;

    // Armor headers: only "Hash:" is allowed, then an empty line.
    loop {
        if rest.is_empty() {
            return None;
        }
        let (line, r) = get_line(rest);
        rest = r;
        if line.is_empty() {
            break;
        }
        if line.iter().any(|&c| !(0x20..=0x7e).contains(&c)) {
            return None;
        }
        let colon = line.iter().position(|&c| c == b':')?;
        if line[..colon].trim_ascii() != b"Hash" {
            return None;
        }
    }

    let mut text = Vec::new();
    let mut signed = Vec::new();
    let mut first = true;
    loop {
        let (line, r) = get_line(rest);
        if line.is_empty() && r.is_empty() {
            return None;
        }
        if line == BEGIN_SIGNATURE {
            break;
        }
        rest = r;
        if !first {
            signed.extend_from_slice(b"\r\n");
        }
        first = false;
        let line = line.strip_prefix(b"- ").unwrap_or(line);
        let line = trim_blanks_end(line);
        signed.extend_from_slice(line);
        text.extend_from_slice(line);
        text.push(b'\n');
    }

    let signature = decode_armor(rest)?;
    Some(ClearSigned {
        text,
        signed,
        signature,
    })
}

/// Decodes the `-----BEGIN PGP SIGNATURE-----` block that starts `data`.
fn decode_armor(data: &[u8]) -> Option<Vec<u8>> {
    let (first, mut rest) = get_line(data);
    if trim_blanks_end(first) != BEGIN_SIGNATURE {
        return None;
    }
    // Armor headers (e.g. "Version:") up to an empty line.
    loop {
        if rest.is_empty() {
            return None;
        }
        let (line, r) = get_line(rest);
        rest = r;
        let line = trim_blanks_end(line);
        if line.is_empty() {
            break;
        }
        if !line.contains(&b':') {
            return None;
        }
    }
    let mut b64 = Vec::new();
    let mut crc = None;
    loop {
        if rest.is_empty() {
            return None;
        }
        let (line, r) = get_line(rest);
        rest = r;
        let line = line.trim_ascii();
        if line == END_SIGNATURE {
            break;
        }
        if let Some(sum) = line.strip_prefix(b"=") {
            let sum = STANDARD.decode(sum).ok()?;
            let [a, b, c] = sum[..] else { return None };
            crc = Some(u32::from_be_bytes([0, a, b, c]));
            continue;
        }
        if crc.is_some() {
            // Nothing but the end line may follow the checksum.
            return None;
        }
        b64.extend_from_slice(line);
    }
    let packets = STANDARD.decode(&b64).ok()?;
    if packets.is_empty() {
        return None;
    }
    if let Some(expected) = crc {
        if crc24(&packets) != expected {
            return None;
        }
    }
    Some(packets)
}

/// The OpenPGP armor checksum (RFC 4880 §6.1).
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00b7_04ce;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4cfb;
            }
        }
    }
    crc & 0x00ff_ffff
}

/// Encodes a clear-signed message in the reference layout: `Hash` header,
/// the text (dash-escaped where needed), and the armored signature with a
/// checksum line, without a final newline. `text` must not end in `\n`.
pub fn encode(text: &[u8], hash_name: &str, signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + signature.len() * 2 + 200);
    out.extend_from_slice(BEGIN_MESSAGE);
    out.extend_from_slice(format!("\nHash: {hash_name}\n\n").as_bytes());
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if line.starts_with(b"-") {
            out.extend_from_slice(b"- ");
        }
        out.extend_from_slice(line);
    }
    out.push(b'\n');
    out.extend_from_slice(BEGIN_SIGNATURE);
    out.extend_from_slice(b"\n\n");
    let b64 = STANDARD.encode(signature);
    for chunk in b64.as_bytes().chunks(64) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    let crc = crc24(signature).to_be_bytes();
    out.push(b'=');
    out.extend_from_slice(STANDARD.encode(&crc[1..]).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(END_SIGNATURE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sig = (0u8..=200).collect::<Vec<_>>();
        let enc = encode(b"{\"a\":1}", "SHA256", &sig);
        let dec = decode(&enc).unwrap();
        assert_eq!(dec.text, b"{\"a\":1}\n");
        assert_eq!(dec.signed, b"{\"a\":1}");
        assert_eq!(dec.signature, sig);
        assert!(!enc.ends_with(b"\n"));
    }

    #[test]
    fn multi_line_text_is_canonicalised() {
        let enc = encode(b"SIFHASH:\n-abc  ", "SHA256", b"x");
        let dec = decode(&enc).unwrap();
        assert_eq!(dec.text, b"SIFHASH:\n-abc\n");
        assert_eq!(dec.signed, b"SIFHASH:\r\n-abc");
    }

    #[test]
    fn crc24_known_value() {
        // Checksum of the empty input is the initial value.
        assert_eq!(crc24(b""), 0xb704ce);
    }

    #[test]
    fn hostile_inputs_are_none() {
        let good = encode(b"{}", "SHA256", b"sig");
        let mut bad_crc = good.clone();
        let i = find(&bad_crc, b"\n=").unwrap();
        bad_crc[i + 2] ^= 1;
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"hello".to_vec(),
            BEGIN_MESSAGE.to_vec(),
            good[..good.len() - 5].to_vec(),
            good[..good.len() / 2].to_vec(),
            bad_crc,
            [BEGIN_MESSAGE, b" x\n\n{}\n"].concat(),
            [BEGIN_MESSAGE, b"\nVersion: 1\n\n{}\n"].concat(),
            [
                BEGIN_MESSAGE,
                b"\nHash: SHA256\n\n{}\n",
                BEGIN_SIGNATURE,
                b"\n\n!!!\n",
                END_SIGNATURE,
            ]
            .concat(),
            [
                BEGIN_MESSAGE,
                b"\nHash: SHA256\n\n{}\n",
                BEGIN_SIGNATURE,
                b"\n\n",
                END_SIGNATURE,
            ]
            .concat(),
        ];
        for c in cases {
            assert!(decode(&c).is_none(), "{:?}", String::from_utf8_lossy(&c));
        }
        // Every prefix of a good message is refused, none panics.
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
    }
}
