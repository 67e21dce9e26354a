//! hostd drives the real sni-proxy: after a deploy the tenant's subdomain routes through
//! the proxy to the tenant's own Caddy in its engine (passthrough: Caddy's own certificate
//! reaches the client, and the PROXY v2 header lets Caddy see the real client address);
//! a changed file redeploys the ingress start-first with requests flowing through the proxy
//! the whole time, none failed; stop, quarantine and destroy take the route away, start and
//! lifting the quarantine put it back.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::proxy::{fetch, fetch_at, wait_fetch, Proxy};
use support::{env, require_root, text, Cleanup, Daemon};

#[test]
fn deployed_tenant_is_reachable_through_the_proxy_only_while_it_should_be() {
    require_root();
    let id = std::process::id();
    let name = format!("prx-{id}");
    let host = format!("{name}.m8trx.test");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-proxy-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = Proxy::start(&dir);
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let d = Daemon::start_with(&dir, &["--proxy-admin", proxy.admin.to_str().unwrap()]);
    let spec = dir.join("spec.yml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{host}]\n\
             limits: {{ cpu: 1, memory: 512Mi, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: {} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer-{name}\", external_id: ext-{name} }}\n",
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

    // The tenant's own Caddy: its own (internal CA) certificate, PROXY v2 from the host side.
    let compose_for = |greeting: &str| {
        let caddyfile = format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\
         \tservers :443 {{\n\t\tlistener_wrappers {{\n\t\t\tproxy_protocol {{\n\t\t\t\ttimeout 2s\n\
         \t\t\t\tallow 10.250.0.0/16\n\t\t\t}}\n\t\t\ttls\n\t\t}}\n\t}}\n}}\n\
         https://{host}:443 {{\n\ttls internal\n\trespond \"{greeting}-from-{name} client={{remote_host}}\"\n}}\n"
        );
        serde_json::json!({
        "services": {
            "caddy": {
                "image": image,
                "entrypoint": ["/bin/sh", "-c"],
                "command": ["printf '%s' \"$$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"],
                "environment": {
                    "CADDYFILE": caddyfile,
                    "HOME": "/tmp",
                    "XDG_DATA_HOME": "/tmp/data",
                    "XDG_CONFIG_HOME": "/tmp/config"
                }
            }
        }
        })
    };
    let file = dir.join("compose.json");
    std::fs::write(&file, compose_for("hello").to_string()).unwrap();
    let out = d.ok(&["deploy", &name, "-f", file.to_str().unwrap()]);
    assert!(out.contains(&format!("route {host} -> 10.250.")), "{out}");

    let (body, verbose) = wait_fetch(&proxy, &host);
    assert_eq!(
        body,
        format!("hello-from-{name} client=127.0.0.1"),
        "Caddy sees the real client"
    );
    assert!(
        verbose.contains("Caddy Local Authority"),
        "the tenant's own certificate reached the client:\n{verbose}"
    );

    // Zero-downtime redeploy: a changed file, requests flowing through the proxy all along.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let loader = {
        let (stop, seen, host) = (stop.clone(), seen.clone(), host.clone());
        let tls = proxy.tls.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = fetch_at(&tls, &host).map(|(body, _)| body);
                seen.lock().unwrap().push(r);
            }
        })
    };
    let count = |pred: &dyn Fn(&Option<String>) -> bool| {
        seen.lock().unwrap().iter().filter(|r| pred(r)).count()
    };
    let until = |what: &str, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !pred() {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("requests before the redeploy", &|| {
        count(&|r| r.is_some()) >= 5
    });
    std::fs::write(&file, compose_for("v2").to_string()).unwrap();
    let out = d.ok(&["deploy", &name, "-f", file.to_str().unwrap()]);
    assert!(out.contains("start-first"), "{out}");
    let v2 = format!("v2-from-{name}");
    until("requests answered by the new container", &|| {
        count(&|r| r.as_deref().is_some_and(|b| b.starts_with(&v2))) >= 5
    });
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    let all = seen.lock().unwrap().clone();
    let failed = all.iter().filter(|r| r.is_none()).count();
    let old = all
        .iter()
        .filter(|r| r.as_deref().is_some_and(|b| b.starts_with("hello-from-")))
        .count();
    let new = all
        .iter()
        .filter(|r| r.as_deref().is_some_and(|b| b.starts_with(&v2)))
        .count();
    println!("redeploy through sni-proxy: {} requests, {old} answered by the old container, {new} by the new, {failed} failed", all.len());
    assert_eq!(failed, 0, "requests failed during the redeploy: {all:?}");
    assert_eq!(
        old + new,
        all.len(),
        "every answer came from one of the two: {all:?}"
    );
    assert!(old > 0 && new > 0);

    // stop takes the route away, start brings it back (at the container's new address).
    d.ok(&["stop", &name]);
    assert!(
        !proxy.route_names().contains(&host),
        "no route while stopped"
    );
    assert!(fetch(&proxy, &host).is_none());
    d.ok(&["start", &name]);
    assert!(proxy.route_names().contains(&host));
    wait_fetch(&proxy, &host);

    // quarantine: no route (and no network); lifting restores both.
    d.ok(&["quarantine", &name]);
    assert!(
        !proxy.route_names().contains(&host),
        "no route while quarantined"
    );
    d.ok(&["quarantine", &name, "--lift"]);
    let (body, _) = wait_fetch(&proxy, &host);
    assert!(body.starts_with(&v2), "the redeployed file serves: {body}");

    d.ok(&["destroy", &name, "--wipe"]);
    assert!(
        !proxy.route_names().contains(&host),
        "route removed with the tenant"
    );
    drop(d);
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}
