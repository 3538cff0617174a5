//! Interoperability with cryptsetup (Debian package cryptsetup-bin), the
//! reference LUKS2 implementation: it must accept what we write, and we
//! must unlock what it writes. Neither direction needs device-mapper:
//! `luksDump`, `open --test-passphrase` and `luksFormat` on a plain file
//! work without it. (Data written into a cryptsetup-made container would
//! need dm-crypt, so that direction checks header, keyslot and digest.)

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use luks2::{format, Error, FormatOptions, Kdf, Source, Volume};

fn cryptsetup() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = Path::new(dir).join("cryptsetup");
        if p.exists() {
            return p;
        }
    }
    panic!("cryptsetup is not installed (ci/install-deps installs cryptsetup-bin)");
}

/// Fast keyslot costs for tests (the format is the same as the defaults').
const FAST_ARGON: Kdf = Kdf::Argon2id {
    time: 4,
    memory_kib: 32 * 1024,
    parallel: 1,
};

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
}

fn write_container(dir: &Path, data: &[u8], pass: &[u8], kdf: Kdf) -> PathBuf {
    let path = dir.join("c.luks");
    let mut out = File::create(&path).unwrap();
    let opts = FormatOptions {
        kdf,
        ..FormatOptions::default()
    };
    let n = format(&mut &data[..], pass, &opts, &mut out).unwrap();
    assert_eq!(n, fs::metadata(&path).unwrap().len());
    path
}

fn open(path: &Path, pass: &[u8]) -> luks2::Result<Volume> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    Volume::unlock(Source::new(file, 0, len), pass)
}

fn key_file(dir: &Path, pass: &[u8]) -> PathBuf {
    let p = dir.join("key");
    fs::write(&p, pass).unwrap();
    p
}

fn cs(args: &[&str]) -> std::process::Output {
    Command::new(cryptsetup()).args(args).output().unwrap()
}

fn test_passphrase(container: &Path, key: &Path) -> bool {
    cs(&[
        "open",
        "--test-passphrase",
        "--type",
        "luks2",
        "--key-file",
        key.to_str().unwrap(),
        container.to_str().unwrap(),
    ])
    .status
    .success()
}

#[test]
fn cryptsetup_accepts_our_containers() {
    for kdf in [Kdf::RANDOM_KEY_DEFAULT, FAST_ARGON] {
        let dir = tempfile::tempdir().unwrap();
        let pass = b"correct horse battery staple";
        let c = write_container(dir.path(), &plaintext(100_000), pass, kdf);
        let dump = cs(&["luksDump", c.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.status.success(),
            "luksDump: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(text.contains("Version:       \t2"), "{text}");
        assert!(text.contains("aes-xts-plain64"), "{text}");
        assert!(
            text.contains(if matches!(kdf, Kdf::Pbkdf2 { .. }) {
                "pbkdf2"
            } else {
                "argon2id"
            }),
            "{text}"
        );
        assert!(
            test_passphrase(&c, &key_file(dir.path(), pass)),
            "cryptsetup rejects our keyslot"
        );
        assert!(!test_passphrase(&c, &key_file(dir.path(), b"wrong")));
    }
}

#[test]
fn we_unlock_cryptsetup_containers() {
    let kdfs: [&[&str]; 2] = [
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
    ];
    for kdf in kdfs {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("cs.luks");
        File::create(&c).unwrap().set_len(20 << 20).unwrap();
        let key = key_file(dir.path(), b"s3cret passphrase");
        let mut args = vec![
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(kdf);
        args.push(c.to_str().unwrap());
        let out = cs(&args);
        assert!(
            out.status.success(),
            "luksFormat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = open(&c, b"s3cret passphrase").expect("unlock cryptsetup's keyslot");
        // cryptsetup reserves 16 MiB for metadata by default.
        assert_eq!(v.size(), 4 << 20);
        assert!(matches!(open(&c, b"wrong"), Err(Error::WrongPassphrase)));
    }
}

#[test]
fn round_trip_reads_any_range() {
    let dir = tempfile::tempdir().unwrap();
    let data = plaintext(3 * 1024 * 1024 + 123);
    let c = write_container(dir.path(), &data, b"pw", Kdf::RANDOM_KEY_DEFAULT);
    let v = open(&c, b"pw").unwrap();
    assert_eq!(v.size(), data.len().div_ceil(512) as u64 * 512);
    for (pos, len) in [
        (0usize, 10usize),
        (511, 2),
        (1000, 70_000),
        (data.len() - 5, 100),
    ] {
        let mut buf = vec![0u8; len];
        let n = v.read_at(&mut buf, pos as u64).unwrap();
        let want = &data[pos..(pos + len).min(data.len())];
        assert_eq!(&buf[..want.len()], want, "at {pos}");
        assert!(n >= want.len());
    }
    // The ciphertext does not contain the plaintext.
    let raw = fs::read(&c).unwrap();
    assert!(!raw.windows(64).any(|w| w == &data[4096..4160]));
}

#[test]
fn damage_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = plaintext(64 * 1024);
    let c = write_container(dir.path(), &data, b"pw", Kdf::RANDOM_KEY_DEFAULT);
    let good = fs::read(&c).unwrap();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        f(&mut bytes);
        let p = dir.path().join("damaged");
        File::create(&p).unwrap().write_all(&bytes).unwrap();
        open(&p, b"pw")
    };
    // Primary copy damaged: the secondary copy takes over.
    assert!(with(&|b| b[4200] ^= 1).is_ok());
    // Both copies damaged.
    let e = with(&|b| {
        b[4200] ^= 1;
        b[0x4000 + 4200] ^= 1;
    })
    .unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    // Keyslot area damaged: the key cannot be recovered.
    assert!(matches!(
        with(&|b| b[0x8000 + 100] ^= 0xff),
        Err(Error::WrongPassphrase)
    ));
    // Truncated inside the metadata (data area missing), and not LUKS at
    // all. Losing whole trailing sectors of a "dynamic" segment cannot be
    // told from a shorter volume; the SquashFS inside notices instead.
    assert!(matches!(
        with(&|b| b.truncate(0x9000)),
        Err(Error::Truncated(_))
    ));
    assert!(with(&|b| b.truncate(good.len() - 4096)).is_ok());
    assert!(matches!(with(&|b| b.truncate(100)), Err(Error::NotLuks)));
    assert!(matches!(
        with(&|b| b[..6].copy_from_slice(b"hsqs\0\0")),
        Ok(_) | Err(Error::NotLuks)
    ));
    for e in [
        Error::WrongPassphrase,
        Error::NotLuks,
        Error::Corrupt("x".into()),
    ] {
        assert!(!e.to_string().contains('\n'));
    }
}
