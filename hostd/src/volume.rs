//! The tenant volume: the customer's own KMS-encrypted EBS volume in production (control
//! attaches it), a loop device over an image file in dev and tests — both through the same
//! find → format-if-empty → mount path. hostd formats a device only when it carries no
//! filesystem at all, and refuses one with a foreign filesystem: data is never reformatted.
//! Mounted `nodev,nosuid` at `<tenants_root>/<name>`; the engine's data root lives on it,
//! so everything of the tenant is encrypted with its key and leaves with the volume.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the volume could not be found, formatted, mounted or released; says what to check.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// No block device carries the EBS volume's serial.
    #[error("EBS volume {0} is not attached to this host (no device with its serial under /dev/disk/by-id or /sys/block); attach it (control does) and retry")]
    NotAttached(String),
    /// A loop image has no loop device (the Volume step attaches it).
    #[error("loop image {0} is not attached to a loop device; the Volume step attaches it: run the command again")]
    LoopNotAttached(String),
    /// The device holds a filesystem hostd did not make.
    #[error("{device} carries a {fstype} filesystem; hostd formats only empty devices and never reformats: check that the volume id is the tenant's")]
    ForeignFilesystem {
        /// The device.
        device: PathBuf,
        /// What blkid found.
        fstype: String,
    },
    /// The mount point is taken by another device.
    #[error(
        "{mountpoint} is already a mount of {source_device}, not of {device}; unmount it first"
    )]
    MountedElsewhere {
        /// Where.
        mountpoint: PathBuf,
        /// What is mounted there.
        source_device: String,
        /// What hostd wanted to mount.
        device: PathBuf,
    },
    /// A tool (losetup, blkid, mkfs.ext4, mount) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// What ran.
        command: String,
        /// Its stderr.
        message: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What hostd was doing.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a tool; its stdout on success, its stderr in the error otherwise.
fn run(cmd: &mut Command) -> Result<String, VolumeError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| VolumeError::Command {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(VolumeError::Command {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The device of an attached EBS volume: on Nitro instances the NVMe serial is the volume id
/// without its dash, which udev shows as `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<serial>`;
/// without udev the same serial is read from `/sys/block/nvme*/device/serial`.
pub fn ebs_device(by_id: &Path, sys_block: &Path, volume_id: &str) -> Option<PathBuf> {
    let serial = volume_id.replace('-', "");
    let wanted = format!("nvme-Amazon_Elastic_Block_Store_{serial}");
    if let Ok(entries) = std::fs::read_dir(by_id) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy() == wanted {
                return std::fs::canonicalize(e.path()).ok();
            }
        }
    }
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let serial_file = e.path().join("device/serial");
        if name.starts_with("nvme")
            && std::fs::read_to_string(serial_file).is_ok_and(|s| s.trim() == serial)
        {
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

/// A block device's (major, minor), as the kernel numbers it (`stat`'s st_rdev).
pub fn device_number(dev: &Path) -> Result<(u32, u32), VolumeError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(dev).map_err(io("stat", dev))?;
    if !meta.file_type().is_block_device() {
        return Err(VolumeError::Io {
            action: "use as a block device",
            path: dev.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a block device"),
        });
    }
    Ok(split_rdev(meta.rdev()))
}

/// glibc's `gnu_dev_major`/`gnu_dev_minor` encoding of a 64-bit device number.
fn split_rdev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The loop devices backed by `image`.
pub fn loops_of(image: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let out = run(Command::new("losetup").arg("-j").arg(image))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(PathBuf::from)
        .collect())
}

/// A loop device over `image`, creating the image (sparse, `size` bytes) when missing and
/// reusing the device already attached to it.
pub fn loop_device(image: &Path, size: u64) -> Result<PathBuf, VolumeError> {
    if !image.exists() {
        // Made full-size under a temporary name and renamed into place, so a crash never
        // leaves a short image that would later be attached and found unformattable.
        let dir = image.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            image.file_name().unwrap_or_default().to_string_lossy()
        ));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.set_len(size).map_err(io("size", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, image).map_err(io("rename", image))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    if let Some(dev) = loops_of(image)?.into_iter().next() {
        return Ok(dev);
    }
    let out = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(image))?;
    Ok(PathBuf::from(out.trim()))
}

/// Detaches every loop device over `image`.
pub fn detach_loops(image: &Path) -> Result<(), VolumeError> {
    if !image.exists() {
        return Ok(());
    }
    for dev in loops_of(image)? {
        run(Command::new("losetup").arg("-d").arg(&dev))?;
    }
    Ok(())
}

