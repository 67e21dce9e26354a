//! `control`: deploy, delete and inspect customers from the command line, or serve the HTTP
//! API the dashboard's deploy form calls. Progress lines go to stderr as they happen; the
//! final result is JSON on stdout.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use control::api::{self, ApiState};
use control::jobs::{JobFilter, JobTable};
use control::store::Store;
use control::tokens::{self, Scope};
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
    /// Run after a move's target serves, before the source lets go, once per hostname:
    /// `HOOK <hostname> <instance-id> <public-ip or ->`; it points DNS at the target (e.g. a
    /// script calling the Cloudflare API). A failing hook stops the move there; run it again.
    #[arg(long, env = "M8TRX_DNS_HOOK", global = true)]
    dns_hook: Option<PathBuf>,
    /// Poll interval of waits, milliseconds.
    #[arg(long, default_value_t = 2000, global = true)]
    poll_ms: u64,
    /// Longest wait for one volume, instance or SSM command, seconds.
    #[arg(long, default_value_t = 600, global = true)]
    wait_timeout_secs: u64,
    /// control's state: API tokens (hashed) and jobs. Created 0600 in a 0700 directory.
    #[arg(
        long,
        env = "M8TRX_CONTROL_STATE",
        default_value = "/var/lib/m8trx-control/control.db",
        global = true
    )]
    state_db: PathBuf,
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
    /// Move (or finish moving) a shared tenant to another shared host in its volume's zone:
    /// room reserved there, the tenant stopped on its host, its volume handed over, hostd
    /// there creating it; a failure rolls back to the source. Re-running it resumes it.
    Move {
        /// Customer name.
        name: String,
        /// Where to: `shared` (moves to and from dedicated are not built yet).
        #[arg(long, value_parser = ["shared"])]
        to: String,
        /// The target shared host (instance id); default: the best fit in the volume's zone.
        #[arg(long)]
        host: Option<String>,
    },
    /// Keep new tenants off a shared host and move its tenants away one by one.
    Drain {
        /// The host's instance id.
        host: String,
    },
    /// Show what exists for a customer (ledger, instances, volumes, SSM parameters).
    Status {
        /// Customer name.
        name: String,
    },
    /// List the fleet's shared hosts with capacity, reservations and free room.
    Hosts,
    /// Serve the HTTP/JSON API for the dashboard (bearer tokens: `control token`). Jobs a
    /// previous server left running are started again.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "M8TRX_CONTROL_LISTEN", default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
        /// How long finished jobs are kept before they are evicted, in hours.
        #[arg(long, env = "M8TRX_JOB_RETENTION_HOURS", default_value_t = 168)]
        job_retention_hours: u64,
    },
    /// Make, list and revoke the API's bearer tokens (on the control host, in --state-db).
    #[command(subcommand)]
    Token(TokenCommand),
    /// List the API's jobs (newest first), or show one with its progress lines.
    Jobs {
        /// Show this job with its lines.
        #[arg(long)]
        id: Option<i64>,
        /// Only this customer's jobs.
        #[arg(long)]
        customer: Option<String>,
        /// Only jobs in this state: running, succeeded or failed.
        #[arg(long, value_parser = ["running", "succeeded", "failed"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; prints it once (only its hash is kept).
    Create {
        /// Name, logged with each request the token makes (e.g. `dashboard`).
        name: String,
        /// What it may do: read, deploy, delete (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
    },
    /// List tokens (names, scopes, dates; never secrets).
    List,
    /// Revoke a token by name; its next request gets 401.
    Revoke {
        /// The token's name.
        name: String,
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
        dns_hook: cli.dns_hook.clone(),
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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Move { name, to: _, host } => {
            let name = CustomerName::parse(&name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
            let control = Control::new(cfg).await;
            let (c, p) = (&control.clients, &stderr_progress());
            let moved =
                match control::moves::choose_target(c, &control.config, &name, host.as_deref(), p)
                    .await
                {
                    Ok(to) => {
                        eprintln!(
                            "control: moving {name} to {to}; if this stops half-way, \
                         `control move {name} --to shared --host {to}` finishes it"
                        );
                        control::moves::move_shared(c, &control.config, &name, Some(&to), p).await
                    }
                    Err(e) => Err(e),
                };
            Ok(match moved {
                Ok(out) => {
                    print_json(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            })
        }
        Command::Drain { host } => {
            let control = Control::new(cfg).await;
            Ok(
                match control::moves::drain(
                    &control.clients,
                    &control.config,
                    &host,
                    &stderr_progress(),
                )
                .await
                {
                    Ok(out) => {
                        print_json(&out);
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
        Command::Token(cmd) => token(&cli.state_db, cmd),
        Command::Jobs {
            id,
            customer,
            state,
            limit,
        } => {
            let store = Store::open(&cli.state_db)?;
            match id {
                Some(id) => match store.with(|c| control::jobs::get(c, id, 0))? {
                    Some(job) => print_json(&job),
                    None => anyhow::bail!("no job {id} in {}", cli.state_db.display()),
                },
                None => {
                    let filter = JobFilter {
                        customer,
                        state: state
                            .map(|s| serde_json::from_value(serde_json::json!(s)))
                            .transpose()?,
                        limit: Some(limit),
                    };
                    print_json(&store.with(|c| control::jobs::list(c, &filter))?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            listen,
            job_retention_hours,
        } => {
            let store = Store::open(&cli.state_db)?;
            if !tokens::list(&store)?.iter().any(|t| t.revoked_at.is_none()) {
                eprintln!(
                    "control: warning: no API token in {}; every request will get 401 until \
                     `control token create NAME --scope read,deploy,delete` makes one",
                    cli.state_db.display()
                );
            }
            let control = Arc::new(Control::new(cfg).await);
            let jobs = JobTable::new(store.clone());
            let resumed = jobs.resume(control.clone()).await?;
            if resumed > 0 {
                eprintln!("control: {resumed} job(s) left running by the previous server: resumed or closed");
            }
            jobs.evict_every_minute(Duration::from_secs(job_retention_hours * 3600));
            let app = api::router(ApiState {
                control,
                jobs,
                store,
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

/// `control token …`: the API's tokens in the state file.
fn token(state: &Path, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(state)?;
    match cmd {
        TokenCommand::Create { name, scope } => {
            let scopes = scope
                .iter()
                .map(|s| Scope::parse(s.trim()))
                .collect::<Result<BTreeSet<_>, _>>()?;
            let token = tokens::create(&store, &name, &scopes)?;
            print_json(&serde_json::json!({ "name": name, "scopes": scopes, "token": token }));
            eprintln!("control: token {name} made; this is the only time it is shown");
        }
        TokenCommand::List => print_json(&tokens::list(&store)?),
        TokenCommand::Revoke { name } => {
            if !tokens::revoke(&store, &name)? {
                anyhow::bail!("no live token named {name} (see `control token list`)");
            }
            eprintln!("control: token {name} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
