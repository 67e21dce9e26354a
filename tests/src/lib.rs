//! Harness shared by the cross-component tests: finds the real services that
//! `scripts/test-env` started and fails loudly when they are missing. Nothing here skips.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test harness: a panic is the failure report

pub mod tenant;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use bollard::query_parameters::{LogsOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

/// Reads a variable written by `scripts/test-env`, or stops the test with what to do.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: these tests need the real test environment. \
             Run `make test` (or `scripts/test-env` and source the env file it prints)."
        )
    })
}

/// The checkout's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `cargo test --workspace` (or `cargo build --workspace`) put this build's binaries:
/// the directory above the running test binary's `deps/`.
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Compiles the static syscall probe (`seccomp/probe/probe.rs`) to `out` with rustc
/// (`-C target-feature=+crt-static`: it runs in scratch containers and under raw filters).
pub fn build_probe(out: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seccomp/probe/probe.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = std::process::Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running {rustc} to build the probe: {e}"));
    assert!(
        st.status.success(),
        "building the static probe failed (needs rustc and libc6-dev's libc.a):\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Stops the test unless it runs as root, which dockerd, iptables and cgroups need.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test must run as root (effective uid is {uid:?}); run `make test` as root"
    );
}

/// Connects to the test dockerd named by DOCKER_HOST and checks it answers.
pub async fn docker() -> Docker {
    connect_docker(&env("DOCKER_HOST")).await
}

/// Connects to a dockerd at a `unix://` address, negotiating the API version of Debian's engine.
pub async fn connect_docker(host: &str) -> Docker {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    let d = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        .unwrap_or_else(|e| panic!("cannot connect to dockerd at {host}: {e}"));
    let d = d.negotiate_version().await.unwrap_or_else(|e| {
        panic!("dockerd at {host} does not answer ({e}); is it running? see scripts/test-env")
    });
    d.ping()
        .await
        .unwrap_or_else(|e| panic!("dockerd at {host} does not answer ping: {e}"));
    d
}

/// A name unique to this test process, so parallel tests and re-runs never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "m8trx-e2e-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Collects a container's stdout and stderr as text.
pub async fn logs(d: &Docker, id: &str) -> String {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut s = d.logs(id, Some(opts));
    let mut out = String::new();
    while let Some(chunk) = s.next().await {
        out.push_str(&chunk.expect("reading container logs").to_string());
    }
    out
}

/// Removes a container whatever its state; errors are ignored because cleanup must not mask the assertion.
pub async fn force_remove(d: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = d.remove_container(id, Some(opts)).await;
}

/// Parses `Key:\tvalue` lines such as /proc/PID/status into a map.
pub fn parse_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Reads `/etc/subuid`-style ranges for `user`: (first host id, count).
pub fn sub_id_range(file: &str, user: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != user {
            return None;
        }
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let m = parse_status("Name:\tsh\nUid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n");
        assert_eq!(m["Uid"], "0\t0\t0\t0");
        assert_eq!(m["CapEff"], "0000000000000000");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("x"), unique("x"));
    }
}
