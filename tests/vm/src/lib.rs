//! The production-shaped guest of the VM test tier: qemu-system-x86_64 booting the Debian 12
//! image `scripts/vm-image` made (systemd as PID 1, cgroup v2 only, AppArmor, nf_tables
//! iptables), driven through qemu-guest-agent on a virtio-serial channel. The guest's only
//! network is qemu's user network with `restrict=on`: no route out of this machine; the one
//! forward is the moto server on the host's loopback, which stands in for AWS.
//!
//! KVM is used where it works; where `/dev/kvm` exists but a guest makes no progress (a
//! nested guest that hangs at kernel entry), the harness falls back to TCG and remembers the
//! verdict in `$M8TRX_TEST_HOME/vm/accel`. `M8TRX_VM_ACCEL=kvm|tcg` decides outright.
//! `M8TRX_VM_KEEP=1` leaves a guest whose test failed running, for inspection through its
//! agent socket.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test harness: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// Where the guest reaches the host's moto server (qemu `guestfwd`, a `busybox nc` to the
/// host's loopback per connection).
pub const GUEST_MOTO: &str = "10.0.2.100:5055";
/// Mount tag of the read-only share holding what the test stages for the guest.
pub const SHARE_TAG: &str = "m8trx";
/// Where the guest mounts that share.
pub const SHARE_MOUNT: &str = "/mnt/m8trx";
/// Serial number of the NVMe disk standing in for an attached EBS volume: on Nitro the
/// serial is the volume id without its dash, which is how hostd finds the device.
pub const EBS_SERIAL: &str = "vol0123456789abcdef0";
/// The EBS volume id of that disk.
pub const EBS_VOLUME_ID: &str = "vol-0123456789abcdef0";

/// What one guest command did.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i64,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Out {
    /// stdout and stderr, for failure messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A running guest; killed (and its overlay disk removed) on drop.
pub struct Vm {
    child: Option<Child>,
    dir: PathBuf,
    accel: String,
    /// Seconds from qemu's start to the guest agent answering, for the closing note.
    pub boot_secs: f64,
}

fn qga_socket(dir: &Path) -> PathBuf {
    dir.join("qga.sock")
}

