//! `hostd serve` and `hostd ctl` end to end, as root against the real dockerd's containerd:
//! create from a spec file (progress shown), list and status, deploy a compose file (and a
//! hostile one refused naming service and key), `kill -9` of the daemon and a restart that
//! re-adopts the engine, destroy with nothing left, and the documented exit codes.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `make test` (scripts/test-env writes it)")
    })
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let socket = dir.join("hostd.sock");
        // A killed daemon leaves its socket behind; wait for the new one's.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join("hostd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hostd"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--data-root")
            .arg(dir.join("engines"))
            .args([
                "--run-root",
                "/run/m8trx-e2e/engines",
                "--containerd",
                &env("M8TRX_CONTAINERD_SOCKET"),
            ])
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..300 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            socket.exists(),
            "hostd serve did not open its socket; see {}",
            dir.join("hostd.log").display()
        );
        Daemon {
            child,
            socket,
            dir: dir.to_path_buf(),
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hostd"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }
}

/// Destroys the tenant if the test fails half-way, so a failure leaves nothing behind.
struct Cleanup {
    dir: PathBuf,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() && self.dir.join("state").exists() {
            let d = Daemon::start(&self.dir);
            let _ = d.ctl(&["destroy", &self.name, "--wipe"]);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn serve_and_ctl_create_deploy_restart_destroy() {
    assert_eq!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .nth(1),
        Some("0"),
        "this test must run as root"
    );
    let id = std::process::id();
    let name = format!("ctl-{id}");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-ctl-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.yml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: baseline\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ cpu: 0.5, memory: 256Mi, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: /var/lib/m8trx-e2e/{name}.img }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer\", external_id: ext-1 }}\n"
        ),
    )
    .unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        name: name.clone(),
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
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
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

    // The image arrives as a tarball (no registry here), then the project deploys.
    let image = env("M8TRX_IMAGE_BUSYBOX");
    let engine_sock = format!("unix:///run/m8trx-e2e/engines/{name}/docker.sock");
    let load = Command::new("sh")
        .args([
            "-c",
            &format!("docker save {image} | docker -H {engine_sock} load"),
        ])
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", text(&load));
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!("services:\n  app:\n    image: {image}\n    command: [sleep, '300']\n"),
    )
    .unwrap();
    let o = d.ctl(&["deploy", &name, "-f", compose.to_str().unwrap()]);
    assert!(o.status.success(), "deploy failed: {}", text(&o));
    assert!(
        text(&o).contains(&format!("m8trx-{name}-app-1")),
        "{}",
        text(&o)
    );
    let hostile = dir.join("hostile.yml");
    std::fs::write(
        &hostile,
        format!("services:\n  app:\n    image: {image}\n    privileged: true\n"),
    )
    .unwrap();
    let o = d.ctl(&["deploy", &name, "-f", hostile.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("service `app`, key `privileged`"),
        "{}",
        text(&o)
    );

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
        Some(1),
        "gone after destroy"
    );
    assert!(
        !Path::new(&format!("/run/m8trx-e2e/engines/{name}")).exists(),
        "engine exec root removed"
    );
    assert!(!d.dir.join("engines").join(&name).exists(), "data wiped");
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
