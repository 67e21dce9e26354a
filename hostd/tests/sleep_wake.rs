//! Scale to zero through the real sni-proxy: a tenant with short idle windows stays awake
//! while a connection is open (a long-lived TLS session), is frozen once idle, then put to
//! sleep (engine gone); a TLS connection arriving while it is frozen or asleep is held by the
//! proxy, hostd wakes the tenant, and the client gets its ServerHello from the tenant's own
//! Caddy. `hostd ctl sleep|wake` and `list` show and drive the same; `kill -9` of hostd in the
//! middle of a wake, and of a sleep, is finished by the restarted hostd; a tenant that cannot
//! wake is put back to sleep and says why.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::proxy::{fetch_within, wait_fetch, Proxy};
use support::{env, require_root, tenant_docker, text, Cleanup, Daemon};

const FREEZE_AFTER: u64 = 6;
const SLEEP_AFTER: u64 = 14;

fn caddy_compose(host: &str, image: &str) -> String {
    let caddyfile = format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\
         \tservers :443 {{\n\t\tlistener_wrappers {{\n\t\t\tproxy_protocol {{\n\t\t\t\ttimeout 2s\n\
         \t\t\t\tallow 10.250.0.0/16\n\t\t\t}}\n\t\t\ttls\n\t\t}}\n\t}}\n}}\n\
         https://{host}:443 {{\n\ttls internal\n\trespond \"awake {host}\"\n}}\n"
    );
    serde_json::json!({
        "services": {
            "caddy": {
                "image": image,
                "entrypoint": ["/bin/sh", "-c"],
                // Markers on the volume: `broken` makes the next start fail (a wake that
                // cannot work), `slow` makes it take 3 s (a wake to kill hostd in).
                "command": ["test -f /data/broken && exit 3; test -f /data/slow && sleep 3; printf '%s' \"$$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"],
                "volumes": ["data:/data"],
                "environment": {
                    "CADDYFILE": caddyfile,
                    "HOME": "/tmp",
                    "XDG_DATA_HOME": "/tmp/data",
                    "XDG_CONFIG_HOME": "/tmp/config"
                }
            },
            // Ignores SIGTERM: stopping it takes its whole grace period (a sleep to kill
            // hostd in).
            "lingers": {
                "image": image,
                "entrypoint": ["/bin/sh", "-c"],
                "command": ["trap '' TERM; while :; do sleep 1; done"],
                "stop_grace_period": "4s"
            }
        },
        "volumes": {"data": {}}
    })
    .to_string()
}

/// The tenant's power state; `to-<state>` while a change is under way.
fn power(d: &Daemon, name: &str) -> String {
    let st = d.status(name);
    let word = st["power"].as_str().unwrap();
    match st["power_settled"].as_bool() {
        Some(false) => format!("to-{word}"),
        _ => word.to_owned(),
    }
}

