//! Tenants are independent of each other on one `hostd serve`, end to end through
//! `hostd ctl`:
//! - tenant A's deploy waiting on a slow healthcheck holds only A: `status B`, `stop B`
//!   and `create C` complete while A's deploy is still running, and `status A` shows the
//!   revision being deployed;
//! - a corrupt tenant record is set aside (listed as `broken: <reason>`, its `status`
//!   exits 5 naming the file) and every other tenant keeps working;
//! - the deployed compose file is recorded: when a tenant's containers are lost while
//!   hostd is down, the restarted hostd redeploys exactly the recorded revision.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{busybox_tarball, require_root, tenant_docker, text, write_spec, Cleanup, Daemon};

fn running(tenant: &str, container: &str) -> bool {
    let o = tenant_docker(tenant, &["inspect", "-f", "{{.State.Running}}", container]);
    String::from_utf8_lossy(&o.stdout).trim() == "true"
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_tenant_never_holds_another() {
    require_root();
    let id = std::process::id();
    let [a, b, c] = ["a", "b", "c"].map(|t| format!("ind{t}-{id}"));
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-ind-{id}"));
    std::fs::create_dir_all(dir.join("state/tenants")).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![a.clone(), b.clone(), c.clone()],
    };
    // A record no hostd could have written (writes are atomic): a hand edit gone wrong.
    let broken = dir.join("state/tenants/broken-rec.json");
    std::fs::write(&broken, b"{\"spec\": {\"name\": \"broken-rec\", truncated").unwrap();

    let mut d = Daemon::start(&dir);
    let o = d.ctl(&["list"]);
    assert!(
        o.status.success(),
        "list with a corrupt record: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("broken-rec") && text(&o).contains("broken: "),
        "{}",
        text(&o)
    );
    let o = d.ctl(&["status", "broken-rec"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        text(&o).contains("broken-rec.json"),
        "names the file: {}",
        text(&o)
    );

    for t in [&a, &b] {
        let spec = write_spec(&dir, t, "256Mi");
        d.ok(&["create", "-f", spec.to_str().unwrap()]);
    }
    let (image, tar) = busybox_tarball(&dir);
    for t in [&a, &b] {
        d.ok(&["load", t, "-i", tar.to_str().unwrap()]);
    }
    let simple = dir.join("simple.yml");
    std::fs::write(
        &simple,
        format!("services:\n  app:\n    image: {image}\n    command: [sleep, '600']\n"),
    )
    .unwrap();
    let out = d.ok(&["deploy", &b, "-f", simple.to_str().unwrap()]);
    assert!(out.contains("revision: 1"), "{out}");

    // A's `web` waits until `slow` is healthy, and `slow` is healthy only once this test
    // says so (the file): A's deploy is in progress for as long as the test needs.
    let slow = dir.join("slow.yml");
    std::fs::write(
        &slow,
        format!(
            "services:\n  slow:\n    image: {image}\n    command: [sleep, '600']\n    \
             healthcheck: {{ test: [CMD, test, -f, /tmp/ready], interval: 1s, retries: 3, start_period: 10m }}\n  \
             web:\n    image: {image}\n    command: [sleep, '600']\n    \
             depends_on: {{ slow: {{ condition: service_healthy }} }}\n"
        ),
    )
    .unwrap();
    let mut deploy_a = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .args(["deploy", &a, "-f", slow.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let slow_c = format!("m8trx-{a}-slow-1");
    wait_until(60, "A's slow container runs", || running(&a, &slow_c));
    let st = d.status(&a);
    assert_eq!(st["deployment"]["revision"], 1, "{st}");
    assert!(
        st["deployment"]["deployed_at"].is_null(),
        "still deploying: {st}"
    );

    // Everything about B and C completes while A's deploy waits.
    assert_eq!(d.status(&b)["desired"], "present");
    d.ok(&["stop", &b]);
    assert!(d.status(&b)["engine_pid"].is_null(), "B stopped");
    let spec_c = write_spec(&dir, &c, "256Mi");
    let out = d.ok(&["create", "-f", spec_c.to_str().unwrap()]);
    assert!(out.contains(&format!("{c}: provisioned")), "{out}");
    assert!(
        deploy_a.try_wait().unwrap().is_none(),
        "A's deploy is still waiting on its healthcheck: B and C did not wait for it"
    );

    // A's deploy finishes once its dependency is healthy.
    let o = tenant_docker(&a, &["exec", &slow_c, "touch", "/tmp/ready"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = deploy_a.wait_with_output().unwrap();
    assert!(o.status.success(), "A's deploy: {}", text(&o));
    assert!(running(&a, &format!("m8trx-{a}-web-1")));
    let st = d.status(&a);
    assert!(st["deployment"]["deployed_at"].is_u64(), "{st}");
    assert_eq!(st["steps_not_in_place"], serde_json::json!([]), "{st}");

    // B's containers are lost while hostd is down; the restarted hostd redeploys B's
    // recorded revision (after resuming it: `start` first, as the operator would).
    d.ok(&["start", &b]);
    let app_b = format!("m8trx-{b}-app-1");
    assert!(running(&b, &app_b));
    let before = tenant_docker(&b, &["inspect", "-f", "{{.Id}}", &app_b]);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let o = tenant_docker(&b, &["rm", "-f", &app_b]);
    assert!(o.status.success(), "{}", text(&o));
    drop(d);
    let d = Daemon::start(&dir);
    wait_until(60, "B's app redeployed", || running(&b, &app_b));
    let after = tenant_docker(&b, &["inspect", "-f", "{{.Id}}", &app_b]);
    assert_ne!(
        before.stdout, after.stdout,
        "a new container, from the record"
    );
    let log = std::fs::read_to_string(dir.join("hostd.log")).unwrap();
    assert!(
        log.contains(&format!(
            "{b}: redeploying revision 1: no container for app"
        )),
        "the reconcile says what it redeploys"
    );
    let st = d.status(&b);
    assert_eq!(st["deployment"]["revision"], 1, "{st}");
    let o = d.ctl(&["status", &b]);
    assert!(
        text(&o).contains("deployment: revision 1, accepted "),
        "{}",
        text(&o)
    );

    for t in [&a, &b, &c] {
        d.ok(&["destroy", t, "--wipe"]);
    }
    assert!(
        broken.exists(),
        "hostd never deletes a record it cannot read"
    );
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
