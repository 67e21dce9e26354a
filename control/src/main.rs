//! `control`: deploy, delete and inspect customers from the command line, or serve the HTTP
//! API the dashboard's deploy form calls. Progress lines go to stderr as they happen; the
//! final result is JSON on stdout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use control::api::{self, ApiState};
use control::jobs::JobTable;
use control::{Control, ControlConfig, ControlError, DeployRequest, Progress};
use m8trx_spec::CustomerName;

/// Control plane of the m8trx shared-host runtime: places customers on a shared host or a
/// dedicated hardened EC2 instance, after writing their six SSM parameters.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-2", global = true)]
    region: String,
    /// AWS endpoint override (e.g. a moto server); real AWS when unset.
    #[arg(long, env = "M8TRX_AWS_ENDPOINT", global = true)]
    endpoint_url: Option<String>,
    /// Hardened AMI for dedicated instances.
    #[arg(long, env = "M8TRX_AMI_ID", global = true)]
    ami_id: Option<String>,
    /// Platform domain; hostnames are {label}.{domain}.
    #[arg(
        long,
        env = "M8TRX_PLATFORM_DOMAIN",
        default_value = "m8trx.ai",
        global = true
    )]
    platform_domain: String,
    /// Fleet-wide Brain URL written to /m8trx/<name>/brain-url.
    #[arg(long, env = "M8TRX_BRAIN_URL", global = true)]
    brain_url: Option<String>,
    /// Subnet for dedicated instances (a request's subnet_id wins).
    #[arg(long, env = "M8TRX_DEDICATED_SUBNET", global = true)]
    dedicated_subnet: Option<String>,
    /// Security group for dedicated instances (repeatable).
    #[arg(
        long = "security-group",
        env = "M8TRX_SECURITY_GROUPS",
        value_delimiter = ',',
        global = true
    )]
    security_groups: Vec<String>,
    /// Shared-host fleet (terraform fleet_name): hosts tagged m8trx:role=shared-host, m8trx:fleet=<fleet>.
    #[arg(long, env = "M8TRX_FLEET", default_value = "default", global = true)]
    fleet: String,
    /// Poll interval of waits, milliseconds.
    #[arg(long, default_value_t = 2000, global = true)]
    poll_ms: u64,
    /// Longest wait for one volume, instance or SSM command, seconds.
    #[arg(long, default_value_t = 600, global = true)]
    wait_timeout_secs: u64,
    /// Log format of the server's own logs.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The deploy form's fields as flags (secrets come from the environment, never from flags).
#[derive(clap::Args)]
struct FormArgs {
    /// Read the request (the API's JSON body) from FILE ("-" for stdin); flags override it.
    #[arg(short = 'f', long = "file")]
    file: Option<String>,
    /// Customer name.
    #[arg(long)]
    name: Option<String>,
    /// agent | baseline.
    #[arg(long)]
    template: Option<String>,
    /// Instance type from the allowlist (default t3.medium).
    #[arg(long)]
    instance_type: Option<String>,
    /// Volume size, 20–500 GB (default 30).
    #[arg(long)]
    volume_size_gb: Option<i64>,
    /// Subdomain label (default: the name).
    #[arg(long)]
    subdomain: Option<String>,
    /// shared | dedicated (default dedicated).
    #[arg(long)]
    hosting: Option<String>,
    /// Regulated customer: dedicated only.
    #[arg(long)]
    regulated: bool,
    /// Subnet for the dedicated instance.
    #[arg(long)]
    subnet_id: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy (or resume deploying) a customer. Secrets: M8TRX_BRAIN_KEY,
    /// M8TRX_TAILSCALE_AUTH_KEY, M8TRX_AGENT_FETCH_PAT, M8TRX_AGENT_UI_PASSWORD (optional).
    Deploy(FormArgs),
    /// Check a request without touching AWS; prints every field error.
    Validate(FormArgs),
    /// Delete (or resume deleting) everything of a customer, in reverse order.
    Delete {
        /// Customer name.
        name: String,
        /// Detach and keep the data volume instead of deleting it.
        #[arg(long)]
        keep_volume: bool,
    },
    /// Show what exists for a customer (ledger, instances, volumes, SSM parameters).
    Status {
        /// Customer name.
        name: String,
    },
    /// List the fleet's shared hosts with capacity, reservations and free room.
    Hosts,
    /// Serve the HTTP/JSON API for the dashboard.
    Serve {
        /// Address to listen on (keep it on a private interface: the API has no auth of its own).
        #[arg(long, env = "M8TRX_CONTROL_LISTEN", default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
    },
}

