//! The per-tenant AppArmor profile: every rendered profile compiles with `apparmor_parser` in
//! skip-kernel-load mode and carries the rules the platform needs; `hostd::profiles::install`
//! writes it atomically; and where the kernel has AppArmor it is loaded and a denied access is
//! proven. On a kernel without AppArmor (this project's dev and CI machines) the enforcement test
//! asserts that the kernel really lacks it and says so, instead of skipping silently.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use hostd::profiles::{
    apparmor_compile_check, apparmor_enabled, apparmor_profile_name, install, render_apparmor,
    render_apparmor_with_root, AppArmorLoad, APPARMOR_ENABLED_FILE,
};
use m8trx_spec::CustomerName;

/// Names covering the rule's edges: shortest, longest, digits, dashes, shared prefixes.
const NAMES: [&str; 7] = [
    "abc",
    "acme",
    "acme2",
    "a-b-c",
    "tenant-42",
    "z0123456789abcdefghijklmnopqrstu",
    "m8trx-demo",
];

fn scratch(what: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("profiles-apparmor-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles with apparmor_parser into a binary policy file and returns its size.
fn compile_to_binary(profile: &Path) -> u64 {
    let out = profile.with_extension("bin");
    let st = Command::new("apparmor_parser")
        .args(["--skip-kernel-load", "--skip-cache", "--quiet", "-o"])
        .arg(&out)
        .arg(profile)
        .output()
        .expect("running apparmor_parser (Debian package apparmor)");
    assert!(
        st.status.success(),
        "apparmor_parser rejected {}:\n{}",
        profile.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::metadata(&out).unwrap().len()
}

#[test]
fn every_rendered_profile_compiles_with_apparmor_parser() {
    let dir = scratch("compile");
    for n in NAMES {
        let name = CustomerName::parse(n).unwrap();
        let path = dir.join(apparmor_profile_name(&name));
        std::fs::write(&path, render_apparmor(&name)).unwrap();
        let size = compile_to_binary(&path);
        println!("{}: compiled to {size} bytes of policy", path.display());
        assert!(size > 1000, "{n}: suspiciously small policy ({size} bytes)");
        apparmor_compile_check(&path).unwrap();
    }
}

#[test]
fn a_broken_profile_is_refused_so_the_compile_check_can_fail() {
    let dir = scratch("broken");
    let name = CustomerName::parse("acme").unwrap();
    let path = dir.join("broken");
    std::fs::write(
        &path,
        render_apparmor(&name).replace("deny mount,", "deny mount"),
    )
    .unwrap();
    let err = apparmor_compile_check(&path).expect_err("a profile with a syntax error compiled");
    println!("refused as expected: {err}");
}

#[test]
fn rendered_profile_has_the_tenant_rules() {
    let name = CustomerName::parse("acme").unwrap();
    let text = render_apparmor(&name);
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |r: &str| rules.contains(&r);
    assert!(
        text.contains("profile m8trx-tenant-acme flags=(attach_disconnected,mediate_deleted) {")
    );
    for rule in [
        "file,",
        "/srv/m8trx/tenants/acme/** rwlk,",
        "deny /srv/m8trx/tenants/ rwklmx,",
        "deny /srv/m8trx/tenants/[^a/]*{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/a[^c/]*{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/ac[^m/]*{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/acm[^e/]*{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/acme?*{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/a{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/ac{,/**} rwklmx,",
        "deny /srv/m8trx/tenants/acm{,/**} rwklmx,",
        "deny mount,",
        "deny umount,",
        "deny remount,",
        "deny pivot_root,",
        "deny @{PROC}/sys/** wklx,",
        "deny /sys/** wklx,",
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/kcore rwklx,",
        "audit deny network inet raw,",
        "audit deny network inet6 raw,",
        "audit deny network packet,",
        "network netlink raw,",
        "ptrace (trace,read,tracedby,readby) peer=m8trx-tenant-acme,",
        "signal (send,receive) peer=m8trx-tenant-acme,",
    ] {
        assert!(has(rule), "rule missing: {rule}\n{text}");
    }
    // ptrace only within the profile: no other ptrace rule, no blanket capability or network rule.
    let ptrace: Vec<_> = rules.iter().filter(|l| l.contains("ptrace")).collect();
    assert_eq!(ptrace.len(), 1, "ptrace rules: {ptrace:?}");
    for forbidden in ["capability,", "network,", "mount,", "ptrace,", "umount,"] {
        assert!(!has(forbidden), "blanket allow rule present: {forbidden}");
    }
    for cap in [
        "sys_admin",
        "sys_ptrace",
        "sys_module",
        "net_admin",
        "net_raw",
        "mknod",
    ] {
        assert!(
            !rules
                .iter()
                .any(|l| l.starts_with("capability") && l.contains(cap)),
            "capability {cap} allowed"
        );
    }
    // Another tenant's profile allows its own root and denies acme's.
    let bob = render_apparmor(&CustomerName::parse("bob").unwrap());
    assert!(bob.contains("  /srv/m8trx/tenants/bob/** rwlk,"));
    assert!(bob.contains("deny /srv/m8trx/tenants/[^b/]*{,/**} rwklmx,"));
}

#[test]
fn install_writes_both_profiles_and_returns_the_references() {
    let dir = scratch("install");
    let name = CustomerName::parse("acme").unwrap();
    let p = install(&name, &dir, AppArmorLoad::Never).unwrap();
    assert_eq!(p.apparmor_profile, "m8trx-tenant-acme");
    assert_eq!(p.apparmor_path, dir.join("apparmor/m8trx-tenant-acme"));
    assert_eq!(
        std::fs::read_to_string(&p.apparmor_path).unwrap(),
        render_apparmor(&name)
    );
    assert_eq!(
        std::fs::read_to_string(&p.seccomp_path).unwrap(),
        hostd::profiles::SECCOMP_TENANT_JSON
    );
    assert!(!p.apparmor_loaded);
    let opts = p.security_opt();
    assert_eq!(opts[0], "no-new-privileges");
    assert!(opts[1].starts_with("seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\""));
    // Reinstalling replaces in place and leaves no temporary files behind.
    install(&name, &dir, AppArmorLoad::Never).unwrap();
    for sub in ["apparmor", "seccomp"] {
        let names: Vec<String> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{sub}: {names:?}");
    }
    // Destroy: the tenant's AppArmor profile goes, the shared seccomp profile stays; twice is fine.
    hostd::profiles::uninstall(&name, &dir).unwrap();
    assert!(!p.apparmor_path.exists());
    assert!(p.seccomp_path.exists());
    hostd::profiles::uninstall(&name, &dir).unwrap();
}

fn aa_exec(profile: &str, script: &str) -> std::process::Output {
    Command::new("aa-exec")
        .args(["-p", profile, "--", "/bin/sh", "-c", script])
        .output()
        .expect("running aa-exec")
}

#[test]
fn enforcement_where_the_kernel_has_apparmor() {
    if !apparmor_enabled() {
        // Not a silent skip: prove the kernel truly has no AppArmor, and say so.
        let module = std::fs::read_to_string(APPARMOR_ENABLED_FILE);
        let securityfs = Path::new("/sys/kernel/security/apparmor").exists();
        let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        assert!(
            module.as_deref().map(str::trim).ok() != Some("Y") && !securityfs && !lsm.contains("apparmor"),
            "apparmor_enabled() is false but the kernel shows AppArmor: {module:?}, securityfs {securityfs}, lsm {lsm:?}"
        );
        let name = CustomerName::parse("acme").unwrap();
        let dir = scratch("noload");
        let path = dir.join("m8trx-tenant-acme");
        std::fs::write(&path, render_apparmor(&name)).unwrap();
        let load = hostd::profiles::apparmor_load(&path);
        assert!(
            load.is_err(),
            "loading succeeded on a kernel without AppArmor"
        );
        println!(
            "AppArmor is NOT enabled in this kernel ({} {}; {APPARMOR_ENABLED_FILE}: {module:?}; \
             /sys/kernel/security/apparmor present: {securityfs}; lsm: {:?}); loading is refused \
             ({}), so enforcement cannot be proven on this machine. The profiles are compiled and \
             their rules checked by the other tests; this test loads and enforces them where the \
             kernel has AppArmor (production Ubuntu).",
            std::env::consts::OS,
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            lsm.trim(),
            load.unwrap_err()
        );
        return;
    }

    // AppArmor is enabled: load a tenant profile whose tenants root is a scratch directory and
    // prove that its own data is readable, another tenant's is not, and /proc/sys is not writable.
    let root = scratch("enforce").join("tenants");
    for (t, f) in [("acme", "own.txt"), ("bob", "secret.txt")] {
        std::fs::create_dir_all(root.join(t)).unwrap();
        std::fs::write(root.join(t).join(f), format!("{t} data\n")).unwrap();
    }
    let name = CustomerName::parse("acme").unwrap();
    let profile = apparmor_profile_name(&name);
    let path = root.parent().unwrap().join(&profile);
    std::fs::write(
        &path,
        render_apparmor_with_root(&name, &root.display().to_string()),
    )
    .unwrap();
    hostd::profiles::apparmor_load(&path).unwrap();

    let own = aa_exec(&profile, &format!("cat {}/acme/own.txt", root.display()));
    let other = aa_exec(&profile, &format!("cat {}/bob/secret.txt", root.display()));
    let sysctl = aa_exec(
        &profile,
        "cat /proc/sys/kernel/hostname > /tmp/h && cat /tmp/h > /proc/sys/kernel/hostname",
    );
    let _ = Command::new("apparmor_parser")
        .arg("-R")
        .arg(&path)
        .status();

    assert!(own.status.success(), "own data unreadable: {own:?}");
    assert_eq!(String::from_utf8_lossy(&own.stdout), "acme data\n");
    assert!(
        !other.status.success(),
        "another tenant's data was readable: {other:?}"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{other:?}"
    );
    assert!(
        !sysctl.status.success(),
        "/proc/sys was writable: {sysctl:?}"
    );
    println!("AppArmor enabled: own data read, other tenant's data and /proc/sys write denied");
}
