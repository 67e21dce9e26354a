//! Tenant container security profiles: the Docker-format seccomp profile (`seccomp/tenant.json`)
//! and the per-tenant AppArmor profile (`apparmor/tenant.profile.tmpl`). hostd renders them,
//! installs them atomically, loads the AppArmor profile where the kernel has AppArmor, and puts
//! the returned `security_opt` references into every tenant container it creates.
//!
//! Self-contained on purpose: the rest of hostd only calls [`install`] and [`TenantProfiles::security_opt`].

use std::io::Write;
use std::path::{Path, PathBuf};

use m8trx_spec::CustomerName;

mod apparmor;
mod seccomp;

pub use apparmor::*;
pub use seccomp::*;

/// The seccomp profile every tenant container runs under, in Docker's JSON format.
pub const SECCOMP_TENANT_JSON: &str = include_str!("../../../seccomp/tenant.json");

/// The AppArmor profile template; `{{NAME}}`, `{{PROFILE}}` and `{{TENANTS_ROOT}}` are filled per tenant.
pub const APPARMOR_TEMPLATE: &str = include_str!("../../../apparmor/tenant.profile.tmpl");

/// Where every tenant's data root lives on a shared host (`<root>/<name>`).
pub const TENANTS_ROOT: &str = "/srv/m8trx/tenants";

/// File the kernel exposes when the AppArmor LSM is built in; contains `Y` when it is enabled.
pub const APPARMOR_ENABLED_FILE: &str = "/sys/module/apparmor/parameters/enabled";

/// errno values the profile uses, named for readability in code and tests.
pub const EPERM: i32 = 1;
/// ENOSYS: what clone3 returns so that libc falls back to clone.
pub const ENOSYS: i32 = 38;

/// Why a profile could not be parsed, compiled, rendered or installed; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("seccomp profile is not valid Docker-format JSON: {0}; fix seccomp/tenant.json")]
    Json(#[from] serde_json::Error),
    #[error("seccomp profile: {0}; fix seccomp/tenant.json")]
    Invalid(String),
    #[error("libseccomp refused the profile while {what}: {source}")]
    Libseccomp {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error(
        "profile {0} is not installed; run `hostd ctl create` for the tenant again to install it"
    )]
    NotInstalled(PathBuf),
    #[error("writing {path}: {source}; check that the directory is writable by hostd")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running `{command}` failed: {detail}; is the apparmor package installed and the profile valid?")]
    AppArmorParser { command: String, detail: String },
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ProfileError> {
    let io = |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, so concurrent installs of several tenants never share a temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// What hostd does with the AppArmor profile after writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppArmorLoad {
    /// Load it when the kernel has AppArmor enabled, otherwise only compile-check it.
    Auto,
    /// Only compile-check it (tests, image builds).
    Never,
}

/// The installed profiles of one tenant and how containers reference them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantProfiles {
    /// Path of the installed seccomp profile (shared by every tenant; same content).
    pub seccomp_path: PathBuf,
    /// Compact seccomp JSON that the Docker API takes in `security_opt`.
    pub seccomp_json: String,
    /// Path of the rendered AppArmor profile.
    pub apparmor_path: PathBuf,
    /// Profile name, `m8trx-tenant-<name>`.
    pub apparmor_profile: String,
    /// True when the profile was loaded into the kernel (AppArmor enabled).
    pub apparmor_loaded: bool,
}

impl TenantProfiles {
    /// The `security_opt` entries hostd puts on every tenant container.
    ///
    /// The AppArmor reference is present only when the profile is loaded: on a kernel without
    /// AppArmor dockerd has nothing to apply it with, and naming it would claim protection that is not there.
    pub fn security_opt(&self) -> Vec<String> {
        let mut opts = vec![
            "no-new-privileges".to_owned(),
            format!("seccomp={}", self.seccomp_json),
        ];
        if self.apparmor_loaded {
            opts.push(format!("apparmor={}", self.apparmor_profile));
        }
        opts
    }
}

