//! The agent-shaped tenant the benchmarks run (its own Caddy in front of an app, and a
//! worker), and their statistics.
#![allow(dead_code)] // each benchmark uses its own subset

use std::path::Path;
use std::process::Command;

use crate::support::Daemon;

/// Creates tenant `name` (template agent, `limits` as the spec's inline mapping, idle
/// windows off: the benchmark alone decides when it sleeps), loads the images of `tar` into
/// its engine and deploys the agent-shaped stack for `<name>.m8trx.test`.
pub fn deploy_agent(
    d: &Daemon,
    dir: &Path,
    name: &str,
    limits: &str,
    tar: &Path,
    images: (&str, &str),
) {
    let spec = dir.join(format!("{name}.yml"));
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: agent\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ {limits} }}\n\
             volume: {{ loop_image: {} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer\", external_id: ext-{name} }}\n\
             idle: {{ freeze_after: 0, sleep_after: 0 }}\n",
            dir.join(format!("{name}.img")).display()
        ),
    )
    .unwrap();
    d.ok(&["create", "-f", spec.to_str().unwrap()]);
    d.ok(&["load", name, "-i", tar.to_str().unwrap()]);
    let file = dir.join(format!("{name}.json"));
    std::fs::write(
        &file,
        stack(&format!("{name}.m8trx.test"), images.0, images.1),
    )
    .unwrap();
    d.ok(&["deploy", name, "-f", file.to_str().unwrap()]);
}

/// The tenant's Caddyfile: TLS for `host` (its own internal CA), the app behind it; the
/// PROXY protocol from sni-proxy when `proxy_protocol`.
pub fn caddyfile(host: &str, proxy_protocol: bool) -> String {
    let wrappers = if proxy_protocol {
        "\t\tlistener_wrappers {\n\t\t\tproxy_protocol {\n\t\t\t\ttimeout 2s\n\t\t\t\tallow 10.250.0.0/16\n\t\t\t}\n\t\t\ttls\n\t\t}\n"
    } else {
        ""
    };
    format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\tservers :443 {{\n{wrappers}\t}}\n}}\n\
         https://{host}:443 {{\n\ttls internal\n\treverse_proxy app:8080\n}}\n"
    )
}

/// The agent-shaped stack: Caddy in front of an app, and a worker.
pub fn stack(host: &str, caddy: &str, busybox: &str) -> String {
    serde_json::json!({
        "services": {
            "caddy": {
                "image": caddy,
                "entrypoint": ["/bin/sh", "-c"],
                "command": ["printf '%s' \"$$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"],
                "environment": {"CADDYFILE": caddyfile(host, true), "HOME": "/tmp",
                                "XDG_DATA_HOME": "/tmp/data", "XDG_CONFIG_HOME": "/tmp/config"},
                "depends_on": ["app"],
            },
            // An init, as real images have: busybox as PID 1 ignores SIGTERM, and every
            // sleep would wait out the stop grace period.
            "app": {
                "image": busybox,
                "init": true,
                "command": ["sh", "-c", "mkdir -p /tmp/w && echo app > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"],
            },
            "worker": {"image": busybox, "init": true, "command": ["sleep", "2147483647"]},
        }
    })
    .to_string()
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// A benchmark setting from the environment, or its default.
pub fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Time to the first byte of a TLS `GET /` for `host` sent to `addr` (`ip:port`: the proxy,
/// or a Caddy directly), in seconds; `None` when it failed or did not answer 200.
pub fn ttfb(host: &str, addr: &str, max_secs: u32) -> Option<f64> {
    let (ip, port) = addr.rsplit_once(':')?;
    let o = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_starttransfer}",
        ])
        .args(["--max-time", &max_secs.to_string(), "--resolve"])
        .arg(format!("{host}:{port}:{ip}"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&o.stdout);
    let mut it = out.split_whitespace();
    (o.status.success() && it.next() == Some("200"))
        .then(|| it.next()?.parse().ok())
        .flatten()
}