fn config(cli: &Cli) -> ControlConfig {
    ControlConfig {
        region: cli.region.clone(),
        endpoint_url: cli.endpoint_url.clone(),
        ami_id: cli.ami_id.clone(),
        platform_domain: cli.platform_domain.clone(),
        brain_url: cli.brain_url.clone(),
        dedicated_subnet_id: cli.dedicated_subnet.clone(),
        security_group_ids: cli.security_groups.clone(),
        fleet: cli.fleet.clone(),
        poll_interval: Duration::from_millis(cli.poll_ms),
        wait_timeout: Duration::from_secs(cli.wait_timeout_secs),
    }
}

fn request(args: &FormArgs) -> anyhow::Result<DeployRequest> {
    let mut req = match args.file.as_deref() {
        None => DeployRequest::default(),
        Some(path) => {
            let text = if path == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read request file {path}: {e}"))?
            };
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("request file {path} is not a deploy request: {e}"))?
        }
    };
    let set = |dst: &mut Option<String>, src: &Option<String>| {
        if src.is_some() {
            dst.clone_from(src);
        }
    };
    if let Some(n) = &args.name {
        req.name.clone_from(n);
    }
    set(&mut req.template, &args.template);
    set(&mut req.instance_type, &args.instance_type);
    set(&mut req.subdomain, &args.subdomain);
    set(&mut req.hosting, &args.hosting);
    set(&mut req.subnet_id, &args.subnet_id);
    if args.volume_size_gb.is_some() {
        req.volume_size_gb = args.volume_size_gb;
    }
    req.regulated |= args.regulated;
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let s = &mut req.secrets;
    s.brain_key = s.brain_key.take().or_else(|| env("M8TRX_BRAIN_KEY"));
    s.tailscale_auth_key = s
        .tailscale_auth_key
        .take()
        .or_else(|| env("M8TRX_TAILSCALE_AUTH_KEY"));
    s.agent_fetch_pat = s
        .agent_fetch_pat
        .take()
        .or_else(|| env("M8TRX_AGENT_FETCH_PAT"));
    s.agent_ui_password = s
        .agent_ui_password
        .take()
        .or_else(|| env("M8TRX_AGENT_UI_PASSWORD"));
    Ok(req)
}

fn stderr_progress() -> Progress {
    Progress::new(|line| eprintln!("control: {line}"))
}

/// Exit code per failure kind (documented in the README).
fn exit_code(e: &ControlError) -> u8 {
    match e {
        ControlError::Invalid(_) => 2,
        ControlError::NoCapacity(_) => 3,
        ControlError::Missing(_) | ControlError::Conflict(_) => 4,
        ControlError::Aws { .. } | ControlError::Hostd { .. } | ControlError::Timeout { .. } => 1,
    }
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("control: cannot print the result: {e}"),
    }
}

fn fail(e: &ControlError) -> ExitCode {
    eprintln!("control: error: {e}");
    ExitCode::from(exit_code(e))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("control: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = config(&cli);
    match cli.command {
        Command::Validate(args) => {
            let req = request(&args)?;
            Ok(match req.validate() {
                Ok(spec) => {
                    println!(
                        "valid: {} ({} template, {} hosting, {}, {} GB, subdomain {})",
                        spec.name,
                        spec.template.as_str(),
                        spec.hosting.as_str(),
                        spec.instance.name,
                        spec.volume_size_gb,
                        spec.subdomain
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => fail(&ControlError::Invalid(errors)),
            })
        }
        Command::Deploy(args) => {
            let req = request(&args)?;
            let spec = match req.validate() {
                Ok(s) => s,
                Err(errors) => return Ok(fail(&ControlError::Invalid(errors))),
            };
            let control = Control::new(cfg).await;
            Ok(match control.deploy(&spec, &stderr_progress()).await {
                Ok(outcome) => {
                    print_json(&outcome);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            })
        }
        Command::Delete { name, keep_volume } => {
            let name = CustomerName::parse(&name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
            let control = Control::new(cfg).await;
            Ok(
                match control.delete(&name, keep_volume, &stderr_progress()).await {
                    Ok(outcome) => {
                        print_json(&outcome);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                },
            )
        }
        Command::Status { name } => {
            let name = CustomerName::parse(&name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
            let control = Control::new(cfg).await;
            Ok(match control.status(&name).await {
                Ok(s) => {
                    print_json(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            })
        }
        Command::Hosts => {
            let control = Control::new(cfg).await;
            Ok(match control.hosts(&stderr_progress()).await {
                Ok(hosts) => {
                    let rows: Vec<_> = hosts
                        .iter()
                        .map(|h| serde_json::json!({"host": h, "free": h.free()}))
                        .collect();
                    print_json(&rows);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            })
        }
        Command::Serve { listen } => {
            let control = Arc::new(Control::new(cfg).await);
            let app = api::router(ApiState {
                control,
                jobs: JobTable::default(),
            });
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let bound = listener.local_addr().unwrap_or(listen);
            eprintln!("control: API listening on http://{bound}");
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