/// Renders, checks and installs both profiles for `name` under `dir`, loading AppArmor per `load`.
///
/// Layout: `<dir>/seccomp/m8trx-tenant.json` and `<dir>/apparmor/m8trx-tenant-<name>`. The seccomp
/// profile is compiled with libseccomp and the AppArmor profile with `apparmor_parser` before
/// anything references them, so a broken profile never reaches a container.
pub fn install(
    name: &CustomerName,
    dir: &Path,
    load: AppArmorLoad,
) -> Result<TenantProfiles, ProfileError> {
    let seccomp = SeccompProfile::tenant()?;
    compile_seccomp(&seccomp)?;
    let seccomp_json = seccomp.to_compact_json()?;
    let seccomp_path = dir.join("seccomp").join("m8trx-tenant.json");
    write_atomic(&seccomp_path, SECCOMP_TENANT_JSON.as_bytes())?;

    let apparmor_profile = apparmor_profile_name(name);
    let apparmor_path = dir.join("apparmor").join(&apparmor_profile);
    write_atomic(&apparmor_path, render_apparmor(name).as_bytes())?;
    apparmor_compile_check(&apparmor_path)?;
    let apparmor_loaded = if load == AppArmorLoad::Auto && apparmor_enabled() {
        apparmor_load(&apparmor_path)?;
        true
    } else {
        false
    };
    Ok(TenantProfiles {
        seccomp_path,
        seccomp_json,
        apparmor_path,
        apparmor_profile,
        apparmor_loaded,
    })
}

/// The profiles [`install`] left for `name`, without re-installing: what a deploy references.
pub fn installed(name: &CustomerName, dir: &Path) -> Result<TenantProfiles, ProfileError> {
    let seccomp_path = dir.join("seccomp").join("m8trx-tenant.json");
    let apparmor_profile = apparmor_profile_name(name);
    let apparmor_path = dir.join("apparmor").join(&apparmor_profile);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|_| ProfileError::NotInstalled(path.to_path_buf()))
    };
    read(&apparmor_path)?;
    let seccomp_json = SeccompProfile::parse(&read(&seccomp_path)?)?.to_compact_json()?;
    // Loaded means listed by the kernel; on a host without AppArmor nothing is.
    let apparmor_loaded = apparmor_enabled()
        && std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
            .map(|list| {
                list.lines()
                    .any(|l| l.split(' ').next() == Some(apparmor_profile.as_str()))
            })
            .unwrap_or(false);
    Ok(TenantProfiles {
        seccomp_path,
        seccomp_json,
        apparmor_path,
        apparmor_profile,
        apparmor_loaded,
    })
}

