//! Host hardening files the Packer image installs: `packer/files/audit/m8trx-shared-host.rules`
//! (auditd) and `packer/files/sysctl/99-m8trx-shared-host.conf` (sysctl.d). Parsed here: the
//! platform's audit keys and paths are present, syscall names are real for the ABI they name,
//! immutable mode comes last, and the kernel parameters have the values a shared host needs,
//! each with its reason, each key one the kernel knows.
//!
//! Neither file is loaded on this machine: `-e 2` would lock the audit rules until reboot and
//! the sysctls would change the machine every engineer shares.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use libseccomp::{ScmpArch, ScmpSyscall};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// One auditctl rule line, split into its options.
#[derive(Debug)]
struct AuditRule {
    line: String,
    opts: Vec<(String, String)>,
}

impl AuditRule {
    fn get(&self, opt: &str) -> Vec<&str> {
        self.opts
            .iter()
            .filter(|(o, _)| o == opt)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn key(&self) -> Option<&str> {
        self.get("-k").first().copied()
    }
    fn fields(&self) -> Vec<&str> {
        self.get("-F")
    }
}

fn audit_rules() -> Vec<AuditRule> {
    let text = read("packer/files/audit/m8trx-shared-host.rules");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let toks: Vec<&str> = l.split_whitespace().collect();
            let mut opts = Vec::new();
            let mut i = 0;
            while i < toks.len() {
                let t = toks[i];
                assert!(
                    t.starts_with('-'),
                    "unexpected token {t:?} in audit rule {l:?}"
                );
                let takes_value = t != "-D";
                let v = if takes_value {
                    i += 1;
                    toks.get(i)
                        .unwrap_or_else(|| panic!("{t} without a value in {l:?}"))
                        .to_string()
                } else {
                    String::new()
                };
                opts.push((t.to_owned(), v));
                i += 1;
            }
            AuditRule {
                line: l.to_owned(),
                opts,
            }
        })
        .collect()
}

