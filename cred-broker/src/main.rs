//! `cred-broker`: serves per-tenant STS credentials to tenant containers over the
//! container-credentials protocol, with an admin API on a unix socket for hostd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use cred_broker::server::{
    bind_admin_socket, serve_admin, serve_credentials, serve_metrics, CREDENTIALS_PATH,
};
use cred_broker::{
    write_token_file, AdminClient, Broker, CachePolicy, FileOwner, StsSettings, StsSource,
    TenantSpec, Token,
};

/// Production address of the credentials listener: the EKS Pod Identity address, which
/// AWS SDKs accept over plain HTTP, on a host dummy interface only tenant bridges reach.
const PRODUCTION_LISTEN: &str = "169.254.170.23:80";
const DEFAULT_ADMIN_SOCKET: &str = "/run/m8trx/cred-broker.sock";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    version,
    about = "Host-local per-tenant AWS credential broker of an m8trx shared host"
)]
struct Cli {
    /// Log (and audit line) format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: credentials listener, admin socket, optional metrics listener.
    Serve(ServeArgs),
    /// Call the admin API of a running broker.
    Admin {
        /// Admin unix socket of the broker.
        #[arg(long, env = "M8TRX_BROKER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        call: AdminCall,
    },
    /// Check credentials as a tenant's SDK sees them: load the default aws-config chain
    /// (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE) and print
    /// STS GetCallerIdentity as JSON.
    Whoami {
        /// STS endpoint to call with the credentials (default: the SDK's).
        #[arg(long)]
        sts_endpoint: Option<String>,
        /// Region for STS.
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the credentials listener (tests and dev: a loopback address).
    #[arg(long, default_value = PRODUCTION_LISTEN)]
    listen: SocketAddr,
    /// Admin unix socket for hostd (created mode 0600, replacing a stale one).
    #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,
    /// Optional TCP address for Prometheus `GET /metrics` (keep it on loopback). The admin
    /// socket serves `/metrics` too.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// SourceIdentity of every STS session: this host's id (default: the hostname).
    #[arg(long)]
    host_id: Option<String>,
    /// STS endpoint URL (tests: the moto server). Default: the SDK's regional endpoint.
    #[arg(long, env = "M8TRX_BROKER_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// STS region (default: from the aws-config chain, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// DurationSeconds of each AssumeRole (900..=3600; 3600 is the role-chaining maximum).
    #[arg(long, default_value_t = 3600)]
    sts_duration_secs: u64,
    /// Refresh a tenant's credentials in the background once fewer than this many seconds remain.
    #[arg(long, default_value_t = 900)]
    refresh_before_secs: u64,
    /// Never serve credentials with fewer than this many seconds left; past it a failing STS means 503.
    #[arg(long, default_value_t = 300)]
    min_remaining_secs: u64,
    /// Time limit of one AssumeRole call, retries included.
    #[arg(long, default_value_t = 10)]
    sts_timeout_secs: u64,
    /// After a failed STS call, answer 503 without a new call for this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    retry_after_failure_ms: u64,
    /// Credentials connections open at once, all tenants together; more are closed at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Credentials connections open at once from one tenant network (/24); more are closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_network: u64,
    /// Credentials requests per second per tenant (a second's worth may come at once); more
    /// get 429 (SDKs keep their cached credentials and retry).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    requests_per_second_per_tenant: u32,
}

#[derive(Subcommand)]
enum AdminCall {
    /// Register (or update) a tenant.
    Register {
        /// Customer name.
        name: String,
        /// The customer's IAM role ARN.
        #[arg(long)]
        role_arn: String,
        /// ExternalId the role's trust policy requires.
        #[arg(long)]
        external_id: String,
        /// Source network allowed to use the tenant's tokens (its bridge subnet).
        #[arg(long)]
        allowed_cidr: ipnet::IpNet,
    },
    /// Remove a tenant, its tokens and cached credentials.
    Deregister { name: String },
    /// Mint a token. Prints the token (once) unless --token-file is given.
    Mint {
        name: String,
        /// Token lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        /// Rotation: other tokens of the tenant expire this many seconds from now.
        #[arg(long)]
        retire_others_after_secs: Option<u64>,
        /// Write the token atomically to this file (mode 0400) instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Owner of the token file, as UID:GID.
        #[arg(long, requires = "token_file")]
        owner: Option<String>,
    },
    /// Revoke one token (by id) or, with --all, every token of the tenant.
    Revoke {
        name: String,
        /// Token id as shown by `list` or `mint`.
        #[arg(required_unless_present = "all")]
        token_id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// List tenants and their tokens (ids and expiries only).
    List,
    /// Print the Prometheus metrics.
    Metrics,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .event_format(cred_broker::json_log::JsonLines)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn default_host_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "m8trx-host".to_owned())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.min_remaining_secs >= args.refresh_before_secs {
        bail!(
            "--min-remaining-secs ({}) must be below --refresh-before-secs ({}), or credentials \
             would stop being served before any refresh starts",
            args.min_remaining_secs,
            args.refresh_before_secs
        );
    }
    if args.min_remaining_secs >= args.sts_duration_secs {
        bail!(
            "--min-remaining-secs ({}) must be below --sts-duration-secs ({})",
            args.min_remaining_secs,
            args.sts_duration_secs
        );
    }
    let settings = StsSettings {
        endpoint: args.sts_endpoint.clone(),
        region: args.region.clone(),
        host_id: args.host_id.clone().unwrap_or_else(default_host_id),
        duration: Duration::from_secs(args.sts_duration_secs),
        call_timeout: Duration::from_secs(args.sts_timeout_secs),
    };
    let source = StsSource::new(settings.clone())
        .await
        .context("configuring the STS client")?;
    let policy = CachePolicy {
        refresh_before: Duration::from_secs(args.refresh_before_secs),
        min_remaining: Duration::from_secs(args.min_remaining_secs),
        retry_after_failure: Duration::from_millis(args.retry_after_failure_ms),
    };
    let limits = cred_broker::limits::Limits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        max_connections_per_network: usize::try_from(args.max_connections_per_network)
            .unwrap_or(usize::MAX),
        requests_per_second: args.requests_per_second_per_tenant,
    };
    let broker = Arc::new(Broker::new(Arc::new(source), policy).with_limits(limits));

