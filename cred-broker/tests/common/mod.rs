//! Harness of the cred-broker integration tests: runs the real `cred-broker` binary, the
//! real moto server and real SDK clients, and fails loudly when the test environment is missing.
#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // test harness: a panic is the failure report

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cred_broker::{write_token_file, AdminClient, TenantSpec, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Account moto uses for everything.
pub const ACCOUNT: &str = "123456789012";

/// Reads a variable written by `scripts/test-env`, or stops the test with what to do.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: these tests need the real test environment. \
             Run `make test` (or `scripts/test-env` and source the env file it prints)."
        )
    })
}

/// A fresh scratch directory unique to this process and call.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "m8trx-broker-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A TCP port that was free a moment ago on `ip`.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The role ARN a test tenant is registered with.
pub fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/m8trx-customer-{name}")
}

/// What moto's GetCallerIdentity says for credentials the broker got for `name`.
pub fn assumed_arn(name: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/m8trx-customer-{name}/m8trx-{name}")
}

/// A tenant spec for `name` allowed from `cidr`.
pub fn tenant(name: &str, cidr: &str) -> TenantSpec {
    TenantSpec {
        name: m8trx_spec::CustomerName::parse(name).unwrap(),
        role_arn: role_arn(name),
        external_id: format!("ext-{name}-0001"),
        allowed_cidr: cidr.parse().unwrap(),
    }
}

/// Removes every AWS_* variable and points HOME at an empty directory, so a client can only
/// find credentials through the two container variables the test then sets.
pub fn clean_aws_env(cmd: &mut Command, home: &Path) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home);
}

/// A running `cred-broker serve`, killed on drop.
pub struct Broker {
    child: Child,
    /// Credentials listener.
    pub addr: SocketAddr,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Scratch directory (logs, token files).
    pub dir: PathBuf,
    /// The broker's stderr (JSON logs and audit lines).
    pub log: PathBuf,
}

impl Broker {
    /// Starts the broker on `ip` with STS at `sts_endpoint` and extra `serve` flags.
    pub async fn start(ip: IpAddr, sts_endpoint: &str, extra: &[&str]) -> Self {
        let dir = scratch("broker");
        let port = free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let admin_socket = dir.join("admin.sock");
        let log = dir.join("broker.log");
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cred-broker"));
        clean_aws_env(&mut cmd, &home);
        // The host's own credentials, from the default aws-config chain (environment here).
        cmd.env("AWS_ACCESS_KEY_ID", "AKIDM8TRXHOSTTEST")
            .env("AWS_SECRET_ACCESS_KEY", "host-secret-not-for-tenants")
            .env("RUST_LOG", "info")
            .args(["--log-format", "json", "serve", "--listen"])
            .arg(addr.to_string())
            .arg("--admin-socket")
            .arg(&admin_socket)
            .args(["--sts-endpoint", sts_endpoint, "--region", "us-east-1"])
            .args(["--host-id", "m8trx-host-test"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawning cred-broker");
        let mut b = Broker {
            child,
            addr,
            admin_socket,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.child.try_wait().unwrap() {
                panic!(
                    "cred-broker exited early ({status}); log:\n{}",
                    b.log_text()
                );
            }
            let admin_ok = b.admin().list().await.is_ok();
            let tcp_ok = tokio::net::TcpStream::connect(addr).await.is_ok();
            if admin_ok && tcp_ok {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "cred-broker did not come up on {addr} within 20 s; log:\n{}",
                b.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client of its admin socket.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&self.admin_socket)
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its audit lines, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "audit")
            .collect()
    }

    /// Value of one metric sample (0 when absent), read through the admin socket.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin().metrics().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// `http://addr/v1/credentials`.
    pub fn full_uri(&self) -> String {
        format!("http://{}/v1/credentials", self.addr)
    }

    /// Registers `spec`, mints a token with `ttl` and writes it to a token file; returns
    /// (token file, token).
    pub async fn onboard(&self, spec: &TenantSpec, ttl: Duration) -> (PathBuf, Token) {
        self.admin().register(spec).await.unwrap();
        let minted = self
            .admin()
            .mint(spec.name.as_str(), ttl, None)
            .await
            .unwrap();
        let token = Token::from_secret(minted.token);
        let path = self.dir.join(format!("{}.token", spec.name));
        write_token_file(&path, &token, None).unwrap();
        (path, token)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One plain HTTP/1.1 GET of the credentials endpoint, optionally from a chosen source
/// address; returns status and JSON body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    from: Option<IpAddr>,
) -> (u16, serde_json::Value) {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let mut s = sock.connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).unwrap())
}

/// A moto server of the test's own on a loopback port, so a test can stop it; killed on drop.
pub struct OwnMoto {
    child: Option<Child>,
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    log: PathBuf,
}

impl OwnMoto {
    /// Starts moto_server from the test venv on 127.0.0.1:`port` (0: pick one).
    pub async fn start(port: u16) -> Self {
        Self::start_on("127.0.0.1".parse().unwrap(), port).await
    }

    /// Starts moto_server from the test venv on `ip`:`port` (0: pick one).
    pub async fn start_on(ip: IpAddr, port: u16) -> Self {
        let port = if port == 0 { free_port(ip) } else { port };
        let log = scratch("moto").join("moto.log");
        let bin = format!("{}/bin/moto_server", env("M8TRX_VENV"));
        let child = Command::new(&bin)
            .args(["-H", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let m = OwnMoto {
            child: Some(child),
            ip,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect((ip, port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "own moto server did not start on port {port}; log {}",
                m.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, self.port))
    }

    /// Kills it and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            if let Some(dir) = self.log.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// GetCallerIdentity against `endpoint` with explicit credentials, through aws-sdk-sts.
pub async fn caller_arn(endpoint: &str, akid: &str, secret: &str, token: &str) -> String {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            akid,
            secret,
            Some(token.to_owned()),
            None,
            "broker-test",
        ))
        .build();
    aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with broker credentials")
        .arn()
        .unwrap()
        .to_owned()
}
