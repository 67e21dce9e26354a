//! A live tenant moves between two hosts on this machine: two `hostd serve` instances with
//! separate roots, each behind its own sni-proxy, the tenant's volume (a loop image here, an
//! EBS volume in production) handed from one to the other while requests flow. The steps
//! are control's: destroy on the source without wiping (the volume is released, its data
//! kept), create on the target with the same spec (the volume is taken over: its files
//! shifted into the target's id range for the tenant, its recorded deployment adopted and
//! run from the images on it), and only once the target answers does the client's "DNS"
//! (here: which proxy it asks) switch. Measures the downtime; checks the data is identical.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::proxy::{fetch_path, Proxy};
use support::{require_root, Cleanup, Daemon};

fn caddy_compose(host: &str, image: &str) -> String {
    let caddyfile = format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\
         \tservers :443 {{\n\t\tlistener_wrappers {{\n\t\t\tproxy_protocol {{\n\t\t\t\ttimeout 2s\n\
         \t\t\t\tallow 10.250.0.0/16\n\t\t\t}}\n\t\t\ttls\n\t\t}}\n\t}}\n}}\n\
         https://{host}:443 {{\n\ttls internal\n\troot * /data\n\tfile_server\n}}\n"
    );
    serde_json::json!({
        "services": {
            "caddy": {
                "image": image,
                "entrypoint": ["/bin/sh", "-c"],
                "command": ["printf '%s' \"$$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"],
                "volumes": ["data:/data"],
                "environment": {
                    "CADDYFILE": caddyfile,
                    "HOME": "/tmp",
                    "XDG_DATA_HOME": "/tmp/data",
                    "XDG_CONFIG_HOME": "/tmp/config"
                }
            }
        },
        "volumes": {"data": {}}
    })
    .to_string()
}

fn spec(dir: &Path, name: &str, host: &str, image: &Path) -> PathBuf {
    let spec = dir.join(format!("{name}.yml"));
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{host}]\n\
             limits: {{ cpu: 1, memory: 512Mi, pids: 256, disk: 1Gi }}\n\
             volume: {{ loop_image: {} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer-{name}\", external_id: ext-{name} }}\n",
            image.display()
        ),
    )
    .unwrap();
    spec
}

/// The tenant's `data` volume on a host: `<tenants>/<name>/engine/<base>.<base>/volumes/…`.
fn data_dir(tenants: &Path, name: &str) -> PathBuf {
    let engine = tenants.join(name).join("engine");
    let remapped = std::fs::read_dir(&engine)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains('.'))
        .unwrap_or_else(|| panic!("no remapped data directory in {}", engine.display()));
    remapped
        .join("volumes")
        .join(format!("m8trx-{name}_data"))
        .join("_data")
}

