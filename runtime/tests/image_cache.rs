//! The node cache of mounted images with real loop devices and SquashFS
//! mounts: one mount shared by every lease, the idle time honoured, the key
//! following the file's bytes, concurrent first users mounting once, and no
//! mount or loop device left once swept.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sifrun_runtime::container::loop_device::LoopAttachment;
use sifrun_runtime::container::mount::mount_squashfs;
use sifrun_runtime::image::RunnableImage;
use sifrun_runtime::node::image_cache::{
    record_owner, run_keeper, CacheKey, CacheLimits, ImageCache,
};
use sifrun_runtime::node::kept_containers::KeptContainers;
use sifrun_runtime::{Error, Result};

fn key_of(image: &Path) -> CacheKey {
    let img = RunnableImage::open(image).unwrap();
    let file = File::open(image).unwrap();
    CacheKey::for_partition(&file, img.partition_offset, img.partition_size, 0).unwrap()
}

/// What slurm-setup does on a cache miss, counting the calls.
fn mount_image(image: &Path, dir: &Path, calls: &AtomicUsize) -> Result<()> {
    calls.fetch_add(1, Ordering::SeqCst);
    let img = RunnableImage::open(image)?;
    let device = LoopAttachment::attach(image, img.partition_offset, img.partition_size)?;
    mount_squashfs(device.path(), dir).inspect_err(|_| {
        let _ = device.detach();
    })
}

#[test]
fn one_mount_shared_by_leases_and_swept_only_when_unused() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let cache = ImageCache::open(&fx.path("state")).unwrap();
    let key = key_of(&fx.image);
    let calls = AtomicUsize::new(0);

    let first = cache
        .acquire(&key, |d| mount_image(&fx.image, d, &calls))
        .unwrap();
    let second = cache
        .acquire(&key, |d| mount_image(&fx.image, d, &calls))
        .unwrap();
    assert!(first.mounted_now && !second.mounted_now);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(first.mount_dir(), second.mount_dir());
    assert!(first.mount_dir().join("bin/busybox").exists());

    // In use: a sweep with no idle time at all must leave it alone.
    let report = cache.sweep(Duration::ZERO).unwrap();
    assert_eq!((report.mounted, report.unmounted.len()), (1, 0));
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].mounted && listed[0].in_use);
    assert_eq!(listed[0].image.as_deref(), Some(fx.image.to_str().unwrap()));

    drop(first);
    assert_eq!(
        cache.sweep(Duration::ZERO).unwrap().mounted,
        1,
        "second lease still holds it"
    );
    drop(second);
    // Unused but not idle long enough.
    assert_eq!(cache.sweep(Duration::from_secs(60)).unwrap().mounted, 1);
    let report = cache.sweep(Duration::ZERO).unwrap();
    assert_eq!(report.unmounted, vec![key.as_str().to_string()]);
    assert!(cache.list().unwrap().is_empty());
    fx.assert_no_leaks(&before);
}

#[test]
fn concurrent_first_users_mount_once() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let cache = ImageCache::open(&fx.path("state")).unwrap();
    let key = key_of(&fx.image);
    let calls = Arc::new(AtomicUsize::new(0));
    let leases: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (cache, key, calls, image) = (&cache, &key, calls.clone(), &fx.image);
                s.spawn(move || {
                    cache
                        .acquire(key, |d| mount_image(image, d, &calls))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(leases.iter().filter(|l| l.mounted_now).count(), 1);
    drop(leases);
    cache.sweep(Duration::ZERO).unwrap();
    fx.assert_no_leaks(&before);
}

#[test]
fn a_failed_mount_leaves_nothing_and_the_next_user_retries() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let cache = ImageCache::open(&fx.path("state")).unwrap();
    let key = key_of(&fx.image);
    let err = cache
        .acquire(&key, |_| Err(Error::system("simulated mount failure")))
        .unwrap_err();
    assert!(err.message().contains("simulated mount failure"));
    fx.assert_no_leaks(&before);

    let calls = AtomicUsize::new(0);
    let lease = cache
        .acquire(&key, |d| mount_image(&fx.image, d, &calls))
        .unwrap();
    assert!(lease.mounted_now);
    drop(lease);
    cache.sweep(Duration::ZERO).unwrap();
    fx.assert_no_leaks(&before);
}

#[test]
fn key_follows_the_file_bytes_not_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sif");
    fs::write(&a, b"some image bytes").unwrap();
    let link = dir.path().join("link.sif");
    fs::hard_link(&a, &link).unwrap();
    let key = |p: &Path| CacheKey::for_partition(&File::open(p).unwrap(), 0, 16, 0).unwrap();
    assert_eq!(key(&a), key(&link), "two paths to one file share a key");
    assert_ne!(
        CacheKey::for_partition(&File::open(&a).unwrap(), 0, 8, 0).unwrap(),
        key(&a),
        "another partition window is another key"
    );
    assert_ne!(
        CacheKey::for_partition(&File::open(&a).unwrap(), 0, 16, 1).unwrap(),
        key(&a),
        "a verified copy is not the live file"
    );
    let copy = dir.path().join("copy.sif");
    fs::copy(&a, &copy).unwrap();
    assert_ne!(key(&a), key(&copy), "a copy is another file");
    let old = key(&a);
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&a, b"some image bytes").unwrap();
    assert_ne!(
        old,
        key(&a),
        "rewriting the file (even with the same bytes) changes the key"
    );
    assert_eq!(key(&a).as_str().len(), 32);
}

