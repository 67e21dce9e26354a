//! m8trx syscall probe: a std-only program the profile tests compile statically with rustc
//! (`rustc -O -C target-feature=+crt-static`) and run on the host under the compiled seccomp
//! filter, or copied into a container. It prints one line per check; the tests parse them.
//!
//! Modes:
//!   deny NAME=NR...   call each syscall with invalid arguments; print `DENY NAME RET ERRNO`
//!   ns                namespace, socket-family and personality attempts; print `NS WHAT RET ERRNO`
//!   workload DIR      the normal syscalls of a web stack; print `OK WHAT` or `FAIL WHAT ERROR`,
//!                     exit 0 only when every check passed
//!   mac               sockets seccomp lets through, for the tenant AppArmor profile to judge:
//!                     inet raw (refused, audited), netlink dgram and inet stream (allowed);
//!                     print `MAC WHAT RET ERRNO`
//!   true              exit 0 (the child of the fork/exec check)

use std::ffi::{c_int, c_long, c_void};
use std::io::{Read, Write};
use std::process::ExitCode;

extern "C" {
    fn syscall(num: c_long, ...) -> c_long;
    fn unshare(flags: c_int) -> c_int;
    fn setns(fd: c_int, nstype: c_int) -> c_int;
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn personality(persona: std::ffi::c_ulong) -> c_int;
    fn epoll_create1(flags: c_int) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut EpollEvent) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut EpollEvent, max: c_int, timeout: c_int) -> c_int;
    fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn eventfd(init: u32, flags: c_int) -> c_int;
    fn timerfd_create(clock: c_int, flags: c_int) -> c_int;
    fn memfd_create(name: *const u8, flags: u32) -> c_int;
    fn getrandom(buf: *mut c_void, n: usize, flags: u32) -> isize;
    fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void;
    fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
    fn shmget(key: c_int, size: usize, flags: c_int) -> c_int;
    fn shmctl(id: c_int, cmd: c_int, buf: *mut c_void) -> c_int;
    fn prctl(option: c_int, arg2: std::ffi::c_ulong, ...) -> c_int;
    fn sched_yield() -> c_int;
    fn _exit(code: c_int) -> !;
}

#[repr(C, packed)]
#[cfg(target_arch = "x86_64")]
struct EpollEvent {
    events: u32,
    data: u64,
}
#[repr(C)]
#[cfg(not(target_arch = "x86_64"))]
struct EpollEvent {
    events: u32,
    data: u64,
}

#[cfg(target_arch = "x86_64")]
const SYS_CLONE: c_long = 56;
#[cfg(target_arch = "aarch64")]
const SYS_CLONE: c_long = 220;
const SYS_CLONE3: c_long = 435;