    let creds = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "binding the credentials listener on {}; in production the address lives on the \
                 host's dummy interface (ip addr add 169.254.170.23/32 dev <dummy>)",
                args.listen
            )
        })?;
    let admin = bind_admin_socket(&args.admin_socket)
        .with_context(|| format!("binding the admin socket {}", args.admin_socket.display()))?;
    tracing::info!(
        listen = %creds.local_addr().unwrap_or(args.listen),
        full_uri = %format!("http://{}{}", args.listen, CREDENTIALS_PATH),
        admin_socket = %args.admin_socket.display(),
        host_id = %settings.host_id,
        sts_endpoint = settings.endpoint.as_deref().unwrap_or("default"),
        duration_secs = args.sts_duration_secs,
        refresh_before_secs = args.refresh_before_secs,
        min_remaining_secs = args.min_remaining_secs,
        "cred-broker serving"
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve_credentials(creds, broker.clone()));
    tasks.spawn(serve_admin(admin, broker.clone()));
    if let Some(addr) = args.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tracing::info!(metrics = %addr, "serving Prometheus metrics");
        tasks.spawn(serve_metrics(l, broker.clone()));
    }
    {
        let broker = broker.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                broker.refresh_due();
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = tasks.join_next() => tracing::error!("a listener stopped unexpectedly"),
    }
    let _ = std::fs::remove_file(&args.admin_socket);
    Ok(())
}

fn parse_owner(s: &str) -> anyhow::Result<FileOwner> {
    let (u, g) = s
        .split_once(':')
        .with_context(|| format!("--owner {s:?} must be UID:GID"))?;
    Ok(FileOwner {
        uid: u
            .parse()
            .with_context(|| format!("bad uid in --owner {s:?}"))?,
        gid: g
            .parse()
            .with_context(|| format!("bad gid in --owner {s:?}"))?,
    })
}

async fn admin(socket: PathBuf, call: AdminCall) -> anyhow::Result<()> {
    let client = AdminClient::new(&socket);
    match call {
        AdminCall::Register {
            name,
            role_arn,
            external_id,
            allowed_cidr,
        } => {
            let spec = TenantSpec {
                name: m8trx_spec::CustomerName::parse(&name)?,
                role_arn,
                external_id,
                allowed_cidr,
            };
            let outcome = client.register(&spec).await?;
            println!(
                "{}",
                serde_json::json!({ "tenant": name, "outcome": outcome })
            );
        }
        AdminCall::Deregister { name } => {
            client.deregister(&name).await?;
            println!("{}", serde_json::json!({ "deregistered": name }));
        }
        AdminCall::Mint {
            name,
            ttl_secs,
            retire_others_after_secs,
            token_file,
            owner,
        } => {
            let minted = client
                .mint(
                    &name,
                    Duration::from_secs(ttl_secs),
                    retire_others_after_secs.map(Duration::from_secs),
                )
                .await?;
            match token_file {
                Some(path) => {
                    let owner = owner.as_deref().map(parse_owner).transpose()?;
                    write_token_file(&path, &Token::from_secret(minted.token.clone()), owner)?;
                    println!(
                        "{}",
                        serde_json::json!({ "tenant": name, "id": minted.id, "expires_at": minted.expires_at, "token_file": path })
                    );
                }
                None => println!("{}", serde_json::to_string(&minted)?),
            }
        }
        AdminCall::Revoke {
            name,
            token_id,
            all,
        } => {
            match (all, token_id) {
                (true, _) => client.revoke_all(&name).await?,
                (false, Some(id)) => client.revoke(&name, &id).await?,
                (false, None) => bail!("give a token id or --all"),
            }
            println!("{}", serde_json::json!({ "tenant": name, "revoked": true }));
        }
        AdminCall::List => println!("{}", serde_json::to_string_pretty(&client.list().await?)?),
        AdminCall::Metrics => print!("{}", client.metrics().await?),
    }
    Ok(())
}

async fn whoami(sts_endpoint: Option<String>, region: String) -> anyhow::Result<()> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region));
    if let Some(ep) = sts_endpoint {
        loader = loader.endpoint_url(ep);
    }
    let conf = loader.load().await;
    let who = aws_sdk_sts::Client::new(&conf)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "GetCallerIdentity failed: {}",
                aws_sdk_sts::error::DisplayErrorContext(&e)
            )
        })?;
    println!(
        "{}",
        serde_json::json!({ "Arn": who.arn(), "Account": who.account(), "UserId": who.user_id() })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin { socket, call } => admin(socket, call).await,
        Command::Whoami {
            sts_endpoint,
            region,
        } => whoami(sts_endpoint, region).await,
    }
}
