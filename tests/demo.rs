//! `make demo` end to end (scripts/demo with this build's binaries): each subdomain answers
//! through sni-proxy with its own certificate and content, and acme's Caddy sees the real
//! client; acme's app got the customer role's credentials with only the standard variables;
//! beta can read neither acme's volume nor its secrets (as beta's remapped root on the host)
//! and cannot reach acme's containers; destroying acme leaves beta serving and nothing of
//! acme behind (user, id ranges, mount, loop device, rules, route, broker registration,
//! engine, cgroup). A port already in use stops it first, naming its variable.
//! `scripts/demo down` runs at the end whatever happened.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

use m8trx_e2e::{bin_dir, repo_root, require_root};

const RUN: &str = "/run/m8trx-demo";
const STATE: &str = "/var/lib/m8trx-demo";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn demo(arg: &str) -> Output {
    demo_with(arg, &[])
}

fn demo_with(arg: &str, env: &[(&str, String)]) -> Output {
    Command::new(repo_root().join("scripts/demo"))
        .arg(arg)
        .env("M8TRX_DEMO_BIN", bin_dir())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// Tears the demo down at the end, also after a failed assertion.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let o = demo("down");
        if !std::thread::panicking() {
            assert!(o.status.success(), "demo down: {}", text(&o));
        }
    }
}

/// `curl -kv` through the proxy: (body, verbose).
fn fetch(name: &str) -> (String, String) {
    let host = format!("{name}.demo.m8trx.test");
    let o = Command::new("curl")
        .args(["-sS", "-kv", "--max-time", "5", "--resolve"])
        .arg(format!("{host}:8443:127.0.0.1"))
        .arg(format!("https://{host}:8443/"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{name}: {}", text(&o));
    (
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ctl(args: &[&str]) -> Output {
    Command::new(bin_dir().join("hostd"))
        .args(["ctl", "--socket", &format!("{RUN}/hostd.sock")])
        .args(args)
        .output()
        .unwrap()
}

fn engine(tenant: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{RUN}/engines/{tenant}/docker.sock"))
        .args(args)
        .output()
        .unwrap()
}

fn subuid_base(tenant: &str) -> Option<String> {
    std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("m8t-{tenant}:")))
        .and_then(|l| l.split(':').next())
        .map(str::to_owned)
}

/// Reads a file on the host as the given uid/gid (a tenant's remapped root).
fn read_as(uid: &str, path: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "cat",
            path,
        ])
        .output()
        .unwrap()
}