const CLONE_NEWNS: c_long = 0x0002_0000;
const CLONE_NEWUSER: c_long = 0x1000_0000;
const CLONE_NEWNET: c_long = 0x4000_0000;
const CLONE_NEWPID: c_long = 0x2000_0000;
const SIGCHLD: c_long = 17;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Calls a raw syscall with six arguments and returns (ret, errno).
fn raw(nr: c_long, a: [c_long; 6]) -> (c_long, i32) {
    let r = unsafe { syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    (r, if r < 0 { errno() } else { 0 })
}

/// After a clone that unexpectedly succeeded, the child must leave at once.
fn reap_or_exit(r: c_long) {
    if r == 0 {
        unsafe { _exit(0) };
    }
}

fn deny(specs: &[String]) -> ExitCode {
    for spec in specs {
        let Some((name, nr)) = spec.split_once('=') else {
            eprintln!("bad spec {spec:?}, want NAME=NR");
            return ExitCode::from(2);
        };
        let Ok(nr) = nr.parse::<c_long>() else {
            eprintln!("bad syscall number in {spec:?}");
            return ExitCode::from(2);
        };
        // Invalid arguments everywhere, so that a call the filter failed to stop still does nothing.
        // init_module with length 0 is refused before any allocation.
        let args = if name == "init_module" { [0; 6] } else { [-1; 6] };
        let (r, e) = raw(nr, args);
        println!("DENY {name} {r} {e}");
    }
    ExitCode::SUCCESS
}

fn report(what: &str, r: c_long) {
    let e = if r < 0 { errno() } else { 0 };
    println!("NS {what} {r} {e}");
}

fn ns() -> ExitCode {
    report("unshare_user", unsafe { unshare(CLONE_NEWUSER as c_int) } as c_long);
    report("unshare_mount", unsafe { unshare(CLONE_NEWNS as c_int) } as c_long);
    report("unshare_net", unsafe { unshare(CLONE_NEWNET as c_int) } as c_long);
    report("setns", unsafe { setns(0, 0) } as c_long);
    for (what, flags) in [
        ("clone_newuser", CLONE_NEWUSER),
        ("clone_newns", CLONE_NEWNS),
        ("clone_newpid", CLONE_NEWPID),
        ("clone_newnet", CLONE_NEWNET),
    ] {
        let (r, e) = raw(SYS_CLONE, [flags | SIGCHLD, 0, 0, 0, 0, 0]);
        reap_or_exit(r);
        println!("NS {what} {r} {e}");
    }
    // clone3 with a zeroed struct clone_args of the v0 size (64 bytes).
    let args = [0u64; 8];
    let (r, e) = raw(SYS_CLONE3, [args.as_ptr() as c_long, 64, 0, 0, 0, 0]);
    reap_or_exit(r);
    println!("NS clone3 {r} {e}");
    for (what, domain, ty) in [
        ("socket_vsock", 40, 1),
        ("socket_alg", 38, 5),
        ("socket_packet", 17, 3),
        ("socket_key", 15, 3),
        ("socket_inet", 2, 1),
    ] {
        let fd = unsafe { socket(domain, ty, 0) };
        report(what, fd as c_long);
        if fd >= 0 {
            unsafe { close(fd) };
        }
    }
    report("personality_read_implies_exec", unsafe { personality(0x0040_0000) } as c_long);
    report("personality_query", unsafe { personality(0xffff_ffff) } as c_long);
    ExitCode::SUCCESS
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, f: impl FnOnce() -> Result<(), String>) {
        match f() {
            Ok(()) => println!("OK {what}"),
            Err(e) => {
                self.failed += 1;
                println!("FAIL {what} {e}");
            }
        }
    }
}

fn fd_ok(what: &str, fd: c_int) -> Result<c_int, String> {
    if fd < 0 {
        Err(format!("{what}: errno {}", errno()))
    } else {
        Ok(fd)
    }
}

