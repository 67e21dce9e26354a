//! Shared by the `profiles_*` tests (included with `#[path]`, not a test target itself): builds
//! the static syscall probe from `seccomp/probe/probe.rs`, runs it under a raw seccomp BPF
//! program, and parses its output.
#![allow(dead_code, unsafe_code)] // unsafe: prctl in the forked child before exec, see SAFETY below

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hostd::profiles::{compile_seccomp, SeccompProfile};

/// errno the "marker" variant of the profile returns instead of EPERM: EHWPOISON, which no
/// syscall in these tests returns on its own, so seeing it proves the filter denied the call.
pub const MARKER_ERRNO: u32 = 133;

/// Directory for this test binary's scratch files.
pub fn scratch() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("profiles-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("creating the scratch directory");
    d
}

/// Compiles the probe statically (glibc `crt-static`) once per test binary; returns its path.
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = scratch().join("probe");
        std::fs::create_dir_all(&dir).expect("creating the probe directory");
        let out = dir.join("probe");
        m8trx_e2e::build_probe(&out);
        out
    })
}

/// The shipped profile with every EPERM (default and explicit) replaced by [`MARKER_ERRNO`].
pub fn marker_profile() -> SeccompProfile {
    let mut p = SeccompProfile::tenant().expect("tenant profile parses");
    assert_eq!(p.default_errno_ret, Some(1));
    p.default_errno_ret = Some(MARKER_ERRNO);
    for g in &mut p.syscalls {
        if g.errno_ret == Some(1) {
            g.errno_ret = Some(MARKER_ERRNO);
        }
    }
    p
}

/// Compiles `profile` with libseccomp and returns the BPF instructions.
pub fn bpf_of(profile: &SeccompProfile) -> Vec<libc::sock_filter> {
    let compiled = compile_seccomp(profile).expect("libseccomp compiles the profile");
    let bytes = compiled.bpf().expect("exporting BPF");
    assert_eq!(
        bytes.len() % 8,
        0,
        "BPF export is not a whole number of instructions"
    );
    bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Runs the probe with `args`, in its own session, under `filter` (applied in the child before exec).
pub fn run_probe(filter: Option<Vec<libc::sock_filter>>, args: &[String]) -> Output {
    let mut cmd = Command::new(probe());
    cmd.args(args);
    // SAFETY: the closure runs in the forked child before exec; it only calls async-signal-safe
    // syscalls (setsid, prctl) on data owned by the closure and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: no controlling terminal that a leaked vhangup could touch.
            libc::setsid();
            if let Some(f) = &filter {
                let prog = libc::sock_fprog {
                    len: f.len() as u16,
                    filter: f.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.output().expect("running the probe")
}

/// Parses `TAG WHAT RET ERRNO` lines into WHAT -> (RET, ERRNO).
pub fn parse_results(tag: &str, stdout: &str) -> BTreeMap<String, (i64, i32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != tag {
                return None;
            }
            let what = f.next()?.to_owned();
            Some((what, (f.next()?.parse().ok()?, f.next()?.parse().ok()?)))
        })
        .collect()
}

/// `NAME=NR` arguments of `probe deny` for every name this architecture has; also returns the skipped names.
pub fn deny_specs<'a>(names: impl IntoIterator<Item = &'a String>) -> (Vec<String>, Vec<String>) {
    let mut specs = Vec::new();
    let mut skipped = Vec::new();
    for n in names {
        match hostd::profiles::native_syscall_number(n) {
            Some(nr) => specs.push(format!("{n}={nr}")),
            None => skipped.push(n.clone()),
        }
    }
    (specs, skipped)
}

/// Syscalls that no group names, so only the default action decides them (unimplemented ones
/// included: the filter runs before the kernel looks the number up).
pub const UNLISTED: [&str; 4] = ["tuxcall", "security", "afs_syscall", "vserver"];
