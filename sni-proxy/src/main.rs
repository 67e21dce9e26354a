//! `sni-proxy` binary: binds the listeners, drops privileges, then serves until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sni_proxy::{admin, http80, limits, metrics, passthrough, privilege, reload, terminate, State};
use tracing::{info, warn};

/// Log line format.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Command line of `sni-proxy`.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Public entry of an m8trx shared host: routes TLS by SNI to each tenant without terminating it"
)]
struct Cli {
    /// Routes file (TOML; see README). Reloaded on change, on SIGHUP and from the admin socket.
    #[arg(
        long,
        env = "SNI_PROXY_ROUTES",
        default_value = "/etc/m8trx/sni-proxy.toml"
    )]
    routes: PathBuf,
    /// Address of the TLS passthrough listener. On a shared host: the instance's own address
    /// (a wildcard :80 cannot sit beside the credential broker's 169.254.170.23:80).
    #[arg(long, env = "SNI_PROXY_LISTEN_TLS", default_value = "0.0.0.0:443")]
    listen_tls: SocketAddr,
    /// Address of the plain HTTP listener (ACME HTTP-01 and redirects to https).
    #[arg(long, env = "SNI_PROXY_LISTEN_HTTP", default_value = "0.0.0.0:80")]
    listen_http: SocketAddr,
    /// Do not open the plain HTTP listener.
    #[arg(long)]
    no_http: bool,
    /// Local address serving Prometheus metrics at /metrics; none when not given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Unix socket for admin commands (reload, status, set-route, remove-route); none when not given.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// After binding, switch to this user; only CAP_NET_BIND_SERVICE is kept in any case.
    #[arg(long)]
    user: Option<String>,
    /// How often to check the routes file for changes, in milliseconds; 0 turns the watch off.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    /// On SIGTERM, how long established connections may go on before the process exits, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads serving connections; 0 means one per CPU. With 1 the runtime is
    /// single-threaded (no work stealing, no cross-thread wake-ups).
    #[arg(long, env = "SNI_PROXY_WORKERS", default_value_t = 0)]
    workers: usize,
}

/// Binds a TCP listener with a deep accept backlog, as a std socket for the runtime to adopt.
fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| {
        format!("cannot bind {addr} (in use, or :443/:80 without CAP_NET_BIND_SERVICE?)")
    })?;
    s.listen(4096)?;
    Ok(s.into())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }

    let routes = reload::Routes::load(&cli.routes)
        .with_context(|| "refusing to start without a valid routes file")?;
    let tls = bind(cli.listen_tls)?;
    let http = if cli.no_http {
        None
    } else {
        Some(bind(cli.listen_http)?)
    };
    let metrics_l = cli.metrics_listen.map(bind).transpose()?;
    let admin_l = match &cli.admin_socket {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let l = std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("cannot bind admin socket {}", p.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    // No thread but this one exists yet: capabilities and uid change for the whole process.
    privilege::drop_privileges(cli.user.as_deref())?;

    let rt = match cli.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    rt.block_on(serve(cli, routes, tls, http, metrics_l, admin_l))
}

async fn serve(
    cli: Cli,
    routes: reload::Routes,
    tls: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    metrics_l: Option<std::net::TcpListener>,
    admin_l: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    let state = Arc::new(State {
        routes: Arc::new(routes),
        limiter: Arc::new(limits::ConnLimiter::default()),
        metrics: Arc::new(metrics::Metrics::default()),
        terminator: Arc::new(terminate::Terminator::default()),
        activity: Default::default(),
        waker: Default::default(),
    });
    // Terminate-mode certificates follow the routes table.
    state.terminator.sync(&state.routes.current());
    let mut versions = state.routes.subscribe();
    let follower = Arc::clone(&state);
    tokio::spawn(async move {
        while versions.changed().await.is_ok() {
            follower.terminator.sync(&follower.routes.current());
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tls = tokio::net::TcpListener::from_std(tls)?;
    let mut ready = format!("ready tls={}", tls.local_addr()?);
    let mut listeners = vec![tokio::spawn(passthrough::serve(
        tls,
        Arc::clone(&state),
        stop_rx.clone(),
    ))];
    if let Some(h) = http {
        let h = tokio::net::TcpListener::from_std(h)?;
        ready.push_str(&format!(" http={}", h.local_addr()?));
        listeners.push(tokio::spawn(http80::serve(
            h,
            Arc::clone(&state),
            stop_rx.clone(),
        )));
    }
    if let Some(m) = metrics_l {
        let m = tokio::net::TcpListener::from_std(m)?;
        ready.push_str(&format!(" metrics={}", m.local_addr()?));
        tokio::spawn(admin::serve_metrics(m, Arc::clone(&state)));
    }
    if let Some(a) = admin_l {
        tokio::spawn(admin::serve_socket(
            tokio::net::UnixListener::from_std(a)?,
            Arc::clone(&state),
        ));
    }
    if cli.watch_interval_ms > 0 {
        let every = Duration::from_millis(cli.watch_interval_ms);
        tokio::spawn(reload::watch_file(
            Arc::clone(&state.routes),
            Arc::clone(&state.metrics),
            every,
        ));
    }
    let mut sighup = tokio::spawn(reload::on_sighup(
        Arc::clone(&state.routes),
        Arc::clone(&state.metrics),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    info!(routes = state.routes.current().len(), file = %cli.routes.display(), "{ready}");
    // The ready line on stdout lets supervisors and tests learn the bound addresses.
    println!("{ready}");

    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        r = &mut sighup => warn!(?r, "SIGHUP handler stopped"),
    }
    let _ = stop_tx.send(true);
    for l in listeners {
        let _ = l.await;
    }
    let deadline = Instant::now() + Duration::from_secs(cli.drain_timeout_secs);
    let open_at_start = state.limiter.open();
    info!(
        open = open_at_start,
        deadline_s = cli.drain_timeout_secs,
        "listeners closed; waiting for open connections"
    );
    while state.limiter.open() > 0 && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = term.recv() => { warn!("second SIGTERM: exiting now"); break; }
        }
    }
    let left = state.limiter.open();
    if left > 0 {
        warn!(
            left,
            "drain deadline reached; closing the remaining connections"
        );
    } else {
        info!("drained; exiting");
    }
    if let Some(p) = &cli.admin_socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
