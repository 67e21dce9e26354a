//! hostd's aggregate tenant limits on the live cgroup hierarchy of this machine (v1 here,
//! v2 in production; the v2 layout is covered by unit tests against a fixture tree):
//! a memory hog in tenant A is OOM-killed at A's limit while tenant B's same-size
//! workload survives under its larger limit; A's pids limit stops a fork bomb.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use hostd::cgroup::{CgroupFs, Limits, TenantCgroup};
use m8trx_e2e::require_root;

const MIB: u64 = 1 << 20;

/// Runs `script` under busybox sh inside `cg`: the shell waits on stdin until it has been
/// moved into the cgroup, so nothing it does is charged elsewhere.
fn run_in(cg: &TenantCgroup, script: &str) -> std::process::Output {
    let mut child = Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning busybox sh (busybox-static is installed by scripts/test-env)");
    cg.add_process(child.id())
        .expect("moving the workload into the tenant cgroup");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait_with_output().unwrap()
}

struct Cleanup(TenantCgroup);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in self.0.dirs() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = self.0.remove();
    }
}

#[test]
fn memory_hog_dies_at_its_tenants_limit_while_the_other_tenant_survives() {
    require_root();
    let fs = CgroupFs::detect().expect("this host's cgroup layout");
    let id = std::process::id();
    let a = Cleanup(fs.tenant(&format!("e2e-a-{id}")));
    let b = Cleanup(fs.tenant(&format!("e2e-b-{id}")));
    a.0.apply(&Limits {
        cpu: 0.5,
        memory: 64 * MIB,
        pids: 64,
        io: vec![],
    })
    .unwrap();
    b.0.apply(&Limits {
        cpu: 0.5,
        memory: 512 * MIB,
        pids: 64,
        io: vec![],
    })
    .unwrap();
    assert!(a.0.exists() && b.0.exists());

    // dd's buffer is one 200 MiB block that it fills from /dev/zero: every page is touched.
    let hog = "exec dd if=/dev/zero of=/dev/null bs=200M count=1";
    let in_a = run_in(&a.0, hog);
    assert_eq!(
        in_a.status.signal(),
        Some(9),
        "A's hog must be OOM-killed: {in_a:?}"
    );
    assert!(
        a.0.oom_kills().unwrap() >= 1,
        "A's cgroup must record the OOM kill"
    );

    let in_b = run_in(&b.0, hog);
    assert!(
        in_b.status.success(),
        "B's workload must survive under B's limit: {in_b:?}"
    );
    assert_eq!(b.0.oom_kills().unwrap(), 0);

    a.0.remove().unwrap();
    b.0.remove().unwrap();
    assert!(
        !a.0.exists() && !b.0.exists(),
        "remove leaves no cgroup directory"
    );
}

#[test]
fn pids_limit_stops_a_fork_bomb_at_the_tenant() {
    require_root();
    let fs = CgroupFs::detect().expect("this host's cgroup layout");
    let cg = Cleanup(fs.tenant(&format!("e2e-p-{}", std::process::id())));
    cg.0.apply(&Limits {
        cpu: 1.0,
        memory: 256 * MIB,
        pids: 20,
        io: vec![],
    })
    .unwrap();
    let out = run_in(
        &cg.0,
        "n=0; while [ $n -lt 60 ]; do sleep 2 & n=$((n+1)); done; echo started=$n; wait",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fork"),
        "forks beyond pids.max must fail: {out:?}"
    );
    assert!(cg.0.pids_current().unwrap() <= 20);
}
