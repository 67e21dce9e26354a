//! The tenant volume path on real loop devices, as root: an empty device is formatted with
//! its root owned by the tenant's remapped root; a device that already carries the tenant's
//! ext4 is mounted as it is, data intact (never reformatted); a device with any other
//! filesystem is refused; the mount is nodev,nosuid; release detaches the loop device.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixture: a panic is the failure report

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use hostd::volume::{self, VolumeError};
use support::require_root;

#[test]
fn formats_only_empty_devices_and_never_reformats() {
    require_root();
    let dir = std::env::temp_dir().join(format!("m8trx-volume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("tenant.img");
    let mp = dir.join("mnt");

    let dev = volume::loop_device(&image, 64 << 20).unwrap();
    assert_eq!(
        volume::loop_device(&image, 64 << 20).unwrap(),
        dev,
        "reused, not attached twice"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
    assert!(
        volume::ensure_ext4(&dev, (1_065_536, 1_065_536)).unwrap(),
        "empty: formatted"
    );
    volume::mount(&dev, &mp).unwrap();
    volume::mount(&dev, &mp).unwrap(); // idempotent
    let meta = std::fs::metadata(&mp).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1_065_536, 1_065_536));
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
        .map(str::to_owned)
        .unwrap();
    assert!(line.contains("nodev") && line.contains("nosuid"), "{line}");
    std::fs::write(mp.join("customer-data"), "precious").unwrap();

    // Released and found again: same filesystem, data intact.
    volume::unmount(&mp).unwrap();
    volume::detach_loops(&image).unwrap();
    assert!(
        volume::loops_of(&image).unwrap().is_empty(),
        "loop device detached"
    );
    let dev = volume::loop_device(&image, 64 << 20).unwrap();
    assert!(
        !volume::ensure_ext4(&dev, (1, 1)).unwrap(),
        "ext4 present: not formatted again"
    );
    volume::mount(&dev, &mp).unwrap();
    assert_eq!(
        std::fs::read_to_string(mp.join("customer-data")).unwrap(),
        "precious"
    );

    // Another device may not take the mount point.
    let other_image = dir.join("other.img");
    let other = volume::loop_device(&other_image, 16 << 20).unwrap();
    assert!(matches!(
        volume::mount(&other, &mp),
        Err(VolumeError::MountedElsewhere { .. })
    ));
    volume::unmount(&mp).unwrap();
    volume::detach_loops(&image).unwrap();

    // A device with a filesystem hostd did not make is refused, and left untouched.
    let out = Command::new("mkswap").arg(&other).output().unwrap();
    assert!(out.status.success());
    let err = volume::ensure_ext4(&other, (1, 1)).unwrap_err();
    assert!(
        err.to_string().contains("swap filesystem") && err.to_string().contains("never reformats"),
        "{err}"
    );
    assert_eq!(volume::filesystem(&other).unwrap().as_deref(), Some("swap"));
    volume::detach_loops(&other_image).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
