//! Terminate mode, for tenants with no TLS of their own: the proxy obtains and renews the
//! route's certificate through ACME (rustls-acme, TLS-ALPN-01 answered on this same :443),
//! terminates TLS, and forwards HTTP/1.1 and HTTP/2 requests as HTTP/1.1 to the backend.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, EventOk};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::clienthello::Hello;
use crate::routes::{AcmeSettings, Route, RouteTable};
use crate::{http80, relay};

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One terminate-mode name: its certificate manager and the TLS configs built on it.
struct Cert {
    /// Normal connections: the issued certificate, ALPN h2 and http/1.1.
    tls: Arc<ServerConfig>,
    /// TLS-ALPN-01 validation connections from the CA.
    challenge: Arc<ServerConfig>,
    /// The task driving ACME orders and renewals.
    task: JoinHandle<()>,
    /// The settings it was started with; a change restarts it.
    settings: AcmeSettings,
}

/// Certificate managers for every terminate route, kept in step with the routes table.
pub struct Terminator {
    provider: Arc<CryptoProvider>,
    certs: Mutex<HashMap<String, Cert>>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

impl Default for Terminator {
    fn default() -> Self {
        Terminator {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            certs: Mutex::new(HashMap::new()),
        }
    }
}

/// Root store for talking to the ACME directory: Mozilla's roots plus the optional CA file.
fn acme_roots(settings: &AcmeSettings) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read acme ca_file {}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("acme ca_file {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("acme ca_file {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

impl Terminator {
    /// Starts managers for new terminate routes and stops those whose route went away.
    pub fn sync(&self, table: &RouteTable) {
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<&str, &Arc<Route>> = table
            .terminate_routes()
            .map(|r| (r.name.as_str(), r))
            .collect();
        let settings = table.source.acme.clone();
        certs.retain(|name, c| {
            let keep = wanted.contains_key(name.as_str()) && Some(&c.settings) == settings.as_ref();
            if !keep {
                c.task.abort();
                info!(route = %name, "terminate mode: certificate manager stopped");
            }
            keep
        });
        let Some(settings) = settings else { return };
        for name in wanted.keys() {
            if certs.contains_key(*name) {
                continue;
            }
            match self.start(name, &settings) {
                Ok(c) => {
                    certs.insert((*name).to_owned(), c);
                }
                Err(e) => {
                    error!(route = %name, error = %e, "terminate mode: cannot start the certificate manager")
                }
            }
        }
    }

    fn start(&self, name: &str, settings: &AcmeSettings) -> Result<Cert, String> {
        let client = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(acme_roots(settings)?)
            .with_no_client_auth();
        let mut state = AcmeConfig::new_with_client_config([name], Arc::new(client))
            .directory(&settings.directory)
            .contact(settings.contact.iter())
            .cache(DirCache::new(settings.cache_dir.join(name)))
            .state();
        let challenge = state.challenge_rustls_config_with_provider(Arc::clone(&self.provider));
        let mut tls =
            (*state.default_rustls_config_with_provider(Arc::clone(&self.provider))).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let route = name.to_owned();
        let task = tokio::spawn(async move {
            while let Some(ev) = state.next().await {
                match ev {
                    Ok(EventOk::DeployedNewCert) => {
                        info!(%route, "terminate mode: new certificate issued and deployed")
                    }
                    Ok(EventOk::DeployedCachedCert) => {
                        info!(%route, "terminate mode: cached certificate deployed")
                    }
                    Ok(ok) => info!(%route, event = ?ok, "terminate mode: ACME"),
                    Err(e) => {
                        warn!(%route, error = %e, "terminate mode: ACME failed; rustls-acme retries with backoff")
                    }
                }
            }
        });
        info!(route = %name, directory = %settings.directory, "terminate mode: certificate manager started");
        Ok(Cert {
            tls: Arc::new(tls),
            challenge,
            task,
            settings: settings.clone(),
        })
    }

    fn configs(&self, name: &str) -> Option<(Arc<ServerConfig>, Arc<ServerConfig>)> {
        let certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        certs
            .get(name)
            .map(|c| (Arc::clone(&c.tls), Arc::clone(&c.challenge)))
    }
}

/// The client socket with the already-read ClientHello put back in front, counting bytes
/// and noting activity for the idle timeout.
struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
    bytes: Arc<relay::Bytes>,
    last_ms: Arc<AtomicU64>,
    start: Instant,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.bytes.up.fetch_add(n as u64, Ordering::Relaxed);
            this.last_ms
                .store(this.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.bytes.down.fetch_add(*n as u64, Ordering::Relaxed);
            let now = self.start.elapsed().as_millis() as u64;
            self.last_ms.store(now, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Terminates one connection whose route is in terminate mode; returns (outcome, detail).
pub async fn serve(
    terminator: &Terminator,
    client: TcpStream,
    hello: Hello,
    route: &Route,
    peer: SocketAddr,
    idle: Duration,
    bytes: Arc<relay::Bytes>,
) -> (&'static str, Option<String>) {
    let Some((tls, challenge)) = terminator.configs(&route.name) else {
        return (
            "no_certificate",
            Some("no [acme] settings or the manager failed to start".into()),
        );
    };
    let is_challenge = hello.alpn.iter().any(|p| p == ACME_TLS_ALPN);
    let config = if is_challenge { challenge } else { tls };
    let start = Instant::now();
    let last_ms = Arc::new(AtomicU64::new(0));
    let io = Replay {
        prefix: hello.buffered,
        pos: 0,
        inner: client,
        bytes,
        last_ms: Arc::clone(&last_ms),
        start,
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let tls_stream = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return ("tls_handshake_failed", Some(e.to_string())),
        Err(_) => return ("tls_handshake_failed", Some("handshake timed out".into())),
    };
    if is_challenge {
        // The CA only needed to see the challenge certificate.
        return ("acme_challenge", None);
    }
    let backend = route.backend;
    let svc = hyper::service::service_fn(move |req| async move {
        Ok::<_, std::convert::Infallible>(http80::forward(req, peer, backend, "https").await)
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls_stream), svc);
    tokio::select! {
        r = conn => match r {
            Ok(()) => ("closed", None),
            Err(e) => ("client_error", Some(e.to_string())),
        },
        _ = relay::idle_watch(&last_ms, start, idle) => ("idle_timeout", None),
    }
}