/// The filesystem type on `device`, `None` when blkid finds nothing at all.
pub fn filesystem(device: &Path) -> Result<Option<String>, VolumeError> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(device)
        .output()
        .map_err(|e| VolumeError::Command {
            command: "blkid".into(),
            message: e.to_string(),
        })?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())),
        // blkid: 2 means no recognisable signature on the device.
        Some(2) => Ok(None),
        _ => Err(VolumeError::Command {
            command: format!("blkid -p {}", device.display()),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

/// Formats `device` as ext4 with its root owned by `owner` only when it carries no
/// filesystem; returns whether it formatted. A foreign filesystem is an error.
pub fn ensure_ext4(device: &Path, owner: (u32, u32)) -> Result<bool, VolumeError> {
    match filesystem(device)? {
        Some(t) if t == "ext4" => Ok(false),
        Some(fstype) => Err(VolumeError::ForeignFilesystem {
            device: device.to_path_buf(),
            fstype,
        }),
        None => {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-m", "0", "-E"])
                .arg(format!("root_owner={}:{}", owner.0, owner.1))
                .arg(device))?;
            Ok(true)
        }
    }
}

/// What is mounted at `mountpoint` (its source), from the mount table.
pub fn mounted_source(mountpoint: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    table.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mp = left.split(' ').nth(4)?;
        (mp == want).then(|| right.split(' ').nth(1).unwrap_or_default().to_owned())
    })
}

/// Mounts `device` at `mountpoint` with `nodev,nosuid`; a mount already there of the same
/// device is kept.
pub fn mount(device: &Path, mountpoint: &Path) -> Result<(), VolumeError> {
    if let Some(source) = mounted_source(mountpoint) {
        let same = std::fs::canonicalize(&source).ok() == std::fs::canonicalize(device).ok();
        return if same {
            Ok(())
        } else {
            Err(VolumeError::MountedElsewhere {
                mountpoint: mountpoint.to_path_buf(),
                source_device: source,
                device: device.to_path_buf(),
            })
        };
    }
    std::fs::create_dir_all(mountpoint).map_err(io("create", mountpoint))?;
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "nodev,nosuid"])
        .arg(device)
        .arg(mountpoint))?;
    Ok(())
}

/// Unmounts `mountpoint` when mounted and removes the empty directory.
pub fn unmount(mountpoint: &Path) -> Result<(), VolumeError> {
    if mounted_source(mountpoint).is_some() {
        run(Command::new("umount").arg(mountpoint))?;
    }
    match std::fs::remove_dir(mountpoint) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", mountpoint)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_glibc_does() {
        // makedev(7, 3), makedev(259, 1) and makedev(254, 1048575) in glibc's encoding.
        assert_eq!(split_rdev(0x0703), (7, 3));
        assert_eq!(split_rdev(0x10301), (259, 1));
        let (maj, min) = (254u64, 1_048_575u64);
        let rdev =
            (min & 0xff) | ((maj & 0xfff) << 8) | ((min & !0xff) << 12) | ((maj & !0xfff) << 32);
        assert_eq!(split_rdev(rdev), (254, 1_048_575));
    }

    #[test]
    fn the_null_device_is_no_block_device() {
        assert!(device_number(Path::new("/dev/null")).is_err());
    }

    #[test]
    fn ebs_device_is_found_by_nvme_serial_link_or_sysfs() {
        let tmp = std::env::temp_dir().join(format!("m8trx-vol-test-{}", std::process::id()));
        let by_id = tmp.join("by-id");
        let sys = tmp.join("sys");
        std::fs::create_dir_all(&by_id).unwrap();
        std::fs::create_dir_all(sys.join("nvme1n1/device")).unwrap();
        let target = tmp.join("nvme2n1");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(
            &target,
            by_id.join("nvme-Amazon_Elastic_Block_Store_vol0aaaabbbbcccc1111"),
        )
        .unwrap();
        std::fs::write(
            sys.join("nvme1n1/device/serial"),
            "vol0123456789abcdef0  \n",
        )
        .unwrap();
        assert_eq!(
            ebs_device(&by_id, &sys, "vol-0aaaabbbbcccc1111"),
            Some(std::fs::canonicalize(&target).unwrap())
        );
        assert_eq!(
            ebs_device(&by_id, &sys, "vol-0123456789abcdef0"),
            Some(PathBuf::from("/dev/nvme1n1"))
        );
        assert_eq!(ebs_device(&by_id, &sys, "vol-0fffffffffffffff0"), None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