#[test]
fn keeper_unmounts_after_the_idle_time_and_exits() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let cache = ImageCache::open(&fx.path("state")).unwrap();
    let key = key_of(&fx.image);
    let calls = AtomicUsize::new(0);
    drop(
        cache
            .acquire(&key, |d| mount_image(&fx.image, d, &calls))
            .unwrap(),
    );
    let started = Instant::now();
    let mut log = Vec::new();
    let kept = KeptContainers::open(&fx.path("state")).unwrap();
    run_keeper(
        &cache,
        &kept,
        Duration::from_millis(600),
        Duration::from_millis(100),
        &mut log,
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "unmounted too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "keeper took {took:?}");
    assert!(String::from_utf8_lossy(&log).contains(key.as_str()));
    fx.assert_no_leaks(&before);
}

/// A keeper whose cache directory goes away (a test's temporary state
/// directory, a node's private /run/sifrun torn down) has nothing left to
/// keep: it exits instead of failing to read the directory forever.
#[test]
fn keeper_exits_when_its_cache_directory_is_gone() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let state = fx.path("state");
    let cache = ImageCache::open(&state).unwrap();
    let key = key_of(&fx.image);
    let calls = AtomicUsize::new(0);
    let lease = cache
        .acquire(&key, |d| mount_image(&fx.image, d, &calls))
        .unwrap();
    let mounted = lease.mount_dir();
    let (done, finished) = std::sync::mpsc::channel();
    let keeper_cache = ImageCache::open(&state).unwrap();
    let kept = KeptContainers::open(&state).unwrap();
    std::thread::spawn(move || {
        // Idle time far away: only the directory's going can end it.
        run_keeper(
            &keeper_cache,
            &kept,
            Duration::from_secs(600),
            Duration::from_millis(50),
            &mut std::io::sink(),
        );
        let _ = done.send(());
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(lease);
    nix::mount::umount2(&mounted, nix::mount::MntFlags::MNT_DETACH).unwrap();
    // The keeper is still at work in the directory (it may create an entry
    // while it is being removed: ENOTEMPTY); remove until it is gone.
    let mut removed = fs::remove_dir_all(&state);
    for _ in 0..50 {
        match &removed {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                std::thread::sleep(Duration::from_millis(10));
                removed = fs::remove_dir_all(&state);
            }
            _ => break,
        }
    }
    removed.unwrap();
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the keeper still runs after its cache directory was removed"
    );
    fx.assert_no_leaks(&before);
}

/// One user mounting image after image: beyond the per-user limit the
/// least recently used idle image goes first; when all of them are in use
/// the next one is refused with one line naming the setting; another
/// user's images are never pushed out by the first user's limit. Evicted
/// images leave no free loop device node behind.
#[test]
fn a_user_cannot_fill_the_node_cache() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let cache = ImageCache::open(&fx.path("state")).unwrap();
    let limits = CacheLimits {
        per_node: 3,
        per_user: 2,
    };
    // Distinct files (distinct keys) of the same image.
    let images: Vec<_> = (0..4)
        .map(|i| {
            let p = fx.path(&format!("img{i}.sif"));
            fs::copy(&fx.image, &p).unwrap();
            p
        })
        .collect();
    let calls = AtomicUsize::new(0);
    let mount_for = |uid: u32, image: &Path| {
        cache.acquire(&key_of(image), |d| {
            cache.make_room(uid, &limits)?;
            mount_image(image, d, &calls)?;
            record_owner(d.parent().unwrap(), uid)
        })
    };
    let loop_of = |lease: &sifrun_runtime::node::image_cache::Lease| {
        use std::os::unix::fs::MetadataExt;
        libc::minor(fs::metadata(lease.mount_dir()).unwrap().dev())
    };
    // An evicted image leaves no free loop device node behind (a node
    // that exists again must be attached: reused by someone else).
    let a0 = mount_for(1001, &images[0]).unwrap();
    let first_loop = loop_of(&a0);
    drop(a0);
    cache.sweep(Duration::ZERO).unwrap();
    let lingering = Path::new(&format!("/dev/loop{first_loop}")).exists()
        && !Path::new(&format!("/sys/block/loop{first_loop}/loop/backing_file")).exists();
    assert!(!lingering, "free /dev/loop{first_loop} left behind");

    let idle = mount_for(1001, &images[0]).unwrap();
    drop(idle);
    std::thread::sleep(Duration::from_millis(20));
    let a1 = mount_for(1001, &images[1]).unwrap();
    // At the user's limit: the idle, least recently used image goes.
    let a2 = mount_for(1001, &images[2]).unwrap();
    let mounted: Vec<_> = cache
        .list()
        .unwrap()
        .into_iter()
        .filter(|e| e.mounted)
        .collect();
    assert_eq!(mounted.len(), 2, "{mounted:?}");
    // Both in use: refused, naming the setting.
    let e = mount_for(1001, &images[3]).unwrap_err();
    assert!(
        e.message().contains("cache_max_images_per_user"),
        "{}",
        e.message()
    );
    // Another user still has room up to the node's limit...
    let b0 = mount_for(2002, &images[3]).unwrap();
    // ... and beyond it, with everything in use, is refused too.
    let e = mount_for(2002, &images[0]).unwrap_err();
    assert!(
        e.message().contains("image cache is full") && e.message().contains("cache_max_images"),
        "{}",
        e.message()
    );
    drop((a1, a2, b0));
    cache.sweep(Duration::ZERO).unwrap();
    fx.assert_no_leaks(&before);
}
