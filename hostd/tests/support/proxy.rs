//! A real sni-proxy on loopback for the daemon-level tests, and curl through it.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sni-proxy on loopback, killed on drop.
pub struct Proxy {
    child: Child,
    /// The TLS listener, `ip:port`.
    pub tls: String,
    /// The admin socket.
    pub admin: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts sni-proxy with its routes file, log and admin socket in `dir`.
    pub fn start(dir: &Path) -> Proxy {
        let routes = dir.join("routes.toml");
        std::fs::write(&routes, "[limits]\n").unwrap();
        let admin = dir.join("proxy.sock");
        let mut child = Command::new(super::workspace_binary("sni-proxy"))
            .arg("--routes")
            .arg(&routes)
            .args([
                "--listen-tls",
                "127.0.0.1:0",
                "--listen-http",
                "127.0.0.1:0",
            ])
            .arg("--admin-socket")
            .arg(&admin)
            .args(["--watch-interval-ms", "0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let tls = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tls="))
            .unwrap_or_else(|| panic!("no ready line: {line:?}"))
            .to_owned();
        Proxy { child, tls, admin }
    }

    /// The route names the proxy has now.
    pub fn route_names(&self) -> Vec<String> {
        let routes = std::fs::read_to_string(self.admin.with_file_name("routes.toml")).unwrap();
        routes
            .lines()
            .filter_map(|l| l.trim().strip_prefix("sni = "))
            .map(|s| s.trim_matches('"').to_owned())
            .collect()
    }
}

/// `curl -kv https://<host>/` through the proxy; (body, verbose output) when it answered.
pub fn fetch(proxy: &Proxy, host: &str) -> Option<(String, String)> {
    fetch_at(&proxy.tls, host)
}

/// [`fetch`] through the proxy listening at `tls`.
pub fn fetch_at(tls: &str, host: &str) -> Option<(String, String)> {
    fetch_within(tls, host, 5)
}

/// [`fetch_at`], giving up after `max_secs` (a request that waits for a wake).
pub fn fetch_within(tls: &str, host: &str, max_secs: u32) -> Option<(String, String)> {
    curl(tls, host, "/", max_secs, &[])
}

/// `curl -kv https://<host><path>` through the proxy at `tls`; only a 2xx answer counts.
pub fn fetch_path(tls: &str, host: &str, path: &str, max_secs: u32) -> Option<(String, String)> {
    curl(tls, host, path, max_secs, &["-f"])
}

fn curl(
    tls: &str,
    host: &str,
    path: &str,
    max_secs: u32,
    extra: &[&str],
) -> Option<(String, String)> {
    let port = tls.rsplit(':').next().unwrap();
    let o = Command::new("curl")
        .args([
            "-sS",
            "-kv",
            "--max-time",
            &max_secs.to_string(),
            "--resolve",
        ])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    o.status.success().then(|| {
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
}

pub fn wait_fetch(proxy: &Proxy, host: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = fetch(proxy, host) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never answered through the proxy"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// curl's whole verbose output for `https://<host><path>` through `tls` (failure reports).
pub fn curl_verbose(tls: &str, host: &str, path: &str) -> String {
    let port = tls.rsplit(':').next().unwrap();
    let o = Command::new("curl")
        .args(["-sS", "-kv", "--max-time", "5", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
