//! cgroup v1, written by hostd: one directory per controller, the tenant's envelope at
//! `<controller>/m8trx/<name>` with `engine` and `workload` below it.

use std::path::Path;

use super::{
    cpu_quota_us, io, oom_kill_count, read, write, CgroupError, CgroupFs, Limits, CPU_PERIOD_US,
    ENGINE, WORKLOAD,
};

/// v1 controllers hostd uses, and whether the tenant cannot work without them (without a
/// freezer a tenant cannot be frozen, without cpuacct its CPU use is not sampled).
pub(super) const CONTROLLERS: [(&str, bool); 6] = [
    ("memory", true),
    ("cpu", true),
    ("pids", true),
    ("blkio", false),
    ("freezer", false),
    ("cpuacct", false),
];

/// Creates the envelope and its two children in every controller and writes the limits.
pub(super) fn apply(fs: &CgroupFs, rel: &Path, l: &Limits) -> Result<(), CgroupError> {
    for (controller, required) in CONTROLLERS {
        let croot = fs.root.join(controller);
        if !croot.is_dir() {
            if required {
                return Err(CgroupError::MissingController(controller));
            }
            continue;
        }
        for dir in [
            fs.v1_dir(controller, rel),
            fs.v1_dir(controller, &rel.join(ENGINE)),
            fs.v1_dir(controller, &rel.join(WORKLOAD)),
        ] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
    }
    set_memory(&fs.v1_dir("memory", rel), l.envelope_memory())?;
    set_memory(&fs.v1_dir("memory", &rel.join(WORKLOAD)), l.memory)?;
    let cpu = fs.v1_dir("cpu", rel);
    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
    write(
        &cpu.join("cpu.cfs_quota_us"),
        &cpu_quota_us(l.cpu).to_string(),
    )?;
    write(
        &fs.v1_dir("pids", rel).join("pids.max"),
        &l.envelope_pids().to_string(),
    )?;
    write(
        &fs.v1_dir("pids", &rel.join(WORKLOAD)).join("pids.max"),
        &l.pids.to_string(),
    )?;
    if !l.io.is_empty() {
        let blkio = fs.v1_dir("blkio", rel);
        if !blkio.is_dir() {
            return Err(CgroupError::MissingController("blkio"));
        }
        for d in &l.io {
            if let Some(r) = d.read_bps {
                write(
                    &blkio.join("blkio.throttle.read_bps_device"),
                    &format!("{}:{} {r}", d.major, d.minor),
                )?;
            }
            if let Some(w) = d.write_bps {
                write(
                    &blkio.join("blkio.throttle.write_bps_device"),
                    &format!("{}:{} {w}", d.major, d.minor),
                )?;
            }
        }
    }
    Ok(())
}

/// Sets memory and memory+swap to the same ceiling. Lowering memsw below the memory limit
/// is refused by the kernel, so the writes are ordered by direction.
fn set_memory(mem: &Path, bytes: u64) -> Result<(), CgroupError> {
    let memsw = mem.join("memory.memsw.limit_in_bytes");
    let limit = bytes.to_string();
    if memsw.exists() {
        let current: u64 = read(&memsw)?.parse().unwrap_or(u64::MAX);
        if bytes < current {
            write(&mem.join("memory.limit_in_bytes"), &limit)?;
            write(&memsw, &limit)?;
        } else {
            write(&memsw, &limit)?;
            write(&mem.join("memory.limit_in_bytes"), &limit)?;
        }
        Ok(())
    } else {
        write(&mem.join("memory.limit_in_bytes"), &limit)
    }
}

/// Sums `oom_kill` over the memory subtree below `dir` (v1 counts a kill only where the
/// victim was).
pub(super) fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        total += oom_kill_count(&dir.join("memory.oom_control"))?;
        let entries = std::fs::read_dir(&dir).map_err(io("list", &dir))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, CgroupFs, Version, PARENT};

    #[test]
    fn oom_kills_count_the_containers_below_the_tenant() {
        let tmp = fixture::tempdir();
        let root = tmp.join("cgroup");
        for c in ["cpu", "pids", "blkio"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let tenant = root.join("memory").join(PARENT).join("acme");
        let container = tenant.join("workload").join("0123abcd");
        std::fs::create_dir_all(&container).unwrap();
        let oom = |n: u32| format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n");
        std::fs::write(tenant.join("memory.oom_control"), oom(0)).unwrap();
        std::fs::write(tenant.join("workload/memory.oom_control"), oom(0)).unwrap();
        std::fs::write(container.join("memory.oom_control"), oom(2)).unwrap();
        let fs = CgroupFs::detect_at(&root).unwrap();
        assert_eq!(fs.version(), Version::V1);
        assert_eq!(fs.tenant("acme").oom_kills().unwrap(), 2);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