/// sha256 of every file in `dir`, by name.
fn checksums(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let o = Command::new("sha256sum").arg(&p).output().unwrap();
            let sum = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            (p.file_name().unwrap().to_string_lossy().into_owned(), sum)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_live_tenant_moves_to_another_host_with_its_data_and_under_a_minute_of_downtime() {
    require_root();
    let id = std::process::id();
    let name = format!("mv-{id}");
    let filler = format!("mf-{id}");
    let host = format!("{name}.m8trx.test");
    let root = std::env::temp_dir().join(format!("m8trx-hostd-move-{id}"));
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let image_file = root.join("volume.img");
    let (proxy_a, proxy_b) = (Proxy::start(&dir_a), Proxy::start(&dir_b));
    let _cleanup_a = Cleanup {
        dir: dir_a.clone(),
        names: vec![name.clone(), filler.clone()],
    };
    let _cleanup_b = Cleanup {
        dir: dir_b.clone(),
        names: vec![name.clone()],
    };
    let a = Daemon::start_with(&dir_a, &["--proxy-admin", proxy_a.admin.to_str().unwrap()]);
    let b = Daemon::start_with(&dir_b, &["--proxy-admin", proxy_b.admin.to_str().unwrap()]);

    // On A the tenant gets slot 2 (a filler had slot 1 and is gone again), on B it will get
    // slot 1: its files must change id range on the way.
    let filler_spec = spec(
        &dir_a,
        &filler,
        &format!("{filler}.m8trx.test"),
        &root.join("filler.img"),
    );
    a.ok(&["create", "-f", filler_spec.to_str().unwrap()]);
    let tenant_spec = spec(&root, &name, &host, &image_file);
    a.ok(&["create", "-f", tenant_spec.to_str().unwrap()]);
    a.ok(&["destroy", &filler, "--wipe"]);
    assert_eq!(a.status(&name)["slot"], 2, "{}", a.status(&name));

    let (image, tar) = support::image_tarball(&root, "M8TRX_IMAGE_CADDY");
    a.ok(&["load", &name, "-i", tar.to_str().unwrap()]);
    let compose = root.join("compose.json");
    std::fs::write(&compose, caddy_compose(&host, &image)).unwrap();
    a.ok(&["deploy", &name, "-f", compose.to_str().unwrap()]);

    // The test file set, written into the tenant's data volume as the container's root owns
    // it, readable by nobody else (so only a correct id shift lets the target serve it).
    let data_a = data_dir(&dir_a.join("tenants"), &name);
    let owner = std::fs::metadata(&data_a).unwrap().uid();
    for i in 0..20 {
        let f = data_a.join(format!("file-{i}.bin"));
        let bytes: Vec<u8> = (0..(4096 * (i + 1)))
            .map(|j| b'a' + ((j * 31 + i * 7) % 26) as u8)
            .collect();
        std::fs::write(&f, &bytes).unwrap();
        std::os::unix::fs::chown(&f, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let before = checksums(&data_a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fetch_path(&proxy_a.tls, &host, "/file-3.bin", 5).is_none() {
        assert!(
            Instant::now() < deadline,
            "the tenant never served through A: {:?} {:?}",
            support::proxy::curl_verbose(&proxy_a.tls, &host, "/file-3.bin"),
            proxy_a.route_names()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Requests flow for the whole move, to whichever host "DNS" names.
    let dns = Arc::new(Mutex::new(proxy_a.tls.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let client = {
        let (dns, stop, results, host) = (dns.clone(), stop.clone(), results.clone(), host.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let to = dns.lock().unwrap().clone();
                let ok = fetch_path(&to, &host, "/file-3.bin", 3).is_some();
                results.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    let moving = Instant::now();
    a.ok(&["destroy", &name]);
    let created = b.ok(&["create", "-f", tenant_spec.to_str().unwrap()]);
    assert!(
        created.contains("files moved into this host's id range"),
        "{created}"
    );
    assert!(created.contains("adopted deploy revision 1"), "{created}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fetch_path(&proxy_b.tls, &host, "/file-3.bin", 3).is_none() {
        assert!(
            Instant::now() < deadline,
            "the tenant never served through B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    *dns.lock().unwrap() = proxy_b.tls.clone();
    let moved_in = moving.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    // Downtime: the longest stretch between two answered requests.
    let results = results.lock().unwrap();
    let answered: Vec<Instant> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    let failed = results.iter().filter(|r| !r.1).count();
    let downtime = answered.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        results.last().unwrap().1,
        "the last requests, through B, are answered"
    );
    let st = b.status(&name);
    assert_eq!(st["slot"], 1, "{st}");
    let data_b = data_dir(&dir_b.join("tenants"), &name);
    let after = checksums(&data_b);
    assert_eq!(
        before, after,
        "every file of the data volume arrived unchanged"
    );
    let base_b = 1_000_000 + 65_536;
    assert_eq!(
        std::fs::metadata(data_b.join("file-0.bin")).unwrap().uid(),
        base_b,
        "owned in B's range"
    );
    let (body, _) = fetch_path(&proxy_b.tls, &host, "/file-19.bin", 5).unwrap();
    let want: String = (0..4096 * 20)
        .map(|j| char::from(b'a' + ((j * 31 + 19 * 7) % 26) as u8))
        .collect();
    assert!(body == want, "file-19.bin as served by B differs");
    println!(
        "move: {} requests, {failed} failed; downtime {:.1} s (longest gap between answers); destroy on A → B answering in {:.1} s; {} files checked identical",
        results.len(),
        downtime.as_secs_f64(),
        moved_in.as_secs_f64(),
        after.len()
    );
    assert!(downtime < Duration::from_secs(60), "downtime {downtime:?}");
    assert!(
        a.ctl(&["status", &name]).status.code() == Some(4),
        "gone from A"
    );

    b.ok(&["destroy", &name, "--wipe"]);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}
