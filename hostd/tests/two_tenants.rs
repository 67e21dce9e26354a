//! Two tenants side by side on one host, driven only through `hostd serve` / `hostd ctl`,
//! as root against real engines: each tenant's container root is a different unprivileged
//! host uid; a memory hog in A is OOM-killed at A's aggregate limit (no single container
//! reaches its own) while B keeps serving; A reaches neither B's containers nor
//! 169.254.169.254, and the drops are hostd's rules; quarantine cuts A off and lifting it
//! restores it; destroy leaves nothing. Prints how long create → containers running took.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use hostd::cgroup::CgroupFs;
use support::{busybox_tarball, require_root, tenant_docker, text, write_spec, Cleanup, Daemon};

fn ip_of(tenant: &str, container: &str) -> String {
    let o = tenant_docker(
        tenant,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            container,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The host uid a container's init runs as (first field of `Uid:` in host /proc).
fn host_uid(tenant: &str, container: &str) -> u64 {
    let o = tenant_docker(tenant, &["inspect", "-f", "{{.State.Pid}}", container]);
    let pid = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// `curl` from the host (the test's own namespace) to a tenant container.
fn http_get(ip: &str) -> Option<String> {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "3", &format!("http://{ip}:8080/")])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Runs a shell line inside a tenant container; true when it exits 0.
fn exec_ok(tenant: &str, container: &str, line: &str) -> bool {
    tenant_docker(tenant, &["exec", container, "sh", "-c", line])
        .status
        .success()
}

/// Packets counted by the rule of `chain` whose text contains `needle`.
fn rule_packets(chain: &str, needle: &str) -> u64 {
    let o = Command::new("iptables")
        .args(["-w", "-L", chain, "-v", "-n", "-x"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {chain}:\n{out}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn two_tenants_are_isolated_from_each_other() {
    require_root();
    let id = std::process::id();
    let (a, b) = (format!("twa-{id}"), format!("twb-{id}"));
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-two-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![a.clone(), b.clone()],
    };
    let d = Daemon::start(&dir);
    let (image, tar) = busybox_tarball(&dir);

    let web = format!(
        "  web:\n    image: {image}\n    \
         command: [sh, -c, 'echo hello-from-$TENANT > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']\n"
    );
    // Three holders of 48 MiB each: every one far below its container's limit (the
    // tenant's 128 MiB), together above the tenant's aggregate 128 MiB.
    let hog = |n: u32| {
        format!(
            "  hog{n}:\n    image: {image}\n    \
             command: [sh, -c, 'dd if=/dev/zero bs=48M count=1 | sleep 600']\n"
        )
    };
    let compose_a = dir.join("a.yml");
    std::fs::write(
        &compose_a,
        format!(
            "services:\n{}{}{}{}",
            web.replace("$TENANT", "a"),
            hog(1),
            hog(2),
            hog(3)
        ),
    )
    .unwrap();
    let compose_b = dir.join("b.yml");
    std::fs::write(
        &compose_b,
        format!("services:\n{}", web.replace("$TENANT", "b")),
    )
    .unwrap();

    let mut timings = Vec::new();
    for (name, memory, compose) in [(&b, "256Mi", &compose_b), (&a, "128Mi", &compose_a)] {
        let spec = write_spec(&dir, name, memory);
        let t0 = Instant::now();
        d.ok(&["create", "-f", spec.to_str().unwrap()]);
        let created = t0.elapsed();
        d.ok(&["load", name, "-i", tar.to_str().unwrap()]);
        let loaded = t0.elapsed();
        d.ok(&["deploy", name, "-f", compose.to_str().unwrap()]);
        timings.push(format!(
            "{name}: create {:.1}s, image load {:.1}s, deploy {:.1}s, create -> running {:.1}s \
             without the image load",
            created.as_secs_f64(),
            (loaded - created).as_secs_f64(),
            (t0.elapsed() - loaded).as_secs_f64(),
            (t0.elapsed() - (loaded - created)).as_secs_f64(),
        ));
    }
    println!("{}", timings.join("\n"));
    let (a_web, b_web) = (format!("m8trx-{a}-web-1"), format!("m8trx-{b}-web-1"));
    let (a_ip, b_ip) = (ip_of(&a, &a_web), ip_of(&b, &b_web));
    assert_eq!(http_get(&b_ip).as_deref(), Some("hello-from-b"));
    assert_eq!(http_get(&a_ip).as_deref(), Some("hello-from-a"));

    // Container root is each tenant's own unprivileged host uid.
    let (uid_a, uid_b) = (host_uid(&a, &a_web), host_uid(&b, &b_web));
    assert_eq!(
        uid_a,
        u64::from(support::subuid_base(&a)),
        "A's root is A's first subordinate uid"
    );
    assert_eq!(
        uid_b,
        u64::from(support::subuid_base(&b)),
        "B's root is B's first subordinate uid"
    );
    assert_ne!(uid_a, uid_b);
    assert!(uid_a >= 100_000 && uid_b >= 100_000, "{uid_a} {uid_b}");

    // The hogs: the kernel kills in A's cgroup at A's aggregate limit; B never notices.
    let cg = CgroupFs::detect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cg.tenant(&a).oom_kills().unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "no OOM kill in A's cgroup within 60 s"
        );
        assert_eq!(
            http_get(&b_ip).as_deref(),
            Some("hello-from-b"),
            "B serves while A is under pressure"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cg.tenant(&b).oom_kills().unwrap(), 0, "nothing killed in B");
    assert_eq!(http_get(&b_ip).as_deref(), Some("hello-from-b"));
    for n in 1..=3 {
        let o = tenant_docker(
            &a,
            &[
                "inspect",
                "-f",
                "{{.State.OOMKilled}}",
                &format!("m8trx-{a}-hog{n}-1"),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "false",
            "no hog hit its own container limit: the aggregate one killed"
        );
    }

    // A reaches its own service, not B's containers and not the metadata service; the
    // drops are counted by hostd's rules in A's chain.
    let slot_a = d.status(&a)["slot"].as_u64().unwrap();
    let fwd_a = format!("M8T-{slot_a}-FWD");
    assert!(
        exec_ok(&a, &a_web, "nc -w 3 web 8080 </dev/null"),
        "A reaches its own web"
    );
    let (tenants0, imds0) = (
        rule_packets(&fwd_a, "10.250.0.0/16"),
        rule_packets(&fwd_a, "169.254.169.254"),
    );
    assert!(
        !exec_ok(&a, &a_web, &format!("nc -w 3 {b_ip} 8080 </dev/null")),
        "A must not reach B's web"
    );
    assert!(
        !exec_ok(&a, &a_web, "nc -w 3 169.254.169.254 80 </dev/null"),
        "A must not reach the instance metadata service"
    );
    assert!(
        rule_packets(&fwd_a, "10.250.0.0/16") > tenants0,
        "dropped by A's tenant rule"
    );
    assert!(
        rule_packets(&fwd_a, "169.254.169.254") > imds0,
        "dropped by A's IMDS rule"
    );

    // Quarantine cuts A off (the host no longer reaches it); B is untouched; lifting restores.
    d.ok(&["quarantine", &a]);
    assert_eq!(http_get(&a_ip), None, "quarantined A is cut off");
    assert_eq!(http_get(&b_ip).as_deref(), Some("hello-from-b"));
    let o = tenant_docker(&a, &["inspect", "-f", "{{.State.Running}}", &a_web]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "true",
        "kept for forensics"
    );
    d.ok(&["quarantine", &a, "--lift"]);
    assert_eq!(http_get(&a_ip).as_deref(), Some("hello-from-a"));

    for name in [&a, &b] {
        d.ok(&["destroy", name, "--wipe"]);
        assert_eq!(
            d.ctl(&["status", name]).status.code(),
            Some(4),
            "no such tenant"
        );
        assert!(!cg.tenant(name).exists(), "{name}: cgroup removed");
        assert!(
            !std::path::Path::new(&format!("{}/{name}", support::RUN_ROOT)).exists(),
            "{name}: engine run directory removed"
        );
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        assert!(
            !passwd.contains(&format!("m8t-{name}:")),
            "{name}: user removed"
        );
    }
    for chain in [format!("M8T-{slot_a}-FWD"), format!("M8T-{slot_a}-IN")] {
        let o = Command::new("iptables")
            .args(["-w", "-n", "-L", &chain])
            .output()
            .unwrap();
        assert!(!o.status.success(), "chain {chain} removed");
    }
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
