//! What the daemon-level tests share: a `hostd serve` child on a private socket and state
//! directory, `hostd ctl` against it, and the tenant engine's docker CLI.
#![allow(dead_code)] // each test binary uses its own subset

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A variable `scripts/test-env` writes; panics with the fix when it is missing.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `make test` (scripts/test-env writes it)")
    })
}

/// Fails loudly unless the test runs as root.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(uid, Some("0"), "this test must run as root");
}

/// Engines of these tests run below this directory (sockets, exec roots).
pub const RUN_ROOT: &str = "/run/m8trx-e2e/engines";

/// A running `hostd serve`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts `hostd serve` with everything under `dir`; waits for its socket.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    /// Like [`Daemon::start`], with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("hostd.sock");
        // A killed daemon leaves its socket behind; wait for the new one's.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hostd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hostd"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--tenants-root")
            .arg(dir.join("tenants"))
            .args(["--run-root", RUN_ROOT, "--supervise-interval", "1"])
            .args(["--containerd", &env("M8TRX_CONTAINERD_SOCKET")])
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .arg("--profiles-dir")
            .arg(dir.join("profiles"))
            .args(if extra.contains(&"--secrets") {
                &[][..]
            } else {
                &["--secrets", "none"][..]
            })
            .args(extra)
            // The host's own credentials (moto accepts any); never the metadata service.
            .env("AWS_ACCESS_KEY_ID", "AKIDM8TRXHOSTTEST")
            .env("AWS_SECRET_ACCESS_KEY", "host-secret-not-for-tenants")
            .env("AWS_EC2_METADATA_DISABLED", "true")
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

    /// Runs `hostd ctl ARGS` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hostd"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `hostd ctl ARGS`, asserting success; returns its output text.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "hostd ctl {args:?} failed: {}",
            text(&o)
        );
        text(&o)
    }

    /// `hostd ctl --json status NAME`.
    pub fn status(&self, name: &str) -> serde_json::Value {
        let o = self.ctl(&["--json", "status", name]);
        assert!(o.status.success(), "status {name}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Destroys the tenants if the test fails half-way, so a failure leaves nothing behind.
pub struct Cleanup {
    pub dir: PathBuf,
    pub names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() && self.dir.join("state").exists() {
            let d = Daemon::start(&self.dir);
            for n in &self.names {
                let _ = d.ctl(&["destroy", n, "--wipe"]);
            }
        }
    }
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tenant spec file in `dir`.
pub fn write_spec(dir: &Path, name: &str, memory: &str) -> PathBuf {
    let spec = dir.join(format!("{name}.yml"));
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: baseline\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ cpu: 0.5, memory: {memory}, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: {img} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer\", external_id: ext-1 }}\n",
            img = dir.join(format!("{name}.img")).display()
        ),
    )
    .unwrap();
    spec
}

/// The test busybox image saved as a tarball in `dir`, as an operator would bring it.
pub fn busybox_tarball(dir: &Path) -> (String, PathBuf) {
    image_tarball(dir, "M8TRX_IMAGE_BUSYBOX")
}

/// The test image named by `var` (scripts/test-env) saved as a tarball in `dir`.
pub fn image_tarball(dir: &Path, var: &str) -> (String, PathBuf) {
    let image = env(var);
    let tar = dir.join(format!("{}.tar", var.to_ascii_lowercase()));
    let o = Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success(), "docker save: {}", text(&o));
    (image, tar)
}

/// The docker CLI against a tenant's engine.
pub fn tenant_docker(name: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{RUN_ROOT}/{name}/docker.sock"))
        .args(args)
        .output()
        .unwrap()
}

/// The host's first subordinate uid of a tenant (its containers' root), from /etc/subuid.
pub fn subuid_base(tenant: &str) -> u32 {
    let user = format!("m8t-{tenant}:");
    std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&user))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no /etc/subuid line for {tenant}"))
        .parse()
        .unwrap()
}

/// A binary of another workspace crate, which `cargo test --workspace` builds beside this test.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `make test` or `cargo build -p {name}` first",
        bin.display()
    );
    bin
}

/// The six platform parameters of a tenant.
pub const LEAVES: [&str; 6] = [
    "brain-key",
    "brain-customer-id",
    "brain-url",
    "tailscale-auth-key",
    "agent-fetch-pat",
    "agent-ui-password",
];

/// Puts a tenant's parameters into moto as control would (SecureString where the platform
/// says): `secret-<leaf>-<suffix>`.
pub fn put_parameters(name: &str, suffix: &str) {
    let script = r#"
import sys, boto3
ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=sys.argv[1],
                   aws_access_key_id="AKIDCONTROL", aws_secret_access_key="control")
name, suffix = sys.argv[2], sys.argv[3]
for leaf in ["brain-key", "brain-customer-id", "brain-url", "tailscale-auth-key",
             "agent-fetch-pat", "agent-ui-password"]:
    plain = leaf in ("brain-customer-id", "brain-url")
    ssm.put_parameter(Name=f"/m8trx/{name}/{leaf}", Value=f"secret-{leaf}-{suffix}",
                      Type="String" if plain else "SecureString", Overwrite=True)
"#;
    let o = Command::new(env("M8TRX_PYTHON"))
        .args(["-c", script, &env("M8TRX_MOTO_ENDPOINT"), name, suffix])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// `hostd serve` flags reading the tenants' parameters from moto as their customer roles.
pub fn ssm_flags() -> Vec<String> {
    vec![
        "--secrets".into(),
        "ssm".into(),
        "--aws-endpoint".into(),
        env("M8TRX_MOTO_ENDPOINT"),
        "--host-id".into(),
        "m8trx-test-host".into(),
    ]
}
