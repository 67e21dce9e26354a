//! Real workloads under the tenant profiles through the real dockerd: a busybox workload and
//! the static syscall probe, and Caddy serving TLS, each with the `security_opt` that
//! `hostd::profiles::install` returns (no-new-privileges + the seccomp JSON content), cap_drop
//! ALL, a read-only root and no network but loopback. Inside, `unshare -U`, `mount`, keyctl and
//! the other removed syscalls fail; a run under the marker variant of the profile shows the
//! filter dockerd applied is what refuses them.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "profiles_probe.rs"]
mod probe;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, WaitContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;
use hostd::profiles::{install, AppArmorLoad, SeccompProfile, ENOSYS, EPERM};
use m8trx_e2e::{docker, env, force_remove, logs, parse_status, require_root, unique};
use m8trx_spec::CustomerName;
use probe::{deny_specs, marker_profile, parse_results, MARKER_ERRNO};

/// The hostd-style host config: tenant security options, no capabilities, read-only root.
fn tenant_host_config(security_opt: Vec<String>, binds: Vec<String>) -> HostConfig {
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        readonly_rootfs: Some(true),
        security_opt: Some(security_opt),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            "rw,nosuid,size=16m".to_owned(),
        )])),
        network_mode: Some("none".into()),
        memory: Some(256 * 1024 * 1024),
        pids_limit: Some(128),
        binds: Some(binds),
        ..Default::default()
    }
}

/// Creates and starts a container; returns its id.
async fn start(d: &Docker, name: &str, body: ContainerCreateBody) -> String {
    let created = d
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("creating container {name}: {e}"));
    if let Err(e) = d.start_container(&created.id, None).await {
        force_remove(d, &created.id).await;
        panic!("starting container {name}: {e}");
    }
    created.id
}

/// Runs the busybox workload under `security_opt` and returns its combined output.
async fn busybox_run(d: &Docker, security_opt: Vec<String>, deny_args: &str) -> String {
    let probe_dir = probe::probe().parent().unwrap().display().to_string();
    let script = format!(
        r#"
grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status
echo hello > /tmp/f && [ "$(cat /tmp/f)" = hello ] && echo "BB file_ok"
ls /bin > /dev/null && echo "BB ls_ok"
sleep 0.1 && echo "BB sleep_ok"
x=$(echo sub) && [ "$x" = sub ] && echo "BB subshell_ok"
unshare -U true 2>/tmp/e; echo "RC unshare_U $?"; echo "ERR unshare_U $(cat /tmp/e)"
unshare -m true 2>/tmp/e; echo "RC unshare_m $?"; echo "ERR unshare_m $(cat /tmp/e)"
unshare -n true 2>/tmp/e; echo "RC unshare_n $?"
mkdir -p /tmp/mnt; mount -t tmpfs none /tmp/mnt 2>/tmp/e; echo "RC mount $?"; echo "ERR mount $(cat /tmp/e)"
/probe/probe workload /tmp; echo "RC workload $?"
/probe/probe ns
/probe/probe deny {deny_args}
"#
    );
    let name = unique("seccomp-bb");
    let body = ContainerCreateBody {
        image: Some(env("M8TRX_IMAGE_BUSYBOX")),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        host_config: Some(tenant_host_config(
            security_opt,
            vec![format!("{probe_dir}:/probe:ro")],
        )),
        ..Default::default()
    };
    let id = start(d, &name, body).await;
    let waited = tokio::time::timeout(
        Duration::from_secs(120),
        d.wait_container(&id, None::<WaitContainerOptions>).next(),
    )
    .await;
    let out = logs(d, &id).await;
    force_remove(d, &id).await;
    assert!(
        waited.is_ok(),
        "busybox workload did not finish in 120 s:\n{out}"
    );
    out
}

fn line_value<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

