//! `hostd serve` and `hostd ctl` end to end, as root against the real dockerd's containerd:
//! create from a spec file (progress shown), list and status, deploy a compose file (and a
//! hostile one refused naming service and key), `kill -9` of the daemon and a restart that
//! re-adopts the engine, destroy with nothing left, and the documented exit codes.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{busybox_tarball, require_root, tenant_docker, text, write_spec, Cleanup, Daemon};

/// Polls `f` every 200 ms until it returns `Some`, or panics after `secs` with `what`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pids_in_tenant_cgroup(name: &str) -> u64 {
    hostd::cgroup::CgroupFs::detect()
        .unwrap()
        .tenant(name)
        .pids_current()
        .unwrap()
}

/// `pid state command` of every process in the tenant's cgroup tree, for failure messages.
fn processes_in_tenant_cgroup(name: &str) -> String {
    let cg = hostd::cgroup::CgroupFs::detect().unwrap().tenant(name);
    let mut out = String::new();
    for dir in cg.dirs() {
        let found = std::process::Command::new("find")
            .arg(&dir)
            .args(["-name", "cgroup.procs"])
            .output()
            .unwrap();
        for procs in String::from_utf8_lossy(&found.stdout).lines() {
            for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                out.push_str(&format!("[{procs}] {stat}\n"));
            }
        }
    }
    out
}