/// Waits (at most `within`) until the tenant is in `want`; returns how long it took.
fn wait_power(d: &Daemon, name: &str, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = power(d, name);
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{name} still {now} after {within:?}, expected {want}: {}",
            d.status(name)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One timed request through the proxy: (seconds, body, curl's verbose output).
fn timed(proxy: &Proxy, host: &str) -> (f64, String, String) {
    let t = Instant::now();
    let (body, verbose) = fetch_within(&proxy.tls, host, 20)
        .unwrap_or_else(|| panic!("{host} did not answer through the proxy"));
    (t.elapsed().as_secs_f64(), body, verbose)
}

#[test]
fn an_idle_tenant_freezes_sleeps_and_wakes_on_a_connection() {
    require_root();
    let id = std::process::id();
    let name = format!("zz-{id}");
    let host = format!("{name}.m8trx.test");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-sleep-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = Proxy::start(&dir);
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let flags = [
        "--proxy-admin",
        proxy.admin.to_str().unwrap(),
        "--idle-interval",
        "1",
    ];
    let mut d = Daemon::start_with(&dir, &flags);
    let spec = dir.join("spec.yml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{host}]\n\
             limits: {{ cpu: 1, memory: 512Mi, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: {} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer-{name}\", external_id: ext-{name} }}\n\
             idle: {{ freeze_after: {FREEZE_AFTER}s, sleep_after: {SLEEP_AFTER}s }}\n",
            dir.join("vol.img").display()
        ),
    )
    .unwrap();
    d.ok(&["create", "-f", spec.to_str().unwrap()]);
    let image = env("M8TRX_IMAGE_CADDY");
    let tar = dir.join("caddy.tar");
    let o = Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    d.ok(&["load", &name, "-i", tar.to_str().unwrap()]);
    let file = dir.join("compose.json");
    std::fs::write(&file, caddy_compose(&host, &image)).unwrap();
    d.ok(&["deploy", &name, "-f", file.to_str().unwrap()]);
    wait_fetch(&proxy, &host);
    let (awake_s, _, _) = timed(&proxy, &host);

    // An open connection (a long-lived TLS session) keeps the tenant awake past the window.
    let port = proxy.tls.rsplit(':').next().unwrap().to_owned();
    let mut session = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", &host])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(FREEZE_AFTER + 4));
    assert_eq!(
        power(&d, &name),
        "active",
        "an open connection keeps the tenant awake"
    );
    let _ = session.kill();
    let _ = session.wait();

    // Idle: frozen after the window, its whole cgroup frozen, its engine still there.
    let frozen_in = wait_power(&d, &name, "frozen", Duration::from_secs(FREEZE_AFTER + 10));
    let st = d.status(&name);
    assert!(
        st["engine_pid"].is_u64(),
        "a frozen engine keeps running: {st}"
    );
    let state =
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/m8trx/{name}/freezer.state"))
            .unwrap();
    assert_eq!(state.trim(), "FROZEN");
    let list = d.ok(&["list"]);
    assert!(list.contains("frozen"), "{list}");

    // A request while frozen: held, thawed, answered.
    let (frozen_s, body, _) = timed(&proxy, &host);
    assert_eq!(body, format!("awake {host}"));
    assert_eq!(power(&d, &name), "active");

    // Idle again: frozen, then asleep — engine gone, memory released.
    wait_power(&d, &name, "frozen", Duration::from_secs(FREEZE_AFTER + 10));
    let asleep_in = wait_power(&d, &name, "asleep", Duration::from_secs(SLEEP_AFTER + 10));
    let st = d.status(&name);
    assert!(st["engine_pid"].is_null(), "no engine while asleep: {st}");
    let mem: u64 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/m8trx/{name}/memory.usage_in_bytes"
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    println!("sleep: asleep tenant's cgroup holds {mem} bytes");

    // A TLS connection while asleep gets its ServerHello from the tenant's own Caddy.
    let (asleep_s, body, verbose) = timed(&proxy, &host);
    assert_eq!(body, format!("awake {host}"));
    assert!(
        verbose.contains("Caddy Local Authority"),
        "the tenant's own certificate after the wake:\n{verbose}"
    );
    assert_eq!(power(&d, &name), "active");
    println!(
        "sleep: frozen after {frozen_in:?} more, asleep after {asleep_in:?} more; first request \
         {awake_s:.3} s awake, {frozen_s:.3} s from frozen, {asleep_s:.3} s from asleep"
    );

    // Several connections at once to a sleeping tenant: all held, all answered.
    d.ok(&["sleep", &name]);
    assert!(d.ok(&["list"]).contains("asleep"));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (tls, host) = (proxy.tls.clone(), host.clone());
            std::thread::spawn(move || fetch_within(&tls, &host, 20))
        })
        .collect();
    for c in clients {
        let (body, _) = c.join().unwrap().expect("a held request was answered");
        assert_eq!(body, format!("awake {host}"));
    }

    // kill -9 of hostd in the middle of a wake (a slow one: its ingress takes 3 s to
    // start): the restarted hostd finishes it.
    let caddy = format!("m8trx-{name}-caddy-1");
    let o = tenant_docker(&name, &["exec", &caddy, "touch", "/data/slow"]);
    assert!(o.status.success(), "{}", text(&o));
    d.ok(&["sleep", &name]);
    let wakes = || {
        std::fs::read_to_string(dir.join("hostd.log"))
            .unwrap()
            .matches(&format!("{name}: waking"))
            .count()
    };
    let before = wakes();
    let waker = {
        let (tls, host) = (proxy.tls.clone(), host.clone());
        std::thread::spawn(move || fetch_within(&tls, &host, 20))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while wakes() == before {
        assert!(
            Instant::now() < deadline,
            "the held connection never asked for a wake"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        power(&d, &name),
        "to-active",
        "killed in the middle of the wake"
    );
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let _ = waker.join();
    d = Daemon::start_with(&dir, &flags);
    let st = d.status(&name);
    assert_eq!(
        st["power"], "active",
        "the recorded wake was finished: {st}"
    );
    let (body, _) = wait_fetch(&proxy, &host);
    assert_eq!(body, format!("awake {host}"));
    assert!(d.status(&name)["steps_not_in_place"]
        .as_array()
        .unwrap()
        .is_empty());
    let o = tenant_docker(&name, &["exec", &caddy, "rm", "/data/slow"]);
    assert!(o.status.success(), "{}", text(&o));

    // kill -9 of hostd in the middle of a sleep (stopping `lingers` takes 4 s): the
    // restarted hostd finishes it.
    let mut sleeper = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .args(["sleep", &name])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its progress lines (stderr), as they come: read until the containers are being stopped.
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(sleeper.stderr.take().unwrap()));
    loop {
        let line = lines
            .next()
            .expect("the sleep ended before stopping anything")
            .unwrap();
        if line.contains("stopping container") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        power(&d, &name),
        "to-asleep",
        "killed in the middle of the sleep"
    );
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    drop(lines);
    let _ = sleeper.wait();
    d = Daemon::start_with(&dir, &flags);
    let st = d.status(&name);
    assert!(
        st["power"] == "asleep" && st["power_settled"] == true && st["engine_pid"].is_null(),
        "the recorded sleep was finished: {st}"
    );
    let (_, body, _) = timed(&proxy, &host);
    assert_eq!(body, format!("awake {host}"), "and it wakes again");

    // A tenant that cannot wake is put back to sleep, says why, and its held connection
    // is closed cleanly at the proxy's deadline.
    let o = tenant_docker(&name, &["exec", &caddy, "touch", "/data/broken"]);
    assert!(o.status.success(), "{}", text(&o));
    d.ok(&["sleep", &name]);
    let o = d.ctl(&["wake", &name]);
    assert!(!o.status.success(), "the wake fails: {}", text(&o));
    let st = d.status(&name);
    assert_eq!(st["power"], "asleep", "never left half up: {st}");
    assert!(st["engine_pid"].is_null(), "{st}");
    assert!(
        st["wake_error"].as_str().unwrap().contains("exit code 3"),
        "{st}"
    );
    assert!(d.ok(&["status", &name]).contains("last wake failed"));
    assert!(
        fetch_within(&proxy.tls, &host, 25).is_none(),
        "the held request is closed"
    );
    let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap();
    assert!(
        log.contains("wake_timeout") || log.contains("did not wake in time"),
        "{log}"
    );

    d.ok(&["destroy", &name, "--wipe"]);
    drop(d);
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}
