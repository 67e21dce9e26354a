//! The tailscale sidecar contract, with the locally built stand-in image (no tailscaled can
//! be installed here; production runs the official image): each agent tenant's project gets
//! the `tailscale` service with its auth key from the tenant's `tailscale-auth-key`
//! parameter (as a file, never in the container's configuration), hostname
//! `<host-id>-<name>`, userspace networking and no added capability, the advertised tag and
//! flags, state in a named volume on the tenant volume, and its own network namespace; one
//! tenant's sidecar cannot reach the other's.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{busybox_tarball, env, require_root, tenant_docker, text, Cleanup, Daemon};

fn put_auth_key(name: &str) {
    let script = r#"
import sys, boto3
ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=sys.argv[1],
                   aws_access_key_id="AKIDCONTROL", aws_secret_access_key="control")
name = sys.argv[2]
for leaf in ["brain-key", "brain-customer-id", "brain-url", "tailscale-auth-key",
             "agent-fetch-pat", "agent-ui-password"]:
    ssm.put_parameter(Name=f"/m8trx/{name}/{leaf}", Value=f"tskey-{name}-{leaf}",
                      Type="SecureString", Overwrite=True)
"#;
    let o = Command::new(env("M8TRX_PYTHON"))
        .args(["-c", script, &env("M8TRX_MOTO_ENDPOINT"), name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn sha16(s: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" | sha256sum | cut -c1-16", "sh", s])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn sidecar_report(name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = text(&tenant_docker(
            name,
            &["logs", &format!("m8trx-{name}-tailscale-1")],
        ));
        if out.contains("standin up") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar of {name} did not come up: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

#[test]
fn agent_tenants_get_an_isolated_sidecar_with_the_contract() {
    require_root();
    let id = std::process::id();
    let names = [format!("tsa-{id}"), format!("tsb-{id}")];
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-tailscale-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: names.to_vec(),
    };
    let d = Daemon::start_with(
        &dir,
        &[
            "--secrets",
            "ssm",
            "--aws-endpoint",
            &env("M8TRX_MOTO_ENDPOINT"),
            "--host-id",
            "host-7",
            "--tailscale-image",
            &env("M8TRX_IMAGE_TAILSCALE"),
        ],
    );
    let (image, tar) = busybox_tarball(&dir);
    let ts_tar = dir.join("tailscale.tar");
    let o = Command::new("docker")
        .args(["save", "-o"])
        .arg(&ts_tar)
        .arg(env("M8TRX_IMAGE_TAILSCALE"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for name in &names {
        put_auth_key(name);
        let spec = dir.join(format!("{name}.yml"));
        std::fs::write(
            &spec,
            format!(
                "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{name}.m8trx.test]\n\
                 limits: {{ cpu: 0.5, memory: 256Mi, pids: 256, disk: 1Gi }}\n\
                 volume: {{ loop_image: {} }}\n\
                 role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer-{name}\", external_id: ext-{name} }}\n",
                dir.join(format!("{name}.img")).display()
            ),
        )
        .unwrap();
        d.ok(&["create", "-f", spec.to_str().unwrap()]);
        d.ok(&["load", name, "-i", tar.to_str().unwrap()]);
        d.ok(&["load", name, "-i", ts_tar.to_str().unwrap()]);
        let compose = dir.join(format!("{name}-compose.yml"));
        std::fs::write(
            &compose,
            format!("services:\n  app:\n    image: {image}\n    command: [sleep, '600']\n"),
        )
        .unwrap();
        let out = d.ok(&["deploy", name, "-f", compose.to_str().unwrap()]);
        assert!(out.contains(&format!("m8trx-{name}-tailscale-1")), "{out}");
    }

    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut netns = Vec::new();
    for name in &names {
        let r = sidecar_report(name);
        assert_eq!(field(&r, "hostname"), format!("host-7-{name}"), "{r}");
        assert_eq!(field(&r, "userspace"), "true");
        assert_eq!(field(&r, "authkey"), "readable");
        assert_eq!(
            field(&r, "authkey_sha"),
            sha16(&format!("tskey-{name}-tailscale-auth-key"))
        );
        assert_eq!(field(&r, "state"), "written");
        assert!(r.contains(&format!(
            "extra_args=--advertise-tags=tag:m8trx-cust-{name} --ssh=false --accept-dns=false --accept-routes=false"
        )), "{r}");
        assert!(
            r.contains("CapEff:\t0000000000000000"),
            "no capability: {r}"
        );
        let ns = field(&r, "netns").to_owned();
        assert_ne!(
            ns,
            host_netns.to_string_lossy(),
            "own network namespace, not the host's"
        );
        netns.push(ns);
        // The key is a file reference, never a value in the container's configuration.
        let inspect = text(&tenant_docker(
            name,
            &["inspect", &format!("m8trx-{name}-tailscale-1")],
        ));
        assert!(
            !inspect.contains(&format!("tskey-{name}")),
            "auth key value in the config"
        );
        assert!(inspect.contains("file:/run/secrets/m8trx/tailscale-auth-key"));
        // State lives in the named volume inside the engine's data root on the tenant volume.
        let found = Command::new("find")
            .arg(dir.join("tenants").join(name).join("engine"))
            .args(["-name", "tailscaled.state", "-path", "*tailscale-state*"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&found.stdout).trim().is_empty(),
            "state on the tenant volume: {}",
            text(&found)
        );
    }
    assert_ne!(netns[0], netns[1], "each sidecar has its own namespace");

    // One tenant's sidecar cannot reach the other's (dropped by hostd's tenant rule).
    let ip_of = |name: &str| {
        String::from_utf8_lossy(
            &tenant_docker(
                name,
                &[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    &format!("m8trx-{name}-tailscale-1"),
                ],
            )
            .stdout,
        )
        .trim()
        .to_owned()
    };
    let b_ip = ip_of(&names[1]);
    let slot_a = d.status(&names[0])["slot"].as_u64().unwrap();
    let count = || {
        let o = Command::new("iptables")
            .args(["-w", "-L", &format!("M8T-{slot_a}-FWD"), "-v", "-n", "-x"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains("10.250.0.0/16"))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = count();
    let o = tenant_docker(
        &names[0],
        &[
            "exec",
            &format!("m8trx-{}-tailscale-1", names[0]),
            "nc",
            "-w",
            "3",
            &b_ip,
            "41641",
        ],
    );
    assert!(!o.status.success());
    assert!(count() > before, "dropped by A's tenant rule");

    for name in &names {
        d.ok(&["destroy", name, "--wipe"]);
    }
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