#[test]
fn serve_and_ctl_create_deploy_restart_destroy() {
    require_root();
    let id = std::process::id();
    let name = format!("ctl-{id}");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-ctl-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = write_spec(&dir, &name, "256Mi");
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let mut d = Daemon::start(&dir);

    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("cpu: 0.5", "cpu: 100"),
    )
    .unwrap();
    let o = d.ctl(&["create", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        text(&o).contains("limits.cpu"),
        "the refusal names the field: {}",
        text(&o)
    );
    assert_eq!(
        d.ctl(&["create", "-f", "/nonexistent.yml"]).status.code(),
        Some(2)
    );

    let o = d.ctl(&["create", "-f", spec.to_str().unwrap()]);
    assert!(o.status.success(), "create failed: {}", text(&o));
    assert!(
        text(&o).contains(&format!("{name}: Engine")),
        "progress lines shown: {}",
        text(&o)
    );
    let o = d.ctl(&["list"]);
    assert!(
        text(&o).contains("NAME") && text(&o).contains(&name),
        "{}",
        text(&o)
    );
    let o = d.ctl(&["--json", "status", &name]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pid = status["engine_pid"].as_u64().expect("engine running");
    let slot = u16::try_from(status["slot"].as_u64().expect("slot")).unwrap();
    assert_eq!(status["desired"], "present");
    // The tenant volume: a loop device over the spec's image, mounted nodev,nosuid, and the
    // engine's data root on it.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mp = dir.join("tenants").join(&name);
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted", mp.display()));
    assert!(
        line.contains("nodev") && line.contains("nosuid") && line.contains(" ext4 /dev/loop"),
        "{line}"
    );
    assert!(mp.join("engine").is_dir(), "engine data root on the volume");

    // The image arrives as a tarball (no registry here), then the project deploys.
    let (image, tar) = busybox_tarball(&dir);
    let o = d.ctl(&["load", &name, "-i", tar.to_str().unwrap()]);
    assert!(o.status.success(), "load failed: {}", text(&o));
    assert!(
        text(&o).contains(&image),
        "the loaded image is named: {}",
        text(&o)
    );
    let o = d.ctl(&["load", &name, "-i", "/etc/hostname"]);
    assert_eq!(o.status.code(), Some(6), "not a tarball: {}", text(&o));
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  app:\n    image: {image}\n    \
             command: [sh, -c, 'echo hello-from-app; exec sleep 300']\n"
        ),
    )
    .unwrap();
    let o = d.ctl(&["deploy", &name, "-f", compose.to_str().unwrap()]);
    assert!(o.status.success(), "deploy failed: {}", text(&o));
    assert!(
        text(&o).contains(&format!("m8trx-{name}-app-1")),
        "{}",
        text(&o)
    );
    // The same deploy as one JSON bundle (what control forwards): accepted, nothing changed.
    let bundle = dir.join("bundle.json");
    std::fs::write(
        &bundle,
        serde_json::json!({"compose": std::fs::read_to_string(&compose).unwrap()}).to_string(),
    )
    .unwrap();
    let o = d.ctl(&["deploy", &name, "--bundle", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "deploy --bundle failed: {}", text(&o));
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    let o = d.ctl(&["deploy", &name, "--bundle", compose.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a compose file is no bundle: {}",
        text(&o)
    );
    let hostile = dir.join("hostile.yml");
    std::fs::write(
        &hostile,
        format!("services:\n  app:\n    image: {image}\n    privileged: true\n"),
    )
    .unwrap();
    let o = d.ctl(&["deploy", &name, "-f", hostile.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6));
    assert!(
        text(&o).contains("service `app`, key `privileged`"),
        "{}",
        text(&o)
    );

    // Logs of one service, and a clear refusal for a service that does not exist.
    let logs = wait_for(20, "the app's first log line", || {
        let o = d.ctl(&["logs", &name, "app"]);
        (o.status.success() && text(&o).contains("hello-from-app")).then(|| text(&o))
    });
    assert!(
        logs.contains(&format!("m8trx-{name}-app-1 | hello-from-app")),
        "{logs}"
    );
    let o = d.ctl(&["logs", &name, "nosuch"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o).contains("no container of service"), "{}", text(&o));

    // The engine dies (kill -9): the supervisor starts a new one, and with live-restore
    // the app container kept running through it.
    let app_pid =
        |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let before = app_pid(&tenant_docker(
        &name,
        &[
            "inspect",
            "-f",
            "{{.State.Pid}}",
            &format!("m8trx-{name}-app-1"),
        ],
    ));
    assert!(before.parse::<u32>().unwrap() > 0, "app running: {before}");
    // hostd's profiles hold on what it deployed: seccomp filter mode, no new privileges.
    let status = std::fs::read_to_string(format!("/proc/{before}/status")).unwrap();
    assert!(
        status.contains("Seccomp:\t2"),
        "seccomp filter on the app:\n{status}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let apparmor = dir.join(format!("profiles/apparmor/m8trx-tenant-{name}"));
    assert!(
        apparmor.exists(),
        "AppArmor profile rendered for the tenant"
    );
    let o = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
    wait_for(30, "the supervisor restarts the dead engine", || {
        d.status(&name)["engine_pid"].as_u64().filter(|p| *p != pid)
    });
    let after = wait_for(30, "the restarted engine answers", || {
        let o = tenant_docker(
            &name,
            &[
                "inspect",
                "-f",
                "{{.State.Pid}}",
                &format!("m8trx-{name}-app-1"),
            ],
        );
        o.status.success().then(|| app_pid(&o))
    });
    assert_eq!(before, after, "the container survived the engine's death");

    // stop: containers and engine stop, nothing of the tenant runs; start brings both back.
    assert!(pids_in_tenant_cgroup(&name) > 0);
    d.ok(&["stop", &name]);
    let st = d.status(&name);
    assert_eq!(st["desired"], "stopped", "{st}");
    assert!(st["engine_pid"].is_null(), "engine stopped: {st}");
    assert_eq!(
        pids_in_tenant_cgroup(&name),
        0,
        "no process left in the tenant's cgroup: {}",
        processes_in_tenant_cgroup(&name)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        d.status(&name)["engine_pid"].is_null(),
        "the supervisor leaves a stopped tenant stopped"
    );
    let o = d.ctl(&["logs", &name]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        text(&o).contains("hostd ctl start"),
        "says what to do: {}",
        text(&o)
    );
    let out = d.ok(&["start", &name]);
    assert!(out.contains("starting container"), "{out}");
    let st = d.status(&name);
    assert_eq!(st["desired"], "present", "{st}");
    let pid = st["engine_pid"].as_u64().expect("engine running again");
    let o = tenant_docker(
        &name,
        &[
            "inspect",
            "-f",
            "{{.State.Running}}",
            &format!("m8trx-{name}-app-1"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "true",
        "{}",
        text(&o)
    );

    // quarantine is recorded and shown; the traffic it cuts is tested with two tenants.
    let out = d.ok(&["quarantine", &name]);
    assert!(out.contains("quarantined"), "{out}");
    assert_eq!(d.status(&name)["quarantined"], true);
    d.ok(&["quarantine", &name, "--lift"]);
    assert_eq!(d.status(&name)["quarantined"], false);

    // kill -9 the daemon; a new one reconciles and adopts the same engine.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert_eq!(
        d.ctl(&["list"]).status.code(),
        Some(3),
        "unreachable daemon exits 3"
    );
    drop(d);
    let d = Daemon::start(&dir);
    let o = d.ctl(&["--json", "status", &name]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        status["engine_pid"].as_u64(),
        Some(pid),
        "engine re-adopted, not restarted"
    );

    let o = d.ctl(&["destroy", &name, "--wipe"]);
    assert!(o.status.success(), "destroy failed: {}", text(&o));
    assert_eq!(
        d.ctl(&["status", &name]).status.code(),
        Some(4),
        "gone after destroy"
    );
    assert!(
        !Path::new(&format!("/run/m8trx-e2e/engines/{name}")).exists(),
        "engine exec root removed"
    );
    let image = dir.join(format!("{name}.img"));
    assert!(!image.exists(), "volume image wiped");
    assert!(
        !d.dir.join("tenants").join(&name).exists(),
        "mount point removed"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!("/tenants/{name} ")),
        "volume unmounted"
    );
    assert!(!apparmor.exists(), "AppArmor profile removed");
    let bridges = hostd::engine::links_in_subnet(hostd::ids::subnet(slot));
    assert!(
        bridges.is_empty(),
        "tenant bridges left on the host: {bridges:?}"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!passwd.contains(&format!("m8t-{name}:")), "user removed");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