fn workload(dir: &str) -> ExitCode {
    let mut c = Checks { failed: 0 };
    let dir = std::path::PathBuf::from(dir);
    c.check("file_io", || {
        let p = dir.join("probe-file");
        let mut f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
        f.write_all(b"tenant data").map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        let q = dir.join("probe-file-renamed");
        std::fs::rename(&p, &q).map_err(|e| e.to_string())?;
        let mut s = String::new();
        std::fs::File::open(&q)
            .and_then(|mut f| f.read_to_string(&mut s))
            .map_err(|e| e.to_string())?;
        let listed = std::fs::read_dir(&dir).map_err(|e| e.to_string())?.count();
        std::fs::remove_file(&q).map_err(|e| e.to_string())?;
        if s == "tenant data" && listed >= 1 {
            Ok(())
        } else {
            Err(format!("read back {s:?}, {listed} entries"))
        }
    });
    c.check("mmap_mprotect_munmap", || unsafe {
        let len = 1 << 20;
        let p = mmap(std::ptr::null_mut(), len, 3, 0x22, -1, 0);
        if p as isize == -1 {
            return Err(format!("mmap errno {}", errno()));
        }
        std::ptr::write_bytes(p as *mut u8, 7, len);
        if mprotect(p, len, 1) != 0 || munmap(p, len) != 0 {
            return Err(format!("errno {}", errno()));
        }
        let v = vec![1u8; 64 << 20];
        if v.iter().step_by(4096).all(|b| *b == 1) {
            Ok(())
        } else {
            Err("heap".into())
        }
    });
    c.check("threads_futex", || {
        let pair = std::sync::Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pair = pair.clone();
                std::thread::spawn(move || {
                    let (m, cv) = &*pair;
                    *m.lock().map_err(|e| e.to_string())? += 1;
                    cv.notify_all();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    Ok::<(), String>(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "thread panicked".to_string())??;
        }
        let (m, _) = &*pair;
        let n = *m.lock().map_err(|e| e.to_string())?;
        if n == 4 {
            Ok(())
        } else {
            Err(format!("counter {n}"))
        }
    });
    c.check("tcp_bind_listen_connect_accept", || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let mut a = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        a.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut b, _) = l.accept().map_err(|e| e.to_string())?;
        a.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).map_err(|e| e.to_string())?;
        a.shutdown(std::net::Shutdown::Both).map_err(|e| e.to_string())?;
        if &buf == b"ping" {
            Ok(())
        } else {
            Err("payload".into())
        }
    });
    c.check("udp_sendto_recvfrom", || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = s.local_addr().map_err(|e| e.to_string())?;
        s.send_to(b"dgram", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 8];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if &buf[..n] == b"dgram" {
            Ok(())
        } else {
            Err("payload".into())
        }
    });
    c.check("unix_sockets", || {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        a.write_all(b"u").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        b.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let path = dir.join("probe.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
        let _c = std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.to_string())?;
        let _s = l.accept().map_err(|e| e.to_string())?;
        std::fs::remove_file(&path).map_err(|e| e.to_string())
    });
    c.check("socket_inet6_and_netlink", || unsafe {
        let a = fd_ok("socket(AF_INET6)", socket(10, 1, 0))?;
        let b = fd_ok("socket(AF_NETLINK)", socket(16, 3, 0))?;
        close(a);
        close(b);
        Ok(())
    });
    c.check("epoll_pipe2", || unsafe {
        let mut fds = [0 as c_int; 2];
        if pipe2(fds.as_mut_ptr(), 0o2000000) != 0 {
            return Err(format!("pipe2 errno {}", errno()));
        }
        let ep = fd_ok("epoll_create1", epoll_create1(0o2000000))?;
        let mut ev = EpollEvent { events: 1, data: 42 };
        if epoll_ctl(ep, 1, fds[0], &mut ev) != 0 {
            return Err(format!("epoll_ctl errno {}", errno()));
        }
        write(fds[1], b"x".as_ptr() as *const c_void, 1);
        let mut out = [EpollEvent { events: 0, data: 0 }, EpollEvent { events: 0, data: 0 }];
        let n = epoll_wait(ep, out.as_mut_ptr(), 2, 1000);
        close(ep);
        close(fds[0]);
        close(fds[1]);
        let data = out[0].data;
        if n == 1 && data == 42 {
            Ok(())
        } else {
            Err(format!("epoll_wait returned {n}, errno {}", errno()))
        }
    });
    c.check("eventfd_timerfd_memfd", || unsafe {
        let a = fd_ok("eventfd", eventfd(0, 0))?;
        let b = fd_ok("timerfd_create", timerfd_create(1, 0))?;
        let m = fd_ok("memfd_create", memfd_create(b"probe\0".as_ptr(), 0))?;
        close(a);
        close(b);
        close(m);
        Ok(())
    });
    c.check("getrandom_clock_sleep_yield", || unsafe {
        let mut buf = [0u8; 32];
        if getrandom(buf.as_mut_ptr() as *mut c_void, 32, 0) != 32 {
            return Err(format!("getrandom errno {}", errno()));
        }
        let t = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        sched_yield();
        let _ = std::time::SystemTime::now();
        if t.elapsed() >= std::time::Duration::from_millis(2) {
            Ok(())
        } else {
            Err("clock".into())
        }
    });
    c.check("prctl_set_name", || unsafe {
        if prctl(15, b"probe\0".as_ptr() as std::ffi::c_ulong, 0, 0, 0) == 0 {
            Ok(())
        } else {
            Err(format!("errno {}", errno()))
        }
    });
    c.check("sysv_shm", || unsafe {
        let id = shmget(0, 4096, 0o1000 | 0o600);
        if id < 0 {
            return Err(format!("shmget errno {}", errno()));
        }
        if shmctl(id, 0, std::ptr::null_mut()) == 0 {
            Ok(())
        } else {
            Err(format!("shmctl errno {}", errno()))
        }
    });
    c.check("fork_exec_wait", || {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let st = std::process::Command::new(exe)
            .arg("true")
            .status()
            .map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("child {st}"))
        }
    });
    if c.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn mac() -> ExitCode {
    for (what, domain, ty, proto) in [
        ("socket_inet_raw", 2, 3, 1),
        ("socket_netlink_dgram", 16, 2, 0),
        ("socket_inet_stream", 2, 1, 0),
    ] {
        let fd = unsafe { socket(domain, ty, proto) };
        let e = if fd < 0 { errno() } else { 0 };
        println!("MAC {what} {fd} {e}");
        if fd >= 0 {
            unsafe { close(fd) };
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("deny") => deny(&args[1..]),
        Some("ns") => ns(),
        Some("mac") => mac(),
        Some("workload") => workload(args.get(1).map(String::as_str).unwrap_or("/tmp")),
        Some("true") => ExitCode::SUCCESS,
        _ => {
            eprintln!("usage: probe deny NAME=NR... | ns | mac | workload DIR | true");
            ExitCode::from(2)
        }
    }
}
