//! Anything a client sends to :80: sni-proxy's HTTP service (hyper's parser, then Host
//! routing, ACME challenges, redirects and refusals) must never panic and must answer each
//! request it reads with an HTTP/1.x response, or close, within 5 s.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sni_proxy::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Routes with every :80 behaviour that needs no live backend: redirect, ACME without a
/// backend, a forward to a closed port, a wildcard, and a tenant capped at a few requests.
const ROUTES: &str = r#"
[limits]
new_connections_per_second_per_tenant = 1000000
[[route]]
sni = "redirect.example"
backend = "127.0.0.1:9"
[[route]]
sni = "*.wild.example"
backend = "127.0.0.1:9"
[[route]]
sni = "forward.example"
backend = "127.0.0.1:9"
http_backend = "127.0.0.1:9"
http = "forward"
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn state() -> Arc<State> {
    static STATE: OnceLock<Arc<State>> = OnceLock::new();
    Arc::clone(STATE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("http80-fuzz-{}.toml", std::process::id()));
        std::fs::write(&p, ROUTES).expect("routes file");
        let routes = sni_proxy::reload::Routes::load(&p).expect("routes");
        let _ = std::fs::remove_file(&p);
        Arc::new(State {
            routes: Arc::new(routes),
            limiter: Default::default(),
            metrics: Default::default(),
            terminator: Default::default(),
            activity: Default::default(),
            waker: Default::default(),
        })
    }))
}

fuzz_target!(|data: &[u8]| {
    let state = state();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer = "192.0.2.1:40000".parse().expect("address");
        let conn = tokio::spawn(sni_proxy::http80::serve_connection(
            hyper_util::rt::TokioIo::new(server),
            peer,
            state,
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut out),
        );
        assert!(
            read.await.is_ok(),
            "the service neither answered nor closed within 5 s"
        );
        if !out.is_empty() {
            // HTTP/1.0 requests are answered in HTTP/1.0.
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "not an HTTP/1.x response: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(64)])
            );
        }
        conn.await.expect("the connection task must not panic");
    });
});
