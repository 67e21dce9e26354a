//! Production's path: boto3 inside a container on a tenant-like docker bridge reaches the
//! broker at 169.254.170.23 (a dummy interface on the host, as on a shared host), with only the
//! two container-credentials variables set, and uses the credentials against moto. Another
//! tenant's token from the same container is refused with 403.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use cred_broker::write_token_file;

/// The EKS Pod Identity address SDKs accept over plain HTTP; production's listen address.
const LINK_LOCAL: &str = "169.254.170.23";

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?")
        .to_owned();
    assert_eq!(
        uid, "0",
        "this test creates a dummy interface and a docker network: run it as root (make test)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The test's dummy interface and docker network; removed on drop whatever happened.
struct HostNet {
    link: String,
    network: String,
    container: String,
}

impl Drop for HostNet {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_in_a_bridged_container_gets_credentials_from_169_254_170_23() {
    require_root();
    let image = env("M8TRX_IMAGE_PYTHON");
    env("DOCKER_HOST");
    let pid = std::process::id();
    let net = HostNet {
        link: format!("m8tbrk{}", pid % 1_000_000),
        network: format!("m8trx-broker-test-{pid}"),
        container: format!("m8trx-broker-test-{pid}"),
    };
    // A dummy interface as in production; kernels built without the dummy driver (this
    // sandbox's) get a veth pair instead, which carries a host address just the same.
    let dummy = Command::new("ip")
        .args(["link", "add", &net.link, "type", "dummy"])
        .output()
        .unwrap();
    if !dummy.status.success() {
        let peer = format!("m8tbrp{}", pid % 1_000_000);
        run(Command::new("ip").args([
            "link", "add", &net.link, "type", "veth", "peer", "name", &peer,
        ]));
        run(Command::new("ip").args(["link", "set", &peer, "up"]));
    }
    run(Command::new("ip").args(["addr", "add", &format!("{LINK_LOCAL}/32"), "dev", &net.link]));
    run(Command::new("ip").args(["link", "set", &net.link, "up"]));
    run(Command::new("docker").args(["network", "create", "--driver", "bridge", &net.network]));
    let subnet = run(Command::new("docker").args([
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        &net.network,
    ]))
    .trim()
    .to_owned();
    let ll: IpAddr = LINK_LOCAL.parse().unwrap();

    // STS (our own moto) and the broker both on the link-local address, as the container sees them.
    let moto = OwnMoto::start_on(ll, 0).await;
    let broker = Broker::start(ll, &moto.endpoint(), &[]).await;
    let (_, acme) = broker
        .onboard(&tenant("acme", &subnet), Duration::from_secs(3600))
        .await;
    let (_, other) = broker
        .onboard(&tenant("other", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let secrets = broker.dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    write_token_file(&secrets.join("broker-token"), &acme, None).unwrap();
    write_token_file(&secrets.join("other-token"), &other, None).unwrap();

    let script = r#"
import json, os, sys, urllib.error, urllib.request
import boto3
s = boto3.session.Session()
c = s.get_credentials()
arn = s.client("sts", region_name="us-east-1", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"]
req = urllib.request.Request(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                             headers={"Authorization": open("/run/secrets/m8trx/other-token").read()})
try:
    urllib.request.urlopen(req, timeout=5)
    other = {"status": 200}
except urllib.error.HTTPError as e:
    other = {"status": e.code, "body": json.loads(e.read())}
print(json.dumps({"method": c.method, "arn": arn, "other": other,
                  "aws_vars": sorted(k for k in os.environ if k.startswith("AWS_"))}))
"#;
    let out = run(Command::new("docker")
        .args([
            "run",
            "--rm",
            "--name",
            &net.container,
            "--network",
            &net.network,
        ])
        .arg("-v")
        .arg(format!("{}:/run/secrets/m8trx:ro", secrets.display()))
        .args([
            "-e",
            &format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{}/v1/credentials",
                broker.addr
            ),
        ])
        .args([
            "-e",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/secrets/m8trx/broker-token",
        ])
        .args(["-e", "HOME=/root"])
        .args([image.as_str(), "python3", "-c", script, &moto.endpoint()]));
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        v["aws_vars"],
        serde_json::json!([
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI"
        ])
    );
    assert_eq!(v["method"], "container-role", "{v}");
    assert_eq!(v["arn"], assumed_arn("acme").as_str(), "{v}");
    assert_eq!(v["other"]["status"], 403, "{v}");
    assert_eq!(v["other"]["body"]["code"], "ForbiddenSource", "{v}");

    // The broker saw the container's bridge address, inside the tenant's subnet.
    let subnet: ipnet::IpNet = subnet.parse().unwrap();
    let audit = broker.audit_lines();
    let ok = audit
        .iter()
        .find(|a| a["tenant"] == "acme" && a["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no ok audit line: {audit:?}"));
    let src: IpAddr = ok["source"].as_str().unwrap().parse().unwrap();
    assert!(subnet.contains(&src), "source {src} outside {subnet}");
    assert!(audit.iter().any(|a| a["tenant"] == "other"
        && a["outcome"] == "wrong_source"
        && a["source"] == src.to_string()));
}
