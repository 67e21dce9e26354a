//! hostd wires a tenant to the real credential broker: registration with the tenant's role,
//! external id and subnet, a token file owned by the tenant's remapped root, and on every
//! container the two variables AWS SDKs read. boto3 inside a tenant container, unchanged,
//! gets the customer role's credentials through the broker at 169.254.170.23 (a host
//! address on a test-made link, as production's dummy interface); moto confirms whose they
//! are. The broker then restarts (it keeps no state): hostd re-registers the tenant and
//! mints a new token within seconds, and the container gets credentials again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{env, require_root, tenant_docker, text, Cleanup, Daemon};

const LINK_LOCAL: &str = "169.254.170.23";

/// The test's host link carrying the broker address; removed on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A running cred-broker, killed on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(dir: &Path, port: u16, admin: &Path) -> Broker {
    let _ = std::fs::remove_file(admin);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .unwrap();
    let child = Command::new(support::workspace_binary("cred-broker"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", dir)
        .env("AWS_ACCESS_KEY_ID", "AKIDM8TRXHOSTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "host-secret-not-for-tenants")
        .args(["serve", "--listen", &format!("{LINK_LOCAL}:{port}")])
        .arg("--admin-socket")
        .arg(admin)
        .args([
            "--sts-endpoint",
            &env("M8TRX_MOTO_ENDPOINT"),
            "--region",
            "us-east-1",
        ])
        .args(["--host-id", "m8trx-host-test"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin.exists() || std::net::TcpStream::connect((LINK_LOCAL, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cred-broker did not come up; see {}",
            dir.join("broker.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker(child)
}

const SCRIPT: &str = r#"
import json, os, boto3
c = boto3.session.Session().get_credentials()
f = c.get_frozen_credentials()
print(json.dumps({"method": c.method, "akid": f.access_key, "secret": f.secret_key,
                  "token": f.token, "vars": sorted(k for k in os.environ if k.startswith("AWS_"))}))
"#;

/// Runs the app container once more and returns the JSON line it printed.
fn credentials_seen(name: &str) -> serde_json::Value {
    let container = format!("m8trx-{name}-app-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = tenant_docker(name, &["wait", &container]);
        assert!(o.status.success(), "{}", text(&o));
        let logs = tenant_docker(name, &["logs", "--tail", "1", &container]);
        let out = text(&logs);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(out.trim()) {
            return v;
        }
        assert!(Instant::now() < deadline, "no credentials line: {out}");
        std::thread::sleep(Duration::from_millis(500));
        tenant_docker(name, &["start", &container]);
    }
}

/// GetCallerIdentity against moto with credentials a container printed.
fn caller_arn(v: &serde_json::Value) -> String {
    let check = r#"
import sys, boto3
sts = boto3.client("sts", region_name="us-east-1", endpoint_url=sys.argv[1],
                   aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
                   aws_session_token=sys.argv[4])
print(sts.get_caller_identity()["Arn"])
"#;
    run(Command::new(env("M8TRX_PYTHON")).args([
        "-c",
        check,
        &env("M8TRX_MOTO_ENDPOINT"),
        v["akid"].as_str().unwrap(),
        v["secret"].as_str().unwrap(),
        v["token"].as_str().unwrap(),
    ]))
    .trim()
    .to_owned()
}

#[test]
fn tenant_containers_get_the_customer_role_through_the_broker() {
    require_root();
    let id = std::process::id();
    let name = format!("brk-{id}");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-broker-{id}"));
    std::fs::create_dir_all(&dir).unwrap();

    // The broker address on a host link the test made (veth: this kernel has no dummy driver).
    let link = Link(format!("m8tbw{}", id % 1_000_000));
    let dummy = Command::new("ip")
        .args(["link", "add", &link.0, "type", "dummy"])
        .output()
        .unwrap();
    if !dummy.status.success() {
        let peer = format!("m8tbx{}", id % 1_000_000);
        run(Command::new("ip").args([
            "link", "add", &link.0, "type", "veth", "peer", "name", &peer,
        ]));
        run(Command::new("ip").args(["link", "set", &peer, "up"]));
    }
    run(Command::new("ip").args(["addr", "add", &format!("{LINK_LOCAL}/32"), "dev", &link.0]));
    run(Command::new("ip").args(["link", "set", &link.0, "up"]));
    let port = std::net::TcpListener::bind((LINK_LOCAL, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = dir.join("broker-admin.sock");
    let broker = start_broker(&dir, port, &admin);

    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let d = Daemon::start_with(
        &dir,
        &[
            "--broker",
            LINK_LOCAL,
            "--broker-port",
            &port.to_string(),
            "--broker-admin",
            admin.to_str().unwrap(),
            "--token-dir",
            dir.join("tokens").to_str().unwrap(),
        ],
    );
    let spec = dir.join("spec.yml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ cpu: 1, memory: 512Mi, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: /var/lib/m8trx-e2e/{name}.img }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer-{name}\", external_id: ext-{name} }}\n"
        ),
    )
    .unwrap();
    d.ok(&["create", "-f", spec.to_str().unwrap()]);

    // The token file: owned by the tenant's remapped root, readable by nobody else.
    let token = dir.join("tokens").join(&name).join("token");
    let meta = std::fs::metadata(&token).unwrap();
    let base = support::subuid_base(&name);
    assert_eq!((meta.uid(), meta.gid()), (base, base));
    assert_eq!(meta.mode() & 0o777, 0o400);

    let image = env("M8TRX_IMAGE_PYTHON");
    let tar = dir.join("python.tar");
    run(Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(&image));
    d.ok(&["load", &name, "-i", tar.to_str().unwrap()]);
    std::fs::remove_file(&tar).unwrap();
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  app:\n    image: {image}\n    command: [python3, -c, {script:?}]\n    \
             environment: {{ HOME: /tmp, AWS_CONTAINER_CREDENTIALS_FULL_URI: http://attacker.example/ }}\n",
            script = SCRIPT.replace('$', "$$")
        ),
    )
    .unwrap();
    d.ok(&["deploy", &name, "-f", compose.to_str().unwrap()]);

    let v = credentials_seen(&name);
    assert_eq!(v["method"], "container-role", "{v}");
    assert_eq!(
        v["vars"],
        serde_json::json!([
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI"
        ]),
        "hostd's two variables, the file's own override gone: {v}"
    );
    let expected =
        format!("arn:aws:sts::123456789012:assumed-role/m8trx-customer-{name}/m8trx-{name}");
    assert_eq!(caller_arn(&v), expected);

    // The broker restarts and forgets everything; hostd's supervisor re-registers the tenant
    // and writes a new token, and the same container gets credentials again.
    let before = std::fs::read(&token).unwrap();
    drop(broker);
    let _broker = start_broker(&dir, port, &admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&token).unwrap() == before {
        assert!(
            Instant::now() < deadline,
            "hostd did not re-register the tenant with the restarted broker; see {}",
            dir.join("hostd.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tenant_docker(&name, &["start", &format!("m8trx-{name}-app-1")]);
    let v = credentials_seen(&name);
    assert_eq!(caller_arn(&v), expected, "{v}");

    // Quarantine takes the tenant's registration and token away; lifting gives new ones.
    d.ok(&["quarantine", &name]);
    assert!(!token.exists(), "no token while quarantined");
    let known = run(Command::new(support::workspace_binary("cred-broker"))
        .args(["admin", "--socket"])
        .arg(&admin)
        .arg("list"));
    assert!(!known.contains(&name), "broker forgot the tenant: {known}");
    d.ok(&["quarantine", &name, "--lift"]);
    assert!(token.exists(), "token back after the quarantine");

    d.ok(&["destroy", &name, "--wipe"]);
    assert!(!token.parent().unwrap().exists(), "token directory removed");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