/// Removes a tenant's AppArmor profile (unloading it where AppArmor is enabled); the shared
/// seccomp profile stays for the other tenants. Idempotent: a tenant already gone is not an error.
pub fn uninstall(name: &CustomerName, dir: &Path) -> Result<(), ProfileError> {
    let path = dir.join("apparmor").join(apparmor_profile_name(name));
    if !path.exists() {
        return Ok(());
    }
    if apparmor_enabled() {
        // Unload by name from the file; a profile that was never loaded makes the parser fail,
        // which is fine here: the goal is that it is not loaded afterwards.
        let _ = run_parser(&["--remove", &path.display().to_string()]);
    }
    std::fs::remove_file(&path).map_err(|source| ProfileError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libseccomp::{ScmpArch, ScmpSyscall};
    use std::collections::BTreeSet;

    fn acme() -> CustomerName {
        CustomerName::parse("acme").unwrap()
    }

    #[test]
    fn tenant_profile_parses_and_every_group_says_why() {
        let p = SeccompProfile::tenant().unwrap();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        for g in &p.syscalls {
            assert!(
                g.comment.len() > 10,
                "group {:?} has no one-line reason",
                g.names
            );
            assert!(
                !g.comment.contains('\n'),
                "reason of {:?} is not one line",
                g.names
            );
        }
    }

    #[test]
    fn no_syscall_is_both_allowed_and_denied() {
        let p = SeccompProfile::tenant().unwrap();
        let allowed = p.allowed_unconditionally();
        let denied = p.denied_with(1);
        let both: Vec<_> = allowed.intersection(&denied).collect();
        assert!(both.is_empty(), "allowed and denied at once: {both:?}");
        for must in [
            "keyctl",
            "bpf",
            "ptrace",
            "mount",
            "unshare",
            "setns",
            "io_uring_setup",
        ] {
            assert!(denied.contains(must), "{must} must be an explicit deny");
        }
    }

    #[test]
    fn every_name_is_a_syscall_libseccomp_knows_on_a_supported_arch() {
        let p = SeccompProfile::tenant().unwrap();
        let mut unknown = Vec::new();
        for g in &p.syscalls {
            for n in &g.names {
                let known = [ScmpArch::X8664, ScmpArch::Aarch64]
                    .into_iter()
                    .any(|a| ScmpSyscall::from_name_by_arch(n, a).is_ok_and(|s| i32::from(s) >= 0));
                if !known {
                    unknown.push(n.clone());
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "names no supported arch knows (typo?): {unknown:?}"
        );
    }

    /// Docker's default profile (moby `profiles/seccomp/default.json`): the names it allows to a
    /// container without added capabilities, unconditionally or with argument/arch conditions.
    const DOCKER_DEFAULT: &str = "accept accept4 access adjtimex alarm bind brk cachestat capget capset \
        chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 \
        clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect \
        copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
        epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
        exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod \
        fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock \
        fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate \
        ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu \
        getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups \
        getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom \
        getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid \
        getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr \
        inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy \
        io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit \
        io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule \
        landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen \
        listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise \
        map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock \
        mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive \
        mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv \
        msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open \
        openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free \
        pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease \
        pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv \
        recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat \
        renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask \
        rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 \
        rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max \
        sched_get_priority_min sched_getscheduler sched_rr_get_interval \
        sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam \
        sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop \
        semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 \
        setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority \
        setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit \
        set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr \
        shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn \
        socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync \
        sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun \
        timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime \
        timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit \
        umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 \
        waitid waitpid write writev \
        socket personality clone clone3 arch_prctl modify_ldt ptrace process_vm_readv process_vm_writev";

    fn on_a_supported_arch(name: &str) -> bool {
        [ScmpArch::X8664, ScmpArch::Aarch64]
            .into_iter()
            .any(|a| ScmpSyscall::from_name_by_arch(name, a).is_ok_and(|s| i32::from(s) >= 0))
    }

    #[test]
    fn starts_from_docker_default_and_every_removal_has_a_reason() {
        let p = SeccompProfile::tenant().unwrap();
        let docker: BTreeSet<&str> = DOCKER_DEFAULT.split_whitespace().collect();
        let allowed: BTreeSet<String> = p.names_where(|g| g.action == "SCMP_ACT_ALLOW");
        let explicit_deny: BTreeSet<String> = p.names_where(|g| g.action == "SCMP_ACT_ERRNO");
        let added: Vec<_> = allowed
            .iter()
            .filter(|n| !docker.contains(n.as_str()))
            .collect();
        assert!(
            added.is_empty(),
            "allowed beyond Docker's default: {added:?}"
        );
        let mut removed = Vec::new();
        let mut unverifiable = Vec::new();
        for n in &docker {
            if allowed.contains(*n) {
                continue;
            }
            if !on_a_supported_arch(n) {
                unverifiable.push(*n);
                continue;
            }
            assert!(
                explicit_deny.contains(*n),
                "{n} is in Docker's default, not allowed here, and has no deny group giving the reason"
            );
            removed.push(*n);
        }
        println!(
            "removed from Docker's default, each in a deny group with its reason: {removed:?}"
        );
        println!(
            "32-bit-only or newer than this libseccomp (denied: the 32-bit ABIs are absent, and runc \
             answers ENOSYS above the profile's highest syscall): {unverifiable:?}"
        );
        assert!(removed.len() >= 15, "{removed:?}");
    }

    #[test]
    fn compiles_for_x86_64_and_aarch64() {
        let p = SeccompProfile::tenant().unwrap();
        for arch in [ScmpArch::X8664, ScmpArch::Aarch64] {
            let c = compile_seccomp_for(&p, arch).unwrap();
            assert!(c.rules > 200, "{arch:?}: only {} rules", c.rules);
            assert!(!c.bpf().unwrap().is_empty());
        }
    }

    #[test]
    fn refuses_capability_conditions_and_missing_reasons() {
        let mut p = SeccompProfile::tenant().unwrap();
        p.syscalls[0].includes = Some(GroupFilter {
            caps: vec!["CAP_SYS_ADMIN".into()],
            ..Default::default()
        });
        assert!(compile_seccomp(&p).is_err());
        let mut p = SeccompProfile::tenant().unwrap();
        p.syscalls[0].comment.clear();
        assert!(compile_seccomp(&p).is_err());
        assert!(SeccompProfile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[],"typo":1}"#
        )
        .is_err());
    }

    /// Matches an AppArmor glob of the subset the renderer emits: literals, `*`, `?`, `[^x/]`.
    fn glob_component(pat: &str, s: &str) -> bool {
        fn go(p: &[char], s: &[char]) -> bool {
            match p.first() {
                None => s.is_empty(),
                Some('*') => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
                Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
                Some('[') => {
                    let end = p.iter().position(|c| *c == ']').unwrap();
                    let set: Vec<char> = p[2..end].to_vec(); // after "[^"
                    !s.is_empty() && !set.contains(&s[0]) && go(&p[end + 1..], &s[1..])
                }
                Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
            }
        }
        go(
            &pat.chars().collect::<Vec<_>>(),
            &s.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn other_tenant_globs_match_every_other_name_and_never_the_own() {
        for own in ["acme", "ab1", "a-b-c"] {
            let globs = other_component_globs(own);
            assert!(
                !globs.iter().any(|g| glob_component(g, own)),
                "{own} denied itself"
            );
            for other in [
                "a", "ac", "acm", "acme2", "acmf", "bob", "acme-x", "ab", "ab12", "a-b", "a-b-cd",
                "zzz",
            ] {
                if other == own {
                    continue;
                }
                assert!(
                    globs.iter().any(|g| glob_component(g, other)),
                    "{other} not denied for tenant {own}: {globs:?}"
                );
            }
        }
    }

    #[test]
    fn rendered_profile_names_the_tenant_and_denies_others() {
        let text = render_apparmor(&acme());
        assert!(text.contains("profile m8trx-tenant-acme "));
        assert!(!text.contains("{{"), "unfilled placeholder:\n{text}");
        assert!(text.contains("deny /srv/m8trx/tenants/[^a/]*{,/**} rwklmx,"));
        assert!(text.contains("deny /srv/m8trx/tenants/acme?*{,/**} rwklmx,"));
    }

    #[test]
    fn security_opt_carries_json_content_and_apparmor_only_when_loaded() {
        let mut t = TenantProfiles {
            seccomp_path: "/x".into(),
            seccomp_json: SeccompProfile::tenant().unwrap().to_compact_json().unwrap(),
            apparmor_path: "/y".into(),
            apparmor_profile: "m8trx-tenant-acme".into(),
            apparmor_loaded: false,
        };
        let opts = t.security_opt();
        assert_eq!(opts[0], "no-new-privileges");
        let json = opts[1].strip_prefix("seccomp=").unwrap();
        assert_eq!(
            SeccompProfile::parse(json).unwrap(),
            SeccompProfile::tenant().unwrap()
        );
        assert_eq!(opts.len(), 2);
        t.apparmor_loaded = true;
        assert_eq!(t.security_opt()[2], "apparmor=m8trx-tenant-acme");
    }

    #[test]
    fn write_atomic_replaces_without_leftovers() {
        let dir = std::env::temp_dir().join(format!("m8trx-profiles-{}", std::process::id()));
        let path = dir.join("sub").join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let entries: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(entries.len(), 1, "temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