#[test]
fn audit_rules_cover_the_platform_list_and_end_immutable() {
    let rules = audit_rules();
    let known_opts = [
        "-D",
        "-b",
        "-f",
        "--backlog_wait_time",
        "-e",
        "-w",
        "-p",
        "-k",
        "-a",
        "-F",
        "-S",
    ];
    for r in &rules {
        for (o, _) in &r.opts {
            assert!(
                known_opts.contains(&o.as_str()),
                "unknown option {o} in {:?}",
                r.line
            );
        }
    }
    assert_eq!(
        rules.first().unwrap().line,
        "-D",
        "rules must start by deleting old ones"
    );
    let last = rules.last().unwrap();
    assert_eq!(last.line, "-e 2", "immutable mode must be the last rule");
    assert_eq!(
        rules.iter().filter(|r| !r.get("-e").is_empty()).count(),
        1,
        "-e appears more than once"
    );
    let failure = rules.iter().find_map(|r| r.get("-f").first().copied());
    assert_eq!(
        failure,
        Some("1"),
        "failure mode: printk, not panic, on a shared host"
    );

    // Watches: path, permissions in rwxa, and a key on every one.
    let mut watched: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in rules.iter().filter(|r| !r.get("-w").is_empty()) {
        let path = r.get("-w")[0];
        let perms = r.get("-p");
        assert_eq!(perms.len(), 1, "watch without -p: {:?}", r.line);
        assert!(
            perms[0].chars().all(|c| "rwxa".contains(c)),
            "bad perms in {:?}",
            r.line
        );
        let key = r
            .key()
            .unwrap_or_else(|| panic!("watch without a key: {:?}", r.line));
        watched.entry(key).or_default().push(path);
        assert!(path.starts_with('/'), "relative watch path {path}");
    }
    let expect_watch = [
        (
            "auth_config",
            ["/etc/pam.d/", "/etc/shadow", "/etc/passwd"].as_slice(),
        ),
        ("sudoers", &["/etc/sudoers", "/etc/sudoers.d/"]),
        ("sshd_config", &["/etc/ssh/sshd_config"]),
        ("kernel_modules", &["/usr/sbin/modprobe"]),
        ("agent_data_access", &["/srv/m8trx/tenants/"]),
    ];
    for (key, paths) in expect_watch {
        for p in paths {
            assert!(
                watched.get(key).is_some_and(|w| w.contains(p)),
                "no watch on {p} with key {key}: {watched:?}"
            );
        }
    }

    // Syscall rules: always,exit with an arch, names real for that ABI, a key.
    let mut by_key: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in rules.iter().filter(|r| !r.get("-a").is_empty()) {
        assert_eq!(r.get("-a"), vec!["always,exit"], "{:?}", r.line);
        let arch = r
            .fields()
            .iter()
            .find_map(|f| f.strip_prefix("arch="))
            .unwrap_or_else(|| panic!("syscall rule without arch: {:?}", r.line));
        let scmp = match arch {
            "b64" => ScmpArch::X8664,
            "b32" => ScmpArch::X86,
            other => panic!("unknown arch {other}"),
        };
        let key = r
            .key()
            .unwrap_or_else(|| panic!("rule without key: {:?}", r.line));
        for list in r.get("-S") {
            for name in list.split(',') {
                assert!(
                    ScmpSyscall::from_name_by_arch(name, scmp).is_ok_and(|s| i32::from(s) >= 0),
                    "{name} is not a syscall of {arch} in {:?}",
                    r.line
                );
                by_key
                    .entry(key)
                    .or_default()
                    .insert(format!("{arch}:{name}"));
            }
        }
        if key != "kernel_modules" {
            let f = r.fields();
            assert!(
                f.contains(&"auid>=1000") && f.contains(&"auid!=unset"),
                "{key} must be limited to logged-in users: {:?}",
                r.line
            );
        }
    }
    for (key, must) in [
        (
            "file_deletion",
            ["unlink", "unlinkat", "rename", "renameat"].as_slice(),
        ),
        ("privilege_escalation", &["execve"]),
        (
            "kernel_modules",
            &["init_module", "finit_module", "delete_module"],
        ),
    ] {
        for arch in ["b64", "b32"] {
            for s in must {
                assert!(
                    by_key
                        .get(key)
                        .is_some_and(|k| k.contains(&format!("{arch}:{s}"))),
                    "{key}: no {arch} rule for {s}"
                );
            }
        }
    }
    let escalation = rules
        .iter()
        .find(|r| r.key() == Some("privilege_escalation"))
        .unwrap();
    assert!(
        escalation.fields().contains(&"euid=0"),
        "privilege_escalation must watch euid=0"
    );
    let tenant_reads = rules
        .iter()
        .find(|r| r.key() == Some("agent_data_access") && !r.get("-a").is_empty())
        .expect("a rule for reads of tenant data by logged-in users");
    assert!(tenant_reads.fields().contains(&"dir=/srv/m8trx/tenants"));
    assert!(tenant_reads.fields().contains(&"perm=r"));
    println!(
        "{} audit rules; keys: {:?}",
        rules.len(),
        rules
            .iter()
            .filter_map(AuditRule::key)
            .collect::<BTreeSet<_>>()
    );
}

/// Keys the Ubuntu 22.04 AWS kernel has but this dev/CI kernel (Firecracker, minimal) lacks.
const ABSENT_FROM_DEV_KERNEL: [&str; 3] = [
    "kernel.yama.ptrace_scope",
    "kernel.kexec_load_disabled",
    "kernel.sysrq",
];