#[tokio::test]
async fn busybox_and_probe_under_the_tenant_profile() {
    require_root();
    let d = docker().await;
    let tenant = SeccompProfile::tenant().unwrap();
    let (specs, skipped) = deny_specs(&tenant.denied_with(1));
    println!(
        "probing {} denied syscalls in containers (skipped here: {skipped:?})",
        specs.len()
    );
    let deny_args = specs.join(" ");

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("profiles-docker-{}", std::process::id()));
    let name = CustomerName::parse("acme").unwrap();
    let profiles = install(&name, &dir, AppArmorLoad::Auto).unwrap();
    let opts = profiles.security_opt();
    println!(
        "security_opt from hostd::profiles::install: no-new-privileges, seccomp=<{} bytes of JSON>{}",
        opts[1].len(),
        if profiles.apparmor_loaded { ", apparmor=m8trx-tenant-acme" } else { " (AppArmor not enabled in this kernel)" }
    );

    let out = busybox_run(&d, opts, &deny_args).await;
    println!("--- tenant profile ---\n{out}");
    let status = parse_status(&out);
    assert_eq!(
        status.get("Seccomp").map(String::as_str),
        Some("2"),
        "not in seccomp filter mode:\n{out}"
    );
    assert_eq!(
        status.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{out}"
    );
    for ok in ["file_ok", "ls_ok", "sleep_ok", "subshell_ok"] {
        assert!(
            out.lines().any(|l| l.trim() == format!("BB {ok}")),
            "busybox {ok} failed:\n{out}"
        );
    }
    for rc in ["unshare_U", "unshare_m", "unshare_n", "mount"] {
        let v =
            line_value(&out, &format!("RC {rc} ")).unwrap_or_else(|| panic!("no RC {rc}:\n{out}"));
        assert_ne!(v, "0", "{rc} succeeded inside the container:\n{out}");
    }
    let unshare_err = line_value(&out, "ERR unshare_U").unwrap_or_default();
    assert!(
        unshare_err.contains("Operation not permitted"),
        "unshare -U: {unshare_err:?}"
    );
    assert_eq!(
        line_value(&out, "RC workload "),
        Some("0"),
        "probe workload failed:\n{out}"
    );
    let ns = parse_results("NS", &out);
    for what in [
        "unshare_user",
        "setns",
        "clone_newuser",
        "clone_newnet",
        "socket_vsock",
        "socket_alg",
    ] {
        assert_eq!(
            ns.get(what),
            Some(&(-1, EPERM)),
            "{what} in the container:\n{out}"
        );
    }
    assert_eq!(
        ns.get("clone3"),
        Some(&(-1, ENOSYS)),
        "clone3 in the container"
    );
    let denied = parse_results("DENY", &out);
    assert_eq!(denied.len(), specs.len(), "probe results missing:\n{out}");
    for (name, (ret, errno)) in &denied {
        assert_eq!(
            (*ret, *errno),
            (-1, EPERM),
            "{name} not EPERM in the container"
        );
    }
    for must in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "mount",
        "ptrace",
    ] {
        assert!(denied.contains_key(must), "{must} was not probed");
    }

    // The same workload under the marker variant: the errno changes, so dockerd applied our
    // filter and it, not the missing capabilities, refuses each call.
    let marker_json = marker_profile().to_compact_json().unwrap();
    let out = busybox_run(
        &d,
        vec!["no-new-privileges".into(), format!("seccomp={marker_json}")],
        &deny_args,
    )
    .await;
    println!("--- marker profile ---\n{out}");
    let denied = parse_results("DENY", &out);
    assert_eq!(denied.len(), specs.len(), "probe results missing:\n{out}");
    for (name, v) in &denied {
        assert_eq!(
            *v,
            (-1, MARKER_ERRNO as i32),
            "{name} not refused by the filter itself"
        );
    }
    let unshare_err = line_value(&out, "ERR unshare_U").unwrap_or_default();
    assert!(
        !unshare_err.contains("Operation not permitted") && !unshare_err.is_empty(),
        "busybox unshare -U error did not change with the filter's errno: {unshare_err:?}"
    );
    assert_eq!(
        line_value(&out, "RC workload "),
        Some("0"),
        "probe workload failed:\n{out}"
    );
}

const CADDYFILE: &str = r#"{
	admin off
	skip_install_trust
	http_port 8080
	auto_https disable_redirects
}
https://localhost:8443 {
	tls internal
	respond "hello from a tenant under seccomp" 200
}
"#;

#[tokio::test]
async fn caddy_serves_tls_under_the_tenant_profile() {
    require_root();
    let d = docker().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("profiles-caddy-{}", std::process::id()));
    let profiles = install(
        &CustomerName::parse("acme").unwrap(),
        &dir,
        AppArmorLoad::Auto,
    )
    .unwrap();

    let name = unique("seccomp-caddy");
    let body = ContainerCreateBody {
        image: Some(env("M8TRX_IMAGE_CADDY")),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![
            "printf '%s' \"$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"
                .into(),
        ]),
        env: Some(vec![
            format!("CADDYFILE={CADDYFILE}"),
            "HOME=/tmp".into(),
            "XDG_DATA_HOME=/tmp/data".into(),
            "XDG_CONFIG_HOME=/tmp/config".into(),
        ]),
        host_config: Some(tenant_host_config(profiles.security_opt(), vec![])),
        ..Default::default()
    };
    let id = start(&d, &name, body).await;
    let pid = d
        .inspect_container(&id, None)
        .await
        .unwrap()
        .state
        .and_then(|s| s.pid)
        .unwrap_or(0);

    // curl from the host, inside the container's network namespace: loopback only.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut served = false;
    while Instant::now() < deadline && pid > 0 {
        let out = tokio::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args([
                "curl",
                "-sS",
                "-k",
                "--max-time",
                "5",
                "--resolve",
                "localhost:8443:127.0.0.1",
                "-w",
                "\nHTTP %{http_code} %{scheme} TLS-verify %{ssl_verify_result}\n",
                "https://localhost:8443/",
            ])
            .output()
            .await
            .expect("running nsenter + curl");
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && last.contains("hello from a tenant under seccomp") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caddy_logs = logs(&d, &id).await;
    let state = d
        .inspect_container(&id, None)
        .await
        .ok()
        .and_then(|i| i.state);
    force_remove(&d, &id).await;

    println!("curl: {last}");
    assert!(served, "Caddy did not serve TLS under the profile (pid {pid}, state {state:?}):\n{last}\n--- caddy logs ---\n{caddy_logs}");
    assert!(last.contains("HTTP 200 HTTPS"), "{last}");
    let st = parse_status(&status);
    println!(
        "caddy process on the host: Seccomp {:?}, Seccomp_filters {:?}, NoNewPrivs {:?}",
        st.get("Seccomp"),
        st.get("Seccomp_filters"),
        st.get("NoNewPrivs")
    );
    assert_eq!(
        st.get("Seccomp").map(String::as_str),
        Some("2"),
        "caddy not under a filter:\n{status}"
    );
    assert_eq!(st.get("NoNewPrivs").map(String::as_str), Some("1"));
    assert!(
        !caddy_logs
            .to_lowercase()
            .contains("operation not permitted"),
        "Caddy hit a refused syscall:\n{caddy_logs}"
    );
}
