//! The broker against the real moto server with real clients: boto3, the AWS CLI and an
//! aws-sdk-rust program each get credentials with only AWS_CONTAINER_CREDENTIALS_FULL_URI and
//! AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE set, then use them against moto; plus every refusal,
//! rotation under load, coalescing of 200 first requests, and STS going down.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use cred_broker::{write_token_file, Token};

fn lo() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Runs a client with a clean AWS environment plus the two container variables; returns stdout.
fn run_client(mut cmd: Command, broker: &Broker, token_file: &std::path::Path) -> String {
    let home = broker.dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    clean_aws_env(&mut cmd, &home);
    cmd.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", broker.full_uri())
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file);
    let out = cmd.output().expect("running client");
    assert!(
        out.status.success(),
        "client {cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_aws_cli_and_aws_sdk_rust_get_role_credentials_through_the_broker() {
    let moto = env("M8TRX_MOTO_ENDPOINT");
    let broker = Broker::start(lo(), &moto, &[]).await;
    let spec = tenant("acme", "127.0.0.0/8");
    let (token_file, token) = broker.onboard(&spec, Duration::from_secs(3600)).await;
    let want = assumed_arn("acme");

    // boto3: the container provider must be what found the credentials.
    let mut py = Command::new(env("M8TRX_PYTHON"));
    py.arg("-c")
        .arg(
            "import boto3, json, sys\n\
             s = boto3.session.Session()\n\
             c = s.get_credentials()\n\
             arn = s.client('sts', region_name='us-east-1', endpoint_url=sys.argv[1]).get_caller_identity()['Arn']\n\
             print(json.dumps({'method': c.method, 'arn': arn}))\n",
        )
        .arg(&moto);
    let v: serde_json::Value = serde_json::from_str(&run_client(py, &broker, &token_file)).unwrap();
    assert_eq!(v["method"], "container-role", "boto3 used {v}");
    assert_eq!(v["arn"], want.as_str(), "boto3");

    // The AWS CLI.
    let mut cli = Command::new(env("M8TRX_AWS_CLI"));
    cli.args([
        "sts",
        "get-caller-identity",
        "--output",
        "json",
        "--region",
        "us-east-1",
    ])
    .args(["--endpoint-url", &moto]);
    let v: serde_json::Value =
        serde_json::from_str(&run_client(cli, &broker, &token_file)).unwrap();
    assert_eq!(v["Arn"], want.as_str(), "aws cli");

    // aws-sdk-rust: `cred-broker whoami` loads the default aws-config chain.
    let mut rust = Command::new(env!("CARGO_BIN_EXE_cred-broker"));
    rust.args(["whoami", "--sts-endpoint", &moto]);
    let v: serde_json::Value =
        serde_json::from_str(&run_client(rust, &broker, &token_file)).unwrap();
    assert_eq!(v["Arn"], want.as_str(), "aws-sdk-rust");
    assert_eq!(v["Account"], ACCOUNT);

    // Three clients, one AssumeRole: the rest came from the cache.
    assert_eq!(
        broker
            .metric("m8trx_broker_sts_calls_total{tenant=\"acme\"}")
            .await,
        1.0
    );
    assert_eq!(
        broker
            .metric("m8trx_broker_requests_total{tenant=\"acme\",outcome=\"ok\"}")
            .await,
        3.0
    );
    // The response shape, directly.
    let (status, body) = get(
        broker.addr,
        "/v1/credentials",
        Some(token.expose_secret()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for k in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(
            body[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} in {body}"
        );
    }
    assert_eq!(body["AccountId"], ACCOUNT);
    let exp = body["Expiration"].as_str().unwrap();
    assert!(exp.ends_with('Z') && exp.len() == 20, "RFC 3339 UTC: {exp}");
    // No secret of any kind in the broker's log.
    let log = broker.log_text();
    for secret in [
        token.expose_secret(),
        body["SecretAccessKey"].as_str().unwrap(),
        body["Token"].as_str().unwrap(),
        "host-secret-not-for-tenants",
    ] {
        assert!(!log.contains(secret), "a secret leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_their_status_json_code_audit_line_and_metric() {
    let moto = env("M8TRX_MOTO_ENDPOINT");
    let broker = Broker::start(lo(), &moto, &[]).await;
    let admin = broker.admin();
    let (_, acme) = broker
        .onboard(&tenant("acme", "127.0.0.1/32"), Duration::from_secs(3600))
        .await;
    let (_, beta) = broker
        .onboard(&tenant("beta", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    // gamma's network is elsewhere: its token is useless from this host's loopback.
    let (_, gamma) = broker
        .onboard(&tenant("gamma", "192.0.2.0/24"), Duration::from_secs(3600))
        .await;
    let a = broker.addr;
    let p = "/v1/credentials";

    let (s, b) = get(a, p, None, None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("MissingAuthorization")),
        "{b}"
    );
    let (s, b) = get(a, p, Some("m8tb_not-a-token"), None).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("InvalidToken")), "{b}");

    // Each tenant's token yields that tenant's own role, never another's.
    let (s, ca) = get(a, p, Some(acme.expose_secret()), None).await;
    assert_eq!(s, 200, "{ca}");
    let (s, cb) = get(a, p, Some(beta.expose_secret()), None).await;
    assert_eq!(s, 200, "{cb}");
    assert_ne!(ca["AccessKeyId"], cb["AccessKeyId"]);
    let arn = |c: &serde_json::Value| {
        let c = c.clone();
        async move {
            caller_arn(
                &env("M8TRX_MOTO_ENDPOINT"),
                c["AccessKeyId"].as_str().unwrap(),
                c["SecretAccessKey"].as_str().unwrap(),
                c["Token"].as_str().unwrap(),
            )
            .await
        }
    };
    assert_eq!(arn(&ca).await, assumed_arn("acme"));
    assert_eq!(arn(&cb).await, assumed_arn("beta"));

    // Another tenant's token presented from a network that is not that tenant's: 403.
    let (s, b) = get(a, p, Some(gamma.expose_secret()), None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("ForbiddenSource")),
        "{b}"
    );
    // acme's token from 127.0.0.2, outside acme's 127.0.0.1/32: 403.
    let (s, b) = get(
        a,
        p,
        Some(acme.expose_secret()),
        Some("127.0.0.2".parse().unwrap()),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("ForbiddenSource")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("127.0.0.1/32"),
        "{b}"
    );

    // Expired: a 2 s token, used 2.5 s later.
    let short = admin
        .mint("beta", Duration::from_secs(2), None)
        .await
        .unwrap();
    let (s, _) = get(a, p, Some(&short.token), None).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, b) = get(a, p, Some(&short.token), None).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("ExpiredToken")), "{b}");

    // Revoked: 401 at once; the tenant's other tokens keep working.
    let extra = admin
        .mint("beta", Duration::from_secs(600), None)
        .await
        .unwrap();
    assert_eq!(get(a, p, Some(&extra.token), None).await.0, 200);
    admin.revoke("beta", &extra.id).await.unwrap();
    let (s, b) = get(a, p, Some(&extra.token), None).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("InvalidToken")), "{b}");
    assert_eq!(get(a, p, Some(beta.expose_secret()), None).await.0, 200);
    // Deregistered tenant: its tokens are gone.
    admin.deregister("gamma").await.unwrap();
    assert_eq!(get(a, p, Some(gamma.expose_secret()), None).await.0, 401);
    assert_eq!(
        get(a, "/latest/meta-data/", Some(beta.expose_secret()), None)
            .await
            .0,
        404
    );

    // The admin list shows ids and expiries, never a token.
    let listed = admin.list().await.unwrap();
    let listed_json = serde_json::to_string(&listed).unwrap();
    assert!(listed.iter().any(|t| t.spec.name.as_str() == "acme"));
    assert!(!listed_json.contains(acme.expose_secret()) && !listed_json.contains(&short.token));

    // One audit line per credentials request, with tenant, source and outcome, no secrets.
    let audit = broker.audit_lines();
    let outcomes: Vec<(String, String, String)> = audit
        .iter()
        .map(|v| {
            (
                v["tenant"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
                v["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("-", "missing_header", "127.0.0.1"),
        ("-", "unknown_token", "127.0.0.1"),
        ("acme", "ok", "127.0.0.1"),
        ("gamma", "wrong_source", "127.0.0.1"),
        ("acme", "wrong_source", "127.0.0.2"),
        ("beta", "expired_token", "127.0.0.1"),
    ] {
        let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
        assert!(
            outcomes.contains(&want),
            "no audit line {want:?} in {outcomes:?}"
        );
    }
    assert_eq!(
        audit.len(),
        13,
        "one audit line per credentials request: {outcomes:?}"
    );
    let first_ok = audit
        .iter()
        .find(|v| v["tenant"] == "acme" && v["outcome"] == "ok")
        .unwrap();
    assert_eq!(first_ok["cache"], "miss");
    assert!(first_ok["sts_latency_ms"]
        .as_str()
        .unwrap()
        .parse::<f64>()
        .is_ok());
    let log = broker.log_text();
    for secret in [
        acme.expose_secret(),
        beta.expose_secret(),
        &short.token,
        &extra.token,
    ] {
        assert!(!log.contains(secret), "a token leaked into the log");
    }
    assert!(!log.contains(ca["SecretAccessKey"].as_str().unwrap()));

    let m = |s: &'static str| broker.metric(s);
    assert_eq!(
        m("m8trx_broker_requests_total{tenant=\"-\",outcome=\"missing_header\"}").await,
        1.0
    );
    assert_eq!(
        m("m8trx_broker_requests_total{tenant=\"-\",outcome=\"unknown_token\"}").await,
        3.0
    );
    assert_eq!(
        m("m8trx_broker_requests_total{tenant=\"acme\",outcome=\"wrong_source\"}").await,
        1.0
    );
    assert_eq!(
        m("m8trx_broker_requests_total{tenant=\"beta\",outcome=\"expired_token\"}").await,
        1.0
    );
    assert_eq!(
        m("m8trx_broker_requests_total{tenant=\"beta\",outcome=\"ok\"}").await,
        4.0
    );
    assert!(m("m8trx_broker_cached_credentials_age_seconds{tenant=\"beta\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_under_load_never_answers_401() {
    // The client below asks as fast as it can: the per-tenant rate limit (its own test)
    // is lifted so that every answer is about the rotation.
    let broker = Broker::start(
        lo(),
        &env("M8TRX_MOTO_ENDPOINT"),
        &["--requests-per-second-per-tenant", "1000000"],
    )
    .await;
    let (file, _) = broker
        .onboard(&tenant("acme", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let addr = broker.addr;
    let reader_file = file.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // A client that, like an SDK, re-reads the token file for every request.
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let tok = std::fs::read_to_string(&reader_file).unwrap();
            statuses.push(get(addr, "/v1/credentials", Some(&tok), None).await.0);
        }
        statuses
    });
    let admin = broker.admin();
    let mut old_ids = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // hostd's rotation: mint with a 2 s overlap for the others, then swap the file.
        let m = admin
            .mint(
                "acme",
                Duration::from_secs(3600),
                Some(Duration::from_secs(2)),
            )
            .await
            .unwrap();
        write_token_file(&file, &Token::from_secret(m.token), None).unwrap();
        old_ids.push(m.id);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.await.unwrap();
    assert!(statuses.len() >= 10, "only {} requests ran", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "non-200 during rotation: {statuses:?}"
    );
    // After the overlap the retired tokens are expired: only the newest one is live.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let live: Vec<_> = admin.list().await.unwrap()[0]
        .tokens
        .iter()
        .filter(|t| !t.expired)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(live, vec![old_ids.last().unwrap().clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_first_requests_make_one_assume_role() {
    // Coalescing is the subject here: the tenant's request rate (100/s by default, its own
    // test below) is raised above the burst.
    let broker = Broker::start(
        lo(),
        &env("M8TRX_MOTO_ENDPOINT"),
        &["--requests-per-second-per-tenant", "1000"],
    )
    .await;
    let (_, token) = broker
        .onboard(&tenant("burst", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (addr, tok, barrier) = (
            broker.addr,
            token.expose_secret().to_owned(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            get(addr, "/v1/credentials", Some(&tok), None).await
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(s, 200, "{b}");
        keys.insert(b["AccessKeyId"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys.len(), 1, "every request got the same credentials");
    assert_eq!(
        broker
            .metric("m8trx_broker_sts_calls_total{tenant=\"burst\"}")
            .await,
        1.0,
        "exactly one AssumeRole for 200 concurrent first requests"
    );
    let misses = broker
        .audit_lines()
        .iter()
        .filter(|v| v["cache"] == "miss")
        .count();
    assert!(misses >= 1, "the first requests waited for STS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_down_serves_cached_credentials_until_the_floor_then_503_and_recovers() {
    // Our own moto, so stopping it disturbs no other test.
    let mut moto = OwnMoto::start(0).await;
    // 900 s sessions; refresh as soon as 1 s has passed; stop serving 6 s after issue.
    let broker = Broker::start(
        lo(),
        &moto.endpoint(),
        &[
            "--sts-duration-secs",
            "900",
            "--refresh-before-secs",
            "899",
            "--min-remaining-secs",
            "894",
            "--retry-after-failure-ms",
            "300",
            "--sts-timeout-secs",
            "3",
        ],
    )
    .await;
    let (_, token) = broker
        .onboard(&tenant("acme", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let tok = Some(token.expose_secret());
    let p = "/v1/credentials";
    let (s, first) = get(broker.addr, p, tok, None).await;
    let issued = Instant::now();
    assert_eq!(s, 200, "{first}");

    moto.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Inside the refresh window with STS down: the cached credentials are still served.
    let (s, b) = get(broker.addr, p, tok, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["AccessKeyId"], first["AccessKeyId"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker
        .metric("m8trx_broker_sts_errors_total{tenant=\"acme\"}")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the background refresh never failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A tenant with nothing cached gets 503 straight away.
    let (_, fresh) = broker
        .onboard(&tenant("beta", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let (s, b) = get(broker.addr, p, Some(fresh.expose_secret()), None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (503, Some("CredentialsUnavailable")),
        "{b}"
    );

    // Past the floor (fewer than 894 s of 900 left): 503 with a clear message.
    let wait = Duration::from_secs(7).saturating_sub(issued.elapsed());
    tokio::time::sleep(wait).await;
    let (s, b) = get(broker.addr, p, tok, None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (503, Some("CredentialsUnavailable")),
        "{b}"
    );
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.contains("STS is failing") && msg.contains("acme"),
        "{msg}"
    );
    assert!(broker
        .audit_lines()
        .iter()
        .any(|v| v["tenant"] == "acme" && v["outcome"] == "sts_unavailable"));

    // STS back on the same port: the next request gets fresh credentials.
    let _moto = OwnMoto::start(moto.port).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, b) = get(broker.addr, p, tok, None).await;
    assert_eq!(s, 200, "{b}");
    assert_ne!(b["AccessKeyId"], first["AccessKeyId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_registers_mints_into_a_token_file_lists_and_revokes() {
    use std::os::unix::fs::MetadataExt;
    let broker = Broker::start(lo(), &env("M8TRX_MOTO_ENDPOINT"), &[]).await;
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cred-broker"))
            .arg("admin")
            .arg("--socket")
            .arg(&broker.admin_socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let arn = role_arn("acme");
    let (ok, out, err) = cli(&[
        "register",
        "acme",
        "--role-arn",
        &arn,
        "--external-id",
        "ext-acme-0001",
        "--allowed-cidr",
        "127.0.0.0/8",
    ]);
    assert!(ok && out.contains("\"created\""), "{out}{err}");
    let file = broker.dir.join("tok");
    let file_s = file.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "mint",
        "acme",
        "--ttl-secs",
        "600",
        "--token-file",
        file_s,
        "--owner",
        "4242:4343",
    ]);
    assert!(ok, "{out}{err}");
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(
        !out.contains(&token),
        "the token is written to the file, not printed: {out}"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o400, 4242, 4343)
    );
    assert_eq!(
        get(broker.addr, "/v1/credentials", Some(&token), None)
            .await
            .0,
        200
    );

    let (ok, out, _) = cli(&["list"]);
    assert!(ok && out.contains(&arn) && !out.contains(&token), "{out}");
    let (ok, out, err) = cli(&["revoke", "acme", "--all"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        get(broker.addr, "/v1/credentials", Some(&token), None)
            .await
            .0,
        401
    );
    // Refusals come back as the broker's message, with a failing exit status.
    let (ok, _, err) = cli(&["mint", "ghost", "--ttl-secs", "60"]);
    assert!(!ok && err.contains("no tenant named \"ghost\""), "{err}");
    let (ok, out, _) = cli(&["metrics"]);
    assert!(
        ok && out.contains("m8trx_broker_requests_total{tenant=\"acme\",outcome=\"ok\"} 1"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_share_is_refused_while_the_others_are_served() {
    let broker = Broker::start(
        lo(),
        &env("M8TRX_MOTO_ENDPOINT"),
        &[
            "--requests-per-second-per-tenant",
            "5",
            "--max-connections-per-network",
            "3",
        ],
    )
    .await;
    let (_, flood) = broker
        .onboard(&tenant("flood", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    let (_, calm) = broker
        .onboard(&tenant("calm", "127.0.0.0/8"), Duration::from_secs(3600))
        .await;
    // Twenty requests at once from one tenant: a second's worth served, the rest 429.
    let mut codes = Vec::new();
    for _ in 0..20 {
        let (s, b) = get(
            broker.addr,
            "/v1/credentials",
            Some(flood.expose_secret()),
            None,
        )
        .await;
        if s == 429 {
            assert_eq!(b["code"], "TooManyRequests", "{b}");
        }
        codes.push(s);
    }
    let ok = codes.iter().filter(|s| **s == 200).count();
    assert!((5..=7).contains(&ok), "about 5 of 20 served: {codes:?}");
    assert_eq!(ok + codes.iter().filter(|s| **s == 429).count(), 20);
    let (s, _) = get(
        broker.addr,
        "/v1/credentials",
        Some(calm.expose_secret()),
        None,
    )
    .await;
    assert_eq!(s, 200, "another tenant keeps being served");
    assert_eq!(
        broker
            .metric("m8trx_broker_requests_total{tenant=\"flood\",outcome=\"rate_limited\"}")
            .await,
        (20 - ok) as f64
    );
    assert_eq!(
        broker
            .log_text()
            .matches("limit hit: tenant credentials request refused")
            .count(),
        1,
        "one log line for the flood"
    );
    // Connections: three idle ones from this network fill its share; the fourth is closed.
    let idle: Vec<tokio::net::TcpStream> =
        futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(broker.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    // Waits for the refusal itself rather than a fixed time: the tests of this binary run
    // side by side on two cores, and a starved accept loop once took longer than 2 s.
    let refused = "m8trx_broker_connections_refused_total{limit=\"max_connections_per_network\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while broker.metric(refused).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fourth connection of the network is refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut fourth, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the refused fourth connection is closed, not served: {read:?}"
    );
    drop(idle);
}
