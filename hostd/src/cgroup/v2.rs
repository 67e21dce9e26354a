//! cgroup v2 written by hostd (no systemd as PID 1): the envelope at `m8trx/<name>` with the
//! `engine` and `workload` leaves below it; controllers delegated down every level.

use std::path::Path;

use super::{cpu_quota_us, io, read, write, CgroupError, Limits, CPU_PERIOD_US, ENGINE, WORKLOAD};

/// v2 controllers hostd delegates to the tenant subtree.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// Creates the envelope and its children, delegates the controllers and writes the limits.
pub(super) fn apply(root: &Path, rel: &Path, l: &Limits) -> Result<(), CgroupError> {
    let available = read(&root.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    for required in ["cpu", "memory", "pids"] {
        if !available.contains(&required) {
            return Err(CgroupError::MissingController(required));
        }
    }
    let enable: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    let enable = enable.join(" ");
    // Delegate controllers down every level so that limits apply at the tenant and
    // dockerd's per-container children can be limited too.
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        write(&dir.join("cgroup.subtree_control"), &enable)?;
        dir = dir.join(part);
        if !dir.is_dir() {
            std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        }
    }
    write(&dir.join("cgroup.subtree_control"), &enable)?;
    for child in [ENGINE, WORKLOAD] {
        let c = dir.join(child);
        if !c.is_dir() {
            std::fs::create_dir(&c).map_err(io("create", &c))?;
        }
    }
    set_memory(&dir, l.envelope_memory())?;
    write(
        &dir.join("cpu.max"),
        &format!("{} {CPU_PERIOD_US}", cpu_quota_us(l.cpu)),
    )?;
    write(&dir.join("pids.max"), &l.envelope_pids().to_string())?;
    if !l.io.is_empty() {
        if !available.contains(&"io") {
            return Err(CgroupError::MissingController("io"));
        }
        for d in &l.io {
            write(&dir.join("io.max"), &io_max_line(d))?;
        }
    }
    let workload = dir.join(WORKLOAD);
    set_memory(&workload, l.memory)?;
    write(&workload.join("pids.max"), &l.pids.to_string())?;
    // dockerd's container cgroups go below the workload; give them the same controllers.
    write(&workload.join("cgroup.subtree_control"), &enable)?;
    Ok(())
}

fn set_memory(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    write(&dir.join("memory.max"), &bytes.to_string())?;
    if dir.join("memory.swap.max").exists() {
        write(&dir.join("memory.swap.max"), "0")?;
    }
    Ok(())
}

/// One `io.max` line (`MAJ:MIN rbps=… wbps=…`).
pub(super) fn io_max_line(d: &super::IoLimit) -> String {
    let mut line = format!("{}:{}", d.major, d.minor);
    if let Some(r) = d.read_bps {
        line.push_str(&format!(" rbps={r}"));
    }
    if let Some(w) = d.write_bps {
        line.push_str(&format!(" wbps={w}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::super::{
        fixture, CgroupFs, IoLimit, Limits, Version, ENGINE_MEMORY_ALLOWANCE, PARENT,
    };
    use std::path::Path;

    /// Builds a cgroup v2 tree the way the kernel shows it: interface files exist as soon as
    /// a directory exists (the fixture pre-populates them, as mkdir would).
    fn v2_fixture(root: &Path, tenant: &str) {
        let files_root = [
            "cgroup.controllers",
            "cgroup.subtree_control",
            "cgroup.procs",
        ];
        let files_child = [
            "cgroup.controllers",
            "cgroup.subtree_control",
            "cgroup.procs",
            "cgroup.events",
            "memory.max",
            "memory.swap.max",
            "memory.current",
            "memory.events",
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "pids.current",
            "io.max",
        ];
        std::fs::create_dir_all(root).unwrap();
        for f in files_root {
            std::fs::write(root.join(f), "").unwrap();
        }
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        let t = root.join(PARENT).join(tenant);
        for dir in [
            root.join(PARENT),
            t.clone(),
            t.join("engine"),
            t.join("workload"),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
            for f in files_child {
                std::fs::write(dir.join(f), "").unwrap();
            }
            std::fs::write(dir.join("pids.current"), "0\n").unwrap();
            std::fs::write(
                dir.join("memory.events"),
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            )
            .unwrap();
        }
    }

    fn limits() -> Limits {
        Limits {
            cpu: 0.5,
            memory: 256 << 20,
            pids: 200,
            io: vec![IoLimit {
                major: 7,
                minor: 3,
                read_bps: Some(50 << 20),
                write_bps: Some(20 << 20),
            }],
        }
    }

    #[test]
    fn layout_gets_delegation_envelope_and_workload_limits() {
        let tmp = fixture::tempdir();
        let root = tmp.join("cgroup");
        v2_fixture(&root, "acme");
        let fs = CgroupFs::detect_at(&root).unwrap();
        assert_eq!(fs.version(), Version::V2);
        let cg = fs.tenant("acme");
        assert_eq!(cg.docker_parent(), "/m8trx/acme/workload");
        cg.apply(&limits()).unwrap();
        let r = |p: &str| fixture::r(&root, p);
        let all = "+cpu +memory +pids +io";
        assert_eq!(r("cgroup.subtree_control"), all);
        assert_eq!(r("m8trx/cgroup.subtree_control"), all);
        assert_eq!(r("m8trx/acme/cgroup.subtree_control"), all);
        assert_eq!(r("m8trx/acme/workload/cgroup.subtree_control"), all);
        assert_eq!(
            r("m8trx/acme/memory.max"),
            ((256u64 << 20) + ENGINE_MEMORY_ALLOWANCE).to_string()
        );
        assert_eq!(
            r("m8trx/acme/workload/memory.max"),
            (256u64 << 20).to_string()
        );
        assert_eq!(r("m8trx/acme/memory.swap.max"), "0");
        assert_eq!(r("m8trx/acme/workload/memory.swap.max"), "0");
        assert_eq!(r("m8trx/acme/cpu.max"), "50000 100000");
        assert_eq!(r("m8trx/acme/workload/pids.max"), "200");
        assert_eq!(
            r("m8trx/acme/io.max"),
            format!("7:3 rbps={} wbps={}", 50u64 << 20, 20u64 << 20)
        );
        assert_eq!(cg.oom_kills().unwrap(), 1);
        assert_eq!(cg.pids_current().unwrap(), 0);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn without_memory_controller_is_a_clear_error() {
        let tmp = fixture::tempdir();
        let root = tmp.join("cgroup");
        v2_fixture(&root, "acme");
        std::fs::write(root.join("cgroup.controllers"), "cpu io pids\n").unwrap();
        let err = CgroupFs::detect_at(&root)
            .unwrap()
            .tenant("acme")
            .apply(&limits())
            .unwrap_err();
        assert!(
            err.to_string().contains("`memory` is not available"),
            "{err}"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
