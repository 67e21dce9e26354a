//! Shared by the integration tests: a real Caddy as the tenant backend (its own certificate,
//! `proxy_protocol` listener wrapper), the `sni-proxy` binary, and small clients.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // test harness: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir, unique to this process and call.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sni-proxy-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released; the race is harmless on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion, with a hard time bound.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish in {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A self-signed certificate for `name` and `*.name`, made with openssl: the tenant's own.
pub fn make_cert(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{name},DNS:*.{name}")),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The DER bytes of a PEM certificate, via openssl.
pub fn cert_der(cert: &Path) -> Vec<u8> {
    let out = run(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    out.stdout
}

/// A child process killed when the test ends.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Lines it wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` with stdout discarded and stderr collected.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = collect_stderr(&mut child);
        Proc { child, stderr }
    }

    /// All stderr lines so far, joined.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains every one of `needles`; returns that line.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no log line with {needles:?} within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by pid (only to this child).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

/// A running real Caddy serving `name` on `port` with the tenant's own certificate.
pub struct Caddy {
    /// The process.
    pub proc: Proc,
    /// HTTPS port (expects a PROXY v2 header from 127.0.0.1).
    pub port: u16,
    /// Plain HTTP port (ACME HTTP-01 backend for :80 tests).
    pub http_port: u16,
    /// Caddy's JSON access log.
    pub access_log: PathBuf,
    /// The certificate Caddy serves.
    pub cert: PathBuf,
}

impl Caddy {
    /// Starts Caddy (M8TRX_CADDY_BIN) in `dir`; `big` bytes are served at /big.bin.
    pub fn start(dir: &TempDir, name: &str, big: usize) -> Caddy {
        let bin = std::env::var("M8TRX_CADDY_BIN").unwrap_or_else(|_| {
            panic!(
                "M8TRX_CADDY_BIN is not set: these tests need the real Caddy of the test \
                 environment. Run `make test`, or `scripts/test-env` and source /var/lib/m8trx-test/env."
            )
        });
        let (cert, key) = make_cert(dir, name);
        let www = dir.join("www");
        std::fs::create_dir_all(www.join(".well-known/acme-challenge")).unwrap();
        std::fs::write(
            www.join(".well-known/acme-challenge/tok123"),
            "tok123.thumbprint",
        )
        .unwrap();
        let mut f = std::fs::File::create(www.join("big.bin")).unwrap();
        let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut left = big;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        let (port, http_port) = (free_port(), free_port());
        let log = dir.join("caddy-access.log");
        let d = dir.0.display();
        let caddyfile = format!(
            r#"{{
	admin off
	auto_https off
	skip_install_trust
	storage file_system {d}/caddy-data
	http_port {http_port}
	https_port {port}
	servers :{port} {{
		listener_wrappers {{
			proxy_protocol {{
				timeout 2s
				allow 127.0.0.1/32
			}}
			tls
		}}
	}}
}}
https://{name}:{port} {{
	tls {cert} {key}
	log {{
		output file {log}
		format json
	}}
	root * {d}/www
	@files path /big.bin
	file_server @files
	respond / "hello from {name}"
}}
http://:{http_port} {{
	root * {d}/www
	file_server
}}
"#,
            cert = cert.display(),
            key = key.display(),
            log = log.display(),
        );
        let cf = dir.join("Caddyfile");
        std::fs::write(&cf, caddyfile).unwrap();
        let proc = Proc::spawn(
            Command::new(bin)
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&cf)
                .env("HOME", &dir.0)
                .env("XDG_DATA_HOME", dir.join("xdg"))
                .env("XDG_CONFIG_HOME", dir.join("xdg")),
        );
        wait_port(port, &proc);
        wait_port(http_port, &proc);
        Caddy {
            proc,
            port,
            http_port,
            access_log: log,
            cert,
        }
    }

    /// Caddy's access-log lines so far.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Waits until something listens on loopback `port`, failing with `p`'s log after 20 s.