/// The image directory `scripts/vm-image` prints (building it when its inputs changed).
pub fn image_dir(repo: &Path) -> PathBuf {
    let out = Command::new(repo.join("scripts/vm-image"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/vm-image");
    assert!(
        out.status.success(),
        "scripts/vm-image failed (see its log above)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Vm {
    /// Boots a fresh guest from `image` (a copy-on-write overlay in `dir`), sharing `share`
    /// read-only, with `cpus` vCPUs and `mem_mib` of memory; returns once the guest agent
    /// answers and systemd has finished booting.
    pub fn boot(image: &Path, share: &Path, dir: &Path, cpus: u32, mem_mib: u32) -> Vm {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let overlay = dir.join("disk.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.join("base.raw"))
            .arg(&overlay)
            .status()
            .expect("qemu-img (qemu-utils)");
        assert!(st.success(), "qemu-img create of the overlay failed");
        let ebs = dir.join("ebs.raw");
        std::fs::File::create(&ebs)
            .and_then(|f| f.set_len(4 << 30))
            .unwrap();
        let accel = choose_accel();
        let mut vm = Vm {
            child: None,
            dir: dir.to_path_buf(),
            accel,
            boot_secs: 0.0,
        };
        let started = Instant::now();
        vm.spawn(image, share, cpus, mem_mib);
        if vm.accel == "kvm" && !vm.kernel_started(Duration::from_secs(20)) {
            eprintln!("vm: KVM guest made no progress within 20 s; falling back to TCG");
            vm.kill();
            remember_accel("tcg");
            vm.accel = "tcg".into();
            vm.spawn(image, share, cpus, mem_mib);
        } else if vm.accel == "kvm" {
            remember_accel("kvm");
        }
        vm.wait_booted(Duration::from_secs(600));
        vm.boot_secs = started.elapsed().as_secs_f64();
        vm
    }

    fn spawn(&mut self, image: &Path, share: &Path, cpus: u32, mem_mib: u32) {
        let _ = std::fs::remove_file(qga_socket(&self.dir));
        let console = self.dir.join("console.log");
        let _ = std::fs::remove_file(&console);
        let machine = format!("q35,accel={}", self.accel);
        let cpu = if self.accel == "kvm" { "host" } else { "max" };
        let moto = std::env::var("M8TRX_MOTO_ENDPOINT").unwrap_or_default();
        let moto_port = moto.rsplit(':').next().unwrap_or("5055").to_owned();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", &machine, "-cpu", cpu])
            .args(["-smp", &cpus.to_string(), "-m", &mem_mib.to_string()])
            .args(["-nographic", "-display", "none", "-monitor", "none"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .args(["-append", "root=/dev/vda rw console=ttyS0 loglevel=5"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                self.dir.join("disk.qcow2").display()
            ))
            // The stand-in for an attached EBS volume: an NVMe disk with the volume's serial.
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=ebs0,format=raw,cache=unsafe",
                self.dir.join("ebs.raw").display()
            ))
            .arg("-device")
            .arg(format!("nvme,serial={EBS_SERIAL},drive=ebs0"))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,guestfwd=tcp:{GUEST_MOTO}-cmd:busybox nc 127.0.0.1 {moto_port}"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag={SHARE_TAG},security_model=none,readonly=on",
                share.display()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                qga_socket(&self.dir).display()
            ))
            .args(["-device", "virtio-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("qemu.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("starting qemu-system-x86_64 (qemu-system-x86, installed by scripts/test-env)");
        self.child = Some(child);
    }

    fn kernel_started(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // A guest that hangs at kernel entry gets as far as the firmware's banner but the
            // kernel never prints its first line.
            let log = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
            if log.contains("Linux version") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The accelerator the guest runs on (`kvm` or `tcg`).
    pub fn accel(&self) -> &str {
        &self.accel
    }

    /// The guest's serial console so far (boot log), for failure messages.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the agent answers and `systemctl is-system-running` has settled.
    fn wait_booted(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            assert!(
                self.alive(),
                "qemu exited during boot; console:\n{}\nqemu log:\n{}",
                tail(&self.console(), 40),
                std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
            );
            if let Ok(out) = self.try_sh(
                "systemctl is-system-running --wait",
                Duration::from_secs(120),
            ) {
                let state = out.stdout.trim().to_owned();
                if state == "running" || state == "degraded" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not finish booting within {}s; console:\n{}",
                within.as_secs(),
                tail(&self.console(), 40)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Runs `script` under `/bin/sh -c` in the guest, as root; fails only when the agent
    /// cannot be reached or the command outlives `timeout`.
    pub fn try_sh(&self, script: &str, timeout: Duration) -> Result<Out, String> {
        let mut agent = Agent::connect(&qga_socket(&self.dir))?;
        let r = agent.call(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
        )?;
        let pid = r["pid"].as_i64().ok_or("guest-exec returned no pid")?;
        drop(agent);
        let deadline = Instant::now() + timeout;
        loop {
            // A connection per poll: the agent serves one client at a time, and an operator
            // inspecting a slow step (M8TRX_VM_KEEP) gets a turn in between.
            let st = Agent::connect(&qga_socket(&self.dir))?
                .call("guest-exec-status", json!({ "pid": pid }))?;
            if st["exited"].as_bool() == Some(true) {
                let dec = |k: &str| {
                    st[k]
                        .as_str()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok(Out {
                    code: st["exitcode"].as_i64().unwrap_or(-1),
                    stdout: dec("out-data"),
                    stderr: dec("err-data"),
                });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "guest command did not finish within {}s: {script}",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `script` in the guest (10 minutes at most) and returns what it did.
    pub fn sh(&self, script: &str) -> Out {
        self.try_sh(script, Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", tail(&self.console(), 20)))
    }

    /// Runs `script` in the guest and returns its stdout; any non-zero exit fails the test,
    /// with the host's units and their recent logs (`diagnostics`).
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if out.code != 0 {
            panic!(
                "guest command failed ({}): {script}\n{}\n{}",
                out.code,
                out.text(),
                self.diagnostics()
            );
        }
        out.stdout
    }

    /// What an operator would look at first when a check fails: the state of the m8trx units,
    /// any failed unit, and the last lines of each daemon's journal for this boot. Never panics:
    /// a guest that does not answer says so.
    pub fn diagnostics(&self) -> String {
        const SCRIPT: &str = "echo '--- failed units'; systemctl --failed --no-legend --no-pager; \
            echo '--- m8trx units'; systemctl list-units --all --no-legend --no-pager 'm8trx*' hostd.service sni-proxy.service cred-broker.service vm-imds-standin.service; \
            for u in m8trx-instance-env sni-proxy hostd cred-broker; do echo \"--- journal $u\"; journalctl -b -u $u.service --no-pager -n 25 -o short-monotonic; done";
        match self.try_sh(SCRIPT, Duration::from_secs(60)) {
            Ok(out) => format!("guest diagnostics:\n{}", tail(&out.text(), 150)),
            Err(e) => format!("guest diagnostics unavailable: {e}"),
        }
    }

    /// Reboots the guest (`systemctl reboot`) and waits until it has booted again.
    pub fn reboot(&mut self) -> f64 {
        let before = self.ok("cat /proc/sys/kernel/random/boot_id");
        // The agent may not answer a command that reboots its own guest.
        let _ = self.try_sh("systemctl reboot", Duration::from_secs(5));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(600);
        loop {
            assert!(self.alive(), "qemu exited during the reboot");
            if let Ok(out) = self.try_sh(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(10),
            ) {
                if out.code == 0 && out.stdout != before {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not come back within 600 s; console:\n{}",
                tail(&self.console(), 40)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        self.wait_booted(Duration::from_secs(600));
        started.elapsed().as_secs_f64()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("M8TRX_VM_KEEP").is_some() {
            eprintln!(
                "vm: M8TRX_VM_KEEP is set: the failed guest keeps running (qemu pid {}); its agent socket is {}",
                self.child.as_ref().map_or(0, Child::id),
                qga_socket(&self.dir).display()
            );
            if let Some(c) = self.child.take() {
                std::mem::forget(c);
            }
            return;
        }
        if self.alive() {
            let _ = self.try_sh("systemctl poweroff", Duration::from_secs(5));
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.kill();
        for f in ["disk.qcow2", "ebs.raw"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }
}

fn accel_file() -> PathBuf {
    let home = std::env::var("M8TRX_TEST_HOME").unwrap_or_else(|_| "/var/lib/m8trx-test".into());
    PathBuf::from(home).join("vm/accel")
}

fn choose_accel() -> String {
    if let Ok(a) = std::env::var("M8TRX_VM_ACCEL") {
        assert!(
            a == "kvm" || a == "tcg",
            "M8TRX_VM_ACCEL must be kvm or tcg, got {a:?}"
        );
        return a;
    }
    if let Ok(a) = std::fs::read_to_string(accel_file()) {
        let a = a.trim();
        if a == "kvm" || a == "tcg" {
            return a.to_owned();
        }
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        "kvm".into()
    } else {
        "tcg".into()
    }
}

fn remember_accel(a: &str) {
    let _ = std::fs::write(accel_file(), a);
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One connection to qemu-guest-agent (JSON lines over the virtio-serial socket).
struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// qemu serves one client of the socket at a time and leaves the others waiting in its
    /// backlog, where a read timeout runs out (seen in CI with tenants set up side by side):
    /// the threads of a test take turns instead.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Whose turn it is to talk to the guest agent.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Agent {
    fn connect(path: &Path) -> Result<Agent, String> {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let s = UnixStream::connect(path)
            .map_err(|e| format!("guest agent {}: {e}", path.display()))?;
        // A guest under TCG busy loading images answers slowly; no other client waits here.
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut a = Agent {
            reader: BufReader::new(s),
            writer,
            _turn: turn,
        };
        // guest-sync discards whatever an earlier, interrupted client left in the channel.
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        let id = i64::from(std::process::id()) * 1_000_000
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = a.call("guest-sync", json!({ "id": id }))?;
        if r.as_i64() != Some(id) {
            return Err(format!("guest-sync answered {r}, expected {id}"));
        }
        Ok(a)
    }

    fn call(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{msg}").map_err(|e| format!("{cmd}: {e}"))?;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("{cmd}: no answer from the guest agent: {e}"))?;
            if n == 0 {
                return Err(format!("{cmd}: the guest agent closed the channel"));
            }
            let Ok(v) = serde_json::from_str::<Value>(line.trim_start_matches('\u{ff}')) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                return Err(format!("{cmd}: {e}"));
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }
}