/// key -> (value, optional) from the sysctl.d file; panics on a setting without a reason above it.
fn sysctls() -> BTreeMap<String, (String, bool)> {
    let text = read("packer/files/sysctl/99-m8trx-shared-host.conf");
    let mut settings: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut previous_was_comment = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            previous_was_comment = false;
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') {
            previous_was_comment = true;
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not `key = value`: {line:?}"));
        let (key, optional) = match k.trim().strip_prefix('-') {
            Some(k) => (k.to_owned(), true),
            None => (k.trim().to_owned(), false),
        };
        assert!(
            previous_was_comment,
            "{key} has no reason in a comment above it"
        );
        assert!(
            settings
                .insert(key.clone(), (v.trim().to_owned(), optional))
                .is_none(),
            "{key} set twice"
        );
        previous_was_comment = false;
    }
    settings
}

#[test]
fn sysctls_have_the_shared_host_values_each_with_a_reason() {
    let settings = sysctls();
    let expect = [
        ("kernel.yama.ptrace_scope", "2"),
        ("kernel.kptr_restrict", "2"),
        ("kernel.dmesg_restrict", "1"),
        ("kernel.unprivileged_bpf_disabled", "1"),
        ("net.core.bpf_jit_harden", "2"),
        ("kernel.kexec_load_disabled", "1"),
        ("kernel.randomize_va_space", "2"),
        ("fs.suid_dumpable", "0"),
        ("fs.protected_symlinks", "1"),
        ("fs.protected_hardlinks", "1"),
        ("vm.unprivileged_userfaultfd", "0"),
        ("kernel.unprivileged_userns_clone", "0"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
    ];
    for (k, v) in expect {
        assert_eq!(settings.get(k).map(|(v, _)| v.as_str()), Some(v), "{k}");
    }
    // User namespaces stay available to root for dockerd --userns-remap.
    let max_userns: u64 = settings["user.max_user_namespaces"].0.parse().unwrap();
    assert!(
        max_userns >= 1024,
        "user.max_user_namespaces = {max_userns} would starve userns-remap"
    );
    assert_eq!(
        settings["kernel.core_pattern"].0, "|/bin/false",
        "core dumps must be off"
    );

    // Every key is one a kernel knows: present here, optional ('-'), or a known Ubuntu-only key.
    let mut absent_here = Vec::new();
    for (key, (value, optional)) in &settings {
        let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
        if proc.exists() {
            let current = std::fs::read_to_string(&proc).unwrap_or_default();
            let numeric_now = current.split_whitespace().all(|t| t.parse::<i64>().is_ok());
            let numeric_want = value.parse::<i64>().is_ok();
            assert_eq!(
                numeric_now, numeric_want,
                "{key}: value {value:?} has the wrong shape (kernel has {current:?})"
            );
        } else {
            assert!(
                *optional || ABSENT_FROM_DEV_KERNEL.contains(&key.as_str()),
                "{key} does not exist in this kernel and is neither optional ('-') nor a known Ubuntu-only key (typo?)"
            );
            absent_here.push(key.as_str());
        }
    }
    println!(
        "{} sysctls parsed; not in this dev kernel ({}): {absent_here:?}",
        settings.len(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
}

#[test]
fn network_sysctls_are_accepted_by_the_kernel_in_a_throwaway_netns() {
    // net.ipv4.* and net.ipv6.* are per network namespace: write each value in a new one (the
    // host's own settings stay untouched) and read it back, proving the kernel accepts it.
    m8trx_e2e::require_root();
    let settings = sysctls();
    let net: Vec<(&String, &String)> = settings
        .iter()
        .filter(|(k, _)| k.starts_with("net.ipv4.") || k.starts_with("net.ipv6."))
        .map(|(k, (v, _))| (k, v))
        .collect();
    assert!(net.len() >= 15, "too few network settings: {net:?}");
    let script: String = net
        .iter()
        .map(|(k, v)| {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            format!("if echo '{v}' > {path}; then echo \"SET {k} $(cat {path})\"; else echo \"FAIL {k}\"; fi\n")
        })
        .collect();
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
        .expect("running unshare -n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, v) in &net {
        assert!(
            text.lines().any(|l| l == format!("SET {k} {v}")),
            "{k} = {v} not accepted in a fresh netns:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "{} network sysctls written and read back in a throwaway netns",
        net.len()
    );
}