pub fn wait_port(port: u16, p: &Proc) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {port} after 20 s; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A running `sni-proxy` and the addresses it printed on its ready line.
pub struct Proxy {
    /// The process.
    pub proc: Proc,
    /// TLS listener.
    pub tls: SocketAddr,
    /// HTTP listener, when opened.
    pub http: Option<SocketAddr>,
    /// Metrics address, when opened.
    pub metrics: Option<SocketAddr>,
    /// The routes file it reads.
    pub routes: PathBuf,
}

impl Proxy {
    /// Writes `routes_toml` and starts the proxy on loopback ephemeral ports with `extra` flags.
    pub fn start(dir: &TempDir, routes_toml: &str, extra: &[&str]) -> Proxy {
        Self::start_on(dir, routes_toml, "127.0.0.1:0", extra)
    }

    /// Like `start`, with the TLS listener on `tls` (a port chosen in advance).
    pub fn start_on(dir: &TempDir, routes_toml: &str, tls: &str, extra: &[&str]) -> Proxy {
        let routes = dir.join("routes.toml");
        std::fs::write(&routes, routes_toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sni-proxy"))
            .arg("--routes")
            .arg(&routes)
            .args(["--listen-tls", tls, "--listen-http", "127.0.0.1:0"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--watch-interval-ms",
                "200",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sni-proxy");
        let stderr = collect_stderr(&mut child);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let proc = Proc { child, stderr };
        assert!(
            line.starts_with("ready "),
            "no ready line; got {line:?}; log:\n{}",
            proc.log()
        );
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(|v| v.parse::<SocketAddr>().unwrap())
        };
        Proxy {
            tls: field("tls").unwrap(),
            http: field("http"),
            metrics: field("metrics"),
            proc,
            routes,
        }
    }

    /// GET /metrics from the admin address.
    pub fn metrics_text(&self) -> String {
        String::from_utf8(http_get(self.metrics.unwrap(), "/metrics", "localhost").1).unwrap()
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x), to look like another client.
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// True when the peer closed `s` (EOF or reset) within `limit`, without sending anything.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`; returns (head, body).
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let body = resp.get(split + 4..).unwrap_or_default().to_vec();
    (head, body)
}

/// curl through the proxy to `name`, resolving it to the proxy, verifying with `cacert`.
pub fn curl(proxy: SocketAddr, name: &str, path: &str, cacert: &Path, extra: &[&str]) -> Output {
    run(
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--cacert"])
            .arg(cacert)
            .arg("--resolve")
            .arg(format!("{name}:{}:{}", proxy.port(), proxy.ip()))
            .args(extra)
            .arg(format!("https://{name}:{}{path}", proxy.port())),
        Duration::from_secs(90),
    )
}

/// openssl s_client through the proxy; returns its combined output and success.
pub fn s_client(proxy: SocketAddr, servername: Option<&str>, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &proxy.to_string()]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    cmd.args(["-showcerts"]).args(extra);
    let out = run(&mut cmd, Duration::from_secs(20));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Captures the ClientHello openssl s_client sends (TLS 1.2 only, so the server's
/// Certificate message later comes back in clear and the test can look for it).
pub fn capture_client_hello(servername: &str) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sn = servername.to_owned();
    let client = std::thread::spawn(move || {
        run(
            Command::new("openssl").args([
                "s_client",
                "-tls1_2",
                "-connect",
                &addr.to_string(),
                "-servername",
                &sn,
            ]),
            Duration::from_secs(20),
        )
    });
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 0x16, "openssl did not open with a handshake record");
    let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    drop(s);
    let _ = client.join();
    let mut rec = hdr.to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// Re-frames one handshake record into records of at most `chunk` payload bytes.
pub fn reframe(record: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in record[5..].chunks(chunk) {
        out.extend_from_slice(&record[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}
