//! `control serve` as the dashboard meets it, as a real process against the moto server:
//! bearer tokens (401, 403, revocation, nothing secret in its log), durable jobs (a deploy
//! killed with -9 mid-job resumes when control starts again; idempotency keys; retention),
//! and a job's request sealed at rest under the customer's key.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::store::Store;
use m8trx_spec::CustomerName;

mod world;
use world::*;

/// A `control` command with the test's AWS endpoint and credentials.
fn control(state: &Path, w: Option<&World>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_control"));
    c.arg("--state-db")
        .arg(state)
        .env("M8TRX_AWS_ENDPOINT", moto())
        .env("AWS_ACCESS_KEY_ID", "AKIDCONTROLTEST")
        .env("AWS_SECRET_ACCESS_KEY", "control-secret")
        .env("RUST_LOG", "info");
    if let Some(w) = w {
        let cfg = &w.control.config;
        c.args([
            "--fleet",
            &cfg.fleet,
            "--platform-domain",
            &cfg.platform_domain,
        ])
        .args(["--ami-id", cfg.ami_id.as_deref().unwrap()])
        .args(["--brain-url", cfg.brain_url.as_deref().unwrap()])
        .args(["--poll-ms", "50"]);
    }
    c
}

/// `control token create NAME --scope SCOPES`: the token it printed.
fn make_token(state: &Path, name: &str, scopes: &str) -> String {
    let out = control(state, None)
        .args(["token", "create", name, "--scope", scopes])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// A running `control serve` and every line of its stderr.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(state: &Path, w: Option<&World>) -> Self {
        let mut child = control(state, w)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(a) = line.strip_prefix("control: API listening on http://") {
                    let _ = tx.send(a.to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("control serve did not listen: {:?}", log.lock().unwrap()));
        Self { child, addr, log }
    }

    /// One request: (status, headers, body as JSON or Null).
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, serde_json::Value) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            status,
            head.to_owned(),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn as_token(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {token}");
        let (s, _, v) = self.call(method, path, &[("Authorization", &auth)], body);
        (s, v)
    }

    /// Kills it with SIGKILL: no shutdown code runs.
    fn kill9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state_dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("m8trx-control-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn every_request_needs_a_live_token_with_the_routes_scope() {
    let dir = state_dir("auth");
    let state = dir.join("control.db");
    let admin = make_token(&state, "dash", "read,deploy,delete");
    let reader = make_token(&state, "reader", "read");
    // A job that finished long ago: evicted when the server starts (retention 1 h here).
    let store = Store::open(&state).unwrap();
    let old = store
        .with(|c| {
            c.execute(
                "INSERT INTO jobs (kind, customer, state, created_at, finished_at) VALUES ('delete', 'gone', 'failed', 5, 10)",
                [],
            )?;
            Ok(c.last_insert_rowid())
        })
        .unwrap();
    drop(store);

    let mut server = Server::start(&state, None);
    let _ = &mut server;
    let (s, _, v) = server.call("GET", "/healthz", &[], "");
    assert_eq!((s, v), (200, serde_json::json!({"ok": true})));

    let (s, head, v) = server.call("GET", "/v1/jobs", &[], "");
    assert_eq!(s, 401, "{v}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("control token create"),
        "{v}"
    );
    let (s, _) = server.as_token("m8c_notatoken", "GET", "/v1/jobs", "");
    assert_eq!(s, 401);
    let (s, _, _) = server.call(
        "GET",
        "/v1/jobs",
        &[("Authorization", &format!("Basic {admin}"))],
        "",
    );
    assert_eq!(s, 401, "only bearer tokens");

    let regulated = r#"{"name":"acme","template":"agent","hosting":"shared","regulated":true,
        "secrets":{"brain_key":"b","tailscale_auth_key":"t","agent_fetch_pat":"p"}}"#;
    let (s, v) = server.as_token(&reader, "POST", "/v1/validate", regulated);
    assert_eq!(s, 422, "validation is a read: {v}");
    assert!(v.to_string().contains(r#""field":"hosting""#), "{v}");
    let (s, v) = server.as_token(&reader, "POST", "/v1/deployments", regulated);
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("lacks scope deploy"),
        "{v}"
    );
    let (s, v) = server.as_token(&reader, "DELETE", "/v1/deployments/acme", "");
    assert_eq!(s, 403, "{v}");
    let (s, _) = server.as_token(&reader, "GET", &format!("/v1/jobs/{old}"), "");
    assert_eq!(s, 404, "a job past its retention is evicted at start");
    let (s, v) = server.as_token(&admin, "GET", "/v1/jobs", "");
    assert_eq!((s, v["jobs"].as_array().map(Vec::len)), (200, Some(0)));

    // Revoked while the server runs: refused at its next request.
    let out = control(&state, None)
        .args(["token", "revoke", "reader"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (s, _) = server.as_token(&reader, "GET", "/v1/jobs", "");
    assert_eq!(s, 401);
    let out = control(&state, None)
        .args(["token", "revoke", "reader"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "revoking twice is an error");

    let list = control(&state, None)
        .args(["token", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains("\"dash\"") && list.contains("\"reader\""),
        "{list}"
    );

    let log = server.kill9().join("\n");
    for want in [
        "refused (401)",
        "refused (403)",
        "token=reader",
        "needs=deploy",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    for secret in [&admin, &reader] {
        assert!(
            !log.contains(secret.as_str()),
            "a token's secret is in the log"
        );
        assert!(
            !list.contains(secret.as_str()),
            "a token's secret is listed"
        );
    }
    let raw = std::fs::read(&state).unwrap();
    assert!(
        !raw.windows(admin.len()).any(|w| w == admin.as_bytes()),
        "the state file holds only hashes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_job(
    server: &Server,
    token: &str,
    id: u64,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (s, job) = server.as_token(token, "GET", &format!("/v1/jobs/{id}"), "");
        assert_eq!(s, 200, "{job}");
        if until(&job) {
            return job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "job {id} never got there: {job}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lines(job: &serde_json::Value) -> Vec<String> {
    job["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_owned())
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_killed_mid_job_resumes_when_control_starts_again() {
    let mut w = World::new().await;
    let name = w.customer("kill9").await;
    let host = w.host(1, 8192, 8, &[]).await;
    let dir = state_dir("kill9");
    let state = dir.join("control.db");
    let token = make_token(&state, "dash", "read,deploy,delete");

    // Another placement holds the host's lock, so the deploy stops right after writing the
    // customer's SSM parameters: a job with AWS changed and more to do.
    let lock = w.hold_placement_lock(&host).await;

    let req = w.request(&name, "shared");
    let secret = req.secrets.brain_key.clone().unwrap();
    let body = serde_json::to_string(&req).unwrap();
    let server = Server::start(&state, Some(&w));
    let auth = format!("Bearer {token}");
    let submit = |server: &Server, key: &str, body: &str| {
        let (s, _, v) = server.call(
            "POST",
            "/v1/deployments",
            &[("Authorization", &auth), ("Idempotency-Key", key)],
            body,
        );
        (s, v)
    };
    let (s, v) = submit(&server, "form-1", &body);
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_u64().unwrap();
    let (s, again) = submit(&server, "form-1", &body);
    assert_eq!(
        (s, again["job"].as_u64(), again["replayed"].as_bool()),
        (202, Some(id), Some(true))
    );
    let mut other = req.clone();
    other.volume_size_gb = Some(41);
    let (s, v) = submit(&server, "form-1", &serde_json::to_string(&other).unwrap());
    assert_eq!(s, 422, "the same key with another request: {v}");
    let (s, v) = submit(&server, "form-2", &body);
    assert_eq!(
        (s, v["job"].as_u64()),
        (409, Some(id)),
        "one running job per customer: {v}"
    );

    let job = wait_job(&server, &token, id, |j| {
        lines(j)
            .iter()
            .filter(|l| l.starts_with("ssm: /m8trx/"))
            .count()
            >= 6
    });
    assert_eq!(job["state"], "running");
    std::thread::sleep(Duration::from_millis(300));
    // At rest, the request is sealed under the customer's key: its secrets are nowhere in
    // the state file or its write-ahead log.
    let input: String = Store::open(&state)
        .unwrap()
        .with(|c| {
            c.query_row("SELECT input FROM jobs WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
        })
        .unwrap();
    assert!(input.starts_with(r#"{"sealed":"#), "{input}");
    for f in ["control.db", "control.db-wal"] {
        let raw = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            !contains(&raw, &secret),
            "{f} holds a secret of the request"
        );
    }
    let before = server.kill9();
    assert!(
        !before.join("\n").contains(&secret),
        "a secret in control's log"
    );

    // The other placement lets go; control starts again and finishes the job.
    w.clients()
        .ssm
        .delete_parameter()
        .name(&lock)
        .send()
        .await
        .unwrap();
    let server = Server::start(&state, Some(&w));
    let job = wait_job(&server, &token, id, |j| j["state"] != "running");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["starts"], 2, "{job}");
    assert_eq!(
        job["result"]["placement"]["host_instance_id"],
        host.as_str()
    );
    let all = lines(&job);
    assert!(
        all.iter()
            .any(|l| l.starts_with("control restarted: running this job again (start 2)")),
        "{all:?}"
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("1 job(s) left running by the previous server"),
        "{log}"
    );
    let r = w
        .reservation(&host, &CustomerName::parse(&req.name).unwrap())
        .await
        .unwrap();
    assert_eq!(r.state, "running");
    let owned = w.leftovers(&name).await;
    assert_eq!(
        owned.iter().filter(|o| o.starts_with("volume ")).count(),
        1,
        "{owned:?}"
    );
    let input: Option<String> = Store::open(&state)
        .unwrap()
        .with(|c| {
            c.query_row("SELECT input FROM jobs WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
        })
        .unwrap();
    assert_eq!(input, None, "a finished job keeps no request");

    // `control jobs` reads the same state.
    let out = control(&state, None)
        .args(["jobs", "--state", "succeeded"])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"].as_u64(), Some(id), "{listed}");
    let out = control(&state, None)
        .args(["jobs", "--id", &id.to_string()])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["lines"].as_array().unwrap().len(), all.len());

    let (s, v) = server.as_token(&token, "DELETE", &format!("/v1/deployments/{name}"), "");
    assert_eq!(s, 202, "{v}");
    let del = wait_job(&server, &token, v["job"].as_u64().unwrap(), |j| {
        j["state"] != "running"
    });
    assert_eq!(del["state"], "succeeded", "{del}");
    assert!(w.leftovers(&name).await.is_empty());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    w.cleanup().await;
}

#[tokio::test]
async fn a_sealed_request_opens_only_for_its_customer_and_job() {
    let mut w = World::new().await;
    let a = w.customer("seal-a").await;
    let b = w.customer("seal-b").await;
    let kms = &w.clients().kms;
    let plain = br#"{"secrets":{"brain_key":"br_very_secret"}}"#;
    let s = control::sealed::seal(kms, &a, 7, plain).await.unwrap();
    assert!(!contains(
        serde_json::to_string(&s).unwrap().as_bytes(),
        "br_very_secret"
    ));
    assert_eq!(control::sealed::open(kms, &a, 7, &s).await.unwrap(), plain);
    assert!(
        control::sealed::open(kms, &a, 8, &s).await.is_err(),
        "another job's context"
    );
    assert!(
        control::sealed::open(kms, &b, 7, &s).await.is_err(),
        "another customer"
    );
    let mut tampered = s.clone();
    tampered.data.replace_range(0..4, "AAAA");
    assert!(control::sealed::open(kms, &a, 7, &tampered).await.is_err());
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_job_killed_mid_way_finishes_the_same_move_after_a_restart() {
    let mut w = World::new().await;
    let name = w.customer("kill9mv").await;
    let a = w.host(1, 4096, 4, &[("other-tenant", 2048)]).await;
    let b = w.host(1, 8192, 8, &[]).await;
    let c = w.host(1, 8192, 8, &[]).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    w.control
        .deploy(&spec, &control::Progress::silent())
        .await
        .unwrap();
    let dir = state_dir("kill9mv");
    let state = dir.join("control.db");
    let token = make_token(&state, "ops", "read,move");

    // Another placement holds B's lock: the move, bound for B, waits there with nothing
    // changed yet but its job recorded.
    let lock = w.hold_placement_lock(&b).await;
    let server = Server::start(&state, Some(&w));
    let path = format!("/v1/deployments/{name}/move");
    let (s, v) = server.as_token(
        &token,
        "POST",
        &path,
        &format!(r#"{{"to":"shared","host":"{b}"}}"#),
    );
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_, job) = server.as_token(&token, "GET", &format!("/v1/jobs/{id}"), "");
    assert_eq!(job["state"], "running", "{job}");
    server.kill9();

    // Restarted with both B and C free: the job finishes the move it was given, to B.
    w.clients()
        .ssm
        .delete_parameter()
        .name(&lock)
        .send()
        .await
        .unwrap();
    let server = Server::start(&state, Some(&w));
    let job = wait_job(&server, &token, id, |j| j["state"] != "running");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["starts"], 2, "{job}");
    assert_eq!(job["result"]["to_host"], b.as_str(), "{job}");
    let r = w.reservation(&b, &name).await.unwrap();
    assert_eq!(r.state, "running");
    assert!(w.reservation(&a, &name).await.is_none());
    assert!(w.reservation(&c, &name).await.is_none());

    // The same token cannot deploy or delete: scope move only.
    let (s, _) = server.as_token(&token, "DELETE", &format!("/v1/deployments/{name}"), "");
    assert_eq!(s, 403);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    w.control
        .delete(&name, false, &control::Progress::silent())
        .await
        .unwrap();
    w.cleanup().await;
}