#[test]
fn demo_tenants_are_served_isolated_and_acme_leaves_nothing() {
    require_root();
    assert!(
        !Path::new(RUN).exists(),
        "a demo is already running on this machine: `make demo-down` first"
    );
    // A port already in use stops the demo before it starts anything, naming the variable.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = demo_with("up", &[("M8TRX_DEMO_TLS_PORT", port.clone())]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "port {port} (tcp, for sni-proxy) is already in use; set M8TRX_DEMO_TLS_PORT"
        )),
        "{}",
        text(&o)
    );
    assert!(!Path::new(RUN).exists(), "nothing was started");
    let o = demo_with("up", &[("M8TRX_DEMO_HTTP_PORT", "http".into())]);
    assert!(
        text(&o).contains("M8TRX_DEMO_HTTP_PORT=http is not a port number"),
        "{}",
        text(&o)
    );
    drop(busy);

    let _down = Down;
    let up = demo("up");
    assert!(up.status.success(), "make demo failed:\n{}", text(&up));
    assert!(text(&up).contains("curl -k --resolve acme.demo.m8trx.test:8443:127.0.0.1"));

    // Own certificate and content per subdomain; acme's Caddy sees the real client.
    let (body, verbose) = fetch("acme");
    assert_eq!(body, "hello from acme's own Caddy; you are 127.0.0.1");
    assert!(
        verbose.contains("issuer: CN=Caddy Local Authority"),
        "{verbose}"
    );
    let (body, verbose) = fetch("beta");
    assert_eq!(body, "hello from beta (TLS terminated by sni-proxy)");
    assert!(
        verbose.contains("issuer: CN=Pebble Intermediate CA"),
        "{verbose}"
    );

    // acme's app: credentials from the broker with only the standard variables.
    let logs = text(&ctl(&["logs", "acme", "app"]));
    assert!(logs.contains("container-role credentials ASIA"), "{logs}");

    // acme (agent) has its tailscale sidecar, named after the host and the tenant.
    let ts = text(&engine("acme", &["logs", "m8trx-acme-tailscale-1"]));
    assert!(
        ts.contains("hostname=m8trx-demo-host-acme") && ts.contains("authkey=readable"),
        "{ts}"
    );

    // beta's remapped root cannot read acme's volume or secrets; acme's own root can.
    let (a, b) = (subuid_base("acme").unwrap(), subuid_base("beta").unwrap());
    let secret = format!("{STATE}/tenants/acme/secrets/brain-key");
    assert_eq!(text(&read_as(&a, &secret)), "demo-acme-brain-key");
    let o = read_as(&b, &secret);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{}",
        text(&o)
    );

    // beta cannot reach acme's containers.
    let acme_ip = String::from_utf8_lossy(
        &engine(
            "acme",
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "m8trx-acme-caddy-1",
            ],
        )
        .stdout,
    )
    .trim()
    .to_owned();
    assert!(acme_ip.starts_with("10.250."), "{acme_ip}");
    let o = engine(
        "beta",
        &["exec", "m8trx-beta-web-1", "nc", "-w", "3", &acme_ip, "443"],
    );
    assert!(!o.status.success(), "beta reached acme at {acme_ip}:443");

    // Destroying acme leaves beta serving and nothing of acme.
    let status: serde_json::Value =
        serde_json::from_slice(&ctl(&["--json", "status", "acme"]).stdout).unwrap();
    let slot = status["slot"].as_u64().unwrap();
    let o = ctl(&["destroy", "acme", "--wipe"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fetch("beta").0,
        "hello from beta (TLS terminated by sni-proxy)"
    );
    let mut left = Vec::new();
    if std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("m8t-acme:")
    {
        left.push("user".to_owned());
    }
    if subuid_base("acme").is_some() {
        left.push("subuid line".into());
    }
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&format!("{STATE}/tenants/acme "))
    {
        left.push("mount".into());
    }
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    if text(&loops).contains("volumes/acme.img") {
        left.push("loop device".into());
    }
    for table in ["filter", "nat"] {
        let rules = Command::new("iptables")
            .args(["-w", "-t", table, "-S"])
            .output()
            .unwrap();
        if text(&rules).contains(&format!("M8T-{slot}-")) {
            left.push(format!("iptables {table} rules"));
        }
    }
    if std::fs::read_to_string(format!("{STATE}/sni-proxy.toml"))
        .unwrap()
        .contains("acme.demo.m8trx.test")
    {
        left.push("proxy route".into());
    }
    let brokered = Command::new(bin_dir().join("cred-broker"))
        .args(["admin", "--socket", &format!("{RUN}/broker.sock"), "list"])
        .output()
        .unwrap();
    assert!(brokered.status.success(), "{}", text(&brokered));
    if text(&brokered).contains("\"acme\"") {
        left.push("broker registration".into());
    }
    if !text(&brokered).contains("\"beta\"") {
        left.push("(beta's broker registration went too)".into());
    }
    for p in [format!("{RUN}/engines/acme"), format!("{RUN}/tokens/acme")] {
        if Path::new(&p).exists() {
            left.push(p);
        }
    }
    if hostd::cgroup::CgroupFs::detect()
        .unwrap()
        .tenant("acme")
        .exists()
    {
        left.push("cgroup".into());
    }
    assert!(left.is_empty(), "destroying acme left: {left:?}");
}
