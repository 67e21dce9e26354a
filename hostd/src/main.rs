//! `hostd`: the shared host's daemon (`hostd serve`) and its operator CLI (`hostd ctl …`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hostd::ctl::{self, exit, CtlError};
use hostd::host::{Host, HostConfig};
use hostd::network::{Firewall, HostServices};
use hyper::Method;

const DEFAULT_SOCKET: &str = "/run/m8trx/hostd.sock";

#[derive(Parser)]
#[command(
    version,
    about = "Host daemon and operator CLI of an m8trx shared host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SecretsFrom {
    Ssm,
    None,
}

/// Templates `hostd ctl check` can bound a file by.
#[derive(Clone, Copy, ValueEnum)]
enum CheckTemplate {
    Agent,
    Baseline,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing the flags buys nothing
enum Command {
    /// Run the daemon: reconcile every tenant to its recorded state, then serve the API.
    Serve {
        /// Root-only unix socket of the API.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where tenant records live.
        #[arg(long, default_value = "/var/lib/m8trx/hostd")]
        state_dir: PathBuf,
        /// Where tenant volumes are mounted (`<dir>/<name>`); engines keep their data there.
        #[arg(long, default_value = "/srv/m8trx/tenants")]
        tenants_root: PathBuf,
        /// Exec roots, sockets and pidfiles of tenant engines.
        #[arg(long, default_value = "/run/m8trx/engines")]
        run_root: PathBuf,
        /// Tenant engine logs.
        #[arg(long, default_value = "/var/log/m8trx/engines")]
        log_dir: PathBuf,
        /// The host containerd every tenant engine shares.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        containerd: PathBuf,
        /// The dockerd binary.
        #[arg(long, default_value = "dockerd")]
        dockerd: PathBuf,
        /// Where tenant seccomp and AppArmor profiles are installed.
        #[arg(long, default_value = "/etc/m8trx/profiles")]
        profiles_dir: PathBuf,
        /// Credential broker address tenants may reach.
        #[arg(long, default_value = "169.254.170.23")]
        broker: std::net::Ipv4Addr,
        /// Credential broker port.
        #[arg(long, default_value_t = 80)]
        broker_port: u16,
        /// The credential broker's admin socket. Without it tenants are not registered with a
        /// broker and containers get no AWS credentials variables.
        #[arg(long)]
        broker_admin: Option<PathBuf>,
        /// Where tenants' SSM parameters come from: `ssm` (read as the customer's role,
        /// written to the tenant volume) or `none` (no secrets written).
        #[arg(long, value_enum, env = "HOSTD_SECRETS", default_value = "ssm")]
        secrets: SecretsFrom,
        /// AWS endpoint for STS and SSM (tests: a moto server); default: the SDK's regional ones.
        #[arg(long, env = "HOSTD_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// AWS region.
        #[arg(long, env = "HOSTD_AWS_REGION", default_value = "us-east-1")]
        aws_region: String,
        /// This host's id: SourceIdentity of the sessions hostd opens on customer roles.
        #[arg(long, env = "HOSTD_HOST_ID")]
        host_id: Option<String>,
        /// Image of the tailscale sidecar every agent tenant gets (production: the official
        /// image pinned by digest, loaded or pullable in tenant engines). Needs `--secrets ssm`
        /// (the auth key is the tenant's `tailscale-auth-key` parameter). Without it: no sidecar.
        #[arg(long, env = "HOSTD_TAILSCALE_IMAGE")]
        tailscale_image: Option<String>,
        /// sni-proxy's admin socket. Without it hostd manages no public routes.
        #[arg(long)]
        proxy_admin: Option<PathBuf>,
        /// Where tenants' broker token files live, bind-mounted read-only into their containers.
        #[arg(long, default_value = "/run/m8trx/tokens")]
        token_dir: PathBuf,
        /// Lifetime of a broker token in seconds (at least 120); hostd rotates at half of it.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(120..))]
        token_ttl_secs: u64,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Seconds between checks that every running tenant's engine is alive (a dead one
        /// is restarted; its containers survive through live-restore) and that a container
        /// its engine restarted is bandwidth-shaped.
        #[arg(long, default_value_t = 5)]
        supervise_interval: u64,
        /// Address serving hostd's Prometheus metrics at /metrics (per-tenant CPU, memory,
        /// io, network, containers, power state, deploys; see hostd/README.md); none when not
        /// given. A local address: the series name every tenant.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Seconds between idle checks: each tenant's activity through sni-proxy and its CPU
        /// are sampled, and its spec's `idle` policy (freeze, sleep, `wake_at`) applied.
        /// Needs --proxy-admin (without the proxy nothing could wake a tenant, so none sleeps
        /// on its own; `hostd ctl sleep|freeze|wake` still work).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        idle_interval: u64,
    },
    /// Operator commands against a running hostd.
    ///
    /// Exit codes: 0 success; 1 the operation failed (a step, a host service; running it
    /// again resumes); 2 bad command line or unreadable input file; 3 hostd unreachable;
    /// 4 no such tenant (or service, container); 5 the tenant's state does not allow it now
    /// (stopped, quarantined, being destroyed, unreadable record); 6 refused: the input
    /// breaks a rule (spec field, compose key, image tarball), nothing changed; 7 the
    /// tenant's engine is not running or does not answer.
    Ctl {
        /// hostd's API socket.
        #[arg(long, default_value = DEFAULT_SOCKET, global = true)]
        socket: PathBuf,
        /// Print JSON (one object; progress as JSON lines before it) instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        op: Op,
    },
}

#[derive(Subcommand)]
enum Op {
    /// Provision a tenant from a spec file (resumes a half-done create).
    Create {
        /// Tenant spec (YAML or JSON).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List tenants.
    List,
    /// Show one tenant.
    Status {
        /// Tenant name.
        name: String,
    },
    /// Deploy a compose file into a tenant (checked against the tenant policy first).
    Deploy {
        /// Tenant name.
        name: String,
        /// Compose file.
        #[arg(short = 'f', long = "file", required_unless_present = "bundle")]
        file: Option<PathBuf>,
        /// A whole deploy as one JSON file, the API's body (`{"compose", "env", "files"}`),
        /// instead of -f, --env-file and --include: what control sends from the dashboard.
        #[arg(long, value_name = "JSON", conflicts_with_all = ["file", "env_file", "include"])]
        bundle: Option<PathBuf>,
        /// Variables for the file (`KEY=VALUE` lines, as docker compose reads `.env`): for
        /// `${VAR}` interpolation, `environment` keys written without a value, and
        /// `COMPOSE_PROFILES`. Recorded with the revision.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// A file (or directory, with every file in it) the compose file mounts — by
        /// `configs`/`secrets` `file:` or a read-only `./path` bind — given relative to the
        /// compose file's directory, as compose resolves them. Repeatable. Kept on the
        /// tenant's encrypted volume, mounted read-only.
        #[arg(long = "include", value_name = "PATH")]
        include: Vec<PathBuf>,
    },
    /// Check a compose file offline, exactly as a deploy would before touching an engine:
    /// print every violation (key path and rule), or the translated plan when accepted.
    /// Exit status 1 when refused.
    Check {
        /// Compose file.
        file: PathBuf,
        /// The template whose default limits bound the file (a deployed tenant's own limits
        /// may differ; see `hostd ctl status`).
        #[arg(long, value_enum, default_value = "baseline")]
        template: CheckTemplate,
        /// Variables, as for `deploy --env-file`.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// A file (or directory, with every file in it) the compose file mounts — by
        /// `configs`/`secrets` `file:` or a read-only `./path` bind — given relative to the
        /// compose file's directory, as compose resolves them. As for `deploy --include`.
        #[arg(long = "include", value_name = "PATH")]
        include: Vec<PathBuf>,
    },
    /// Print the logs of the tenant's project containers, or of one service's.
    Logs {
        /// Tenant name.
        name: String,
        /// Only this compose service.
        service: Option<String>,
        /// Keep streaming new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each container's log (`all` for everything).
        #[arg(long, default_value = "all")]
        tail: String,
    },
    /// Load an image tarball (`docker save` format) into the tenant's engine, for hosts
    /// without a registry; compose files then use the image by name.
    Load {
        /// Tenant name.
        name: String,
        /// The tarball.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
    },
    /// Re-read the tenant's SSM parameters as its role, rewrite the files, restart its containers.
    RotateSecrets {
        /// Tenant name.
        name: String,
    },
    /// Stop the tenant's containers and engine; keeps data, rules and cgroup. `start` undoes it.
    Stop {
        /// Tenant name.
        name: String,
    },
    /// Start a stopped tenant: engine, then the containers that ran when it was stopped.
    Start {
        /// Tenant name.
        name: String,
    },
    /// Freeze an idle tenant now: its whole cgroup stops being scheduled, processes and
    /// memory kept; its routes hold connections and wake it (what the idle policy does
    /// after `idle.freeze_after`).
    Freeze {
        /// Tenant name.
        name: String,
    },
    /// Put a tenant to sleep now: containers and engine stopped, memory released; volume,
    /// secrets and state kept; its routes hold connections and wake it (what the idle
    /// policy does after `idle.sleep_after`).
    Sleep {
        /// Tenant name.
        name: String,
    },
    /// Wake a frozen or sleeping tenant and route to it again.
    Wake {
        /// Tenant name.
        name: String,
    },
    /// Cut all of the tenant's networking (in and out), keeping containers, data and engine
    /// for forensics; the operator keeps access through the engine socket.
    Quarantine {
        /// Tenant name.
        name: String,
        /// Lift the quarantine instead.
        #[arg(long)]
        lift: bool,
    },
    /// Remove a tenant and everything hostd made for it.
    Destroy {
        /// Tenant name.
        name: String,
        /// Also delete the engine's data (images, volumes, containers).
        #[arg(long)]
        wipe: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve {
            socket,
            state_dir,
            tenants_root,
            run_root,
            log_dir,
            containerd,
            dockerd,
            profiles_dir,
            broker,
            broker_port,
            broker_admin,
            proxy_admin,
            secrets,
            tailscale_image,
            aws_endpoint,
            aws_region,
            host_id,
            token_dir,
            token_ttl_secs,
            log_format,
            supervise_interval,
            idle_interval,
            metrics_listen,
        } => {
            // Diagnostics on stderr (the journal takes both streams; stdout stays free).
            let sub = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                );
            match log_format {
                LogFormat::Json => sub.json().init(),
                LogFormat::Text => sub.init(),
            }
            let cfg = HostConfig {
                state_dir,
                tenants_root,
                run_root,
                log_dir,
                containerd,
                dockerd,
                profiles_dir,
                etc: "/etc".into(),
                services: HostServices {
                    broker,
                    broker_port,
                },
                broker_admin,
                proxy_admin,
                token_dir,
                token_ttl: std::time::Duration::from_secs(token_ttl_secs),
                firewall: Firewall::default(),
            };
            let every = std::time::Duration::from_secs(supervise_interval.max(1));
            let host = host_id.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "m8trx-host".into())
            });
            if tailscale_image.is_some() && secrets == SecretsFrom::None {
                eprintln!("hostd: --tailscale-image needs --secrets ssm (the auth key is a tenant secret)");
                return ExitCode::from(2);
            }
            let tailscale = tailscale_image.map(|image| hostd::tailscale::TailscaleConfig {
                image,
                host_id: host.clone(),
            });
            let aws = (secrets == SecretsFrom::Ssm).then_some((aws_endpoint, aws_region, host));
            let idle_every = std::time::Duration::from_secs(idle_interval);
            let timing = Timing {
                supervise: every,
                idle: idle_every,
            };
            match rt.block_on(serve(cfg, socket, timing, metrics_listen, aws, tailscale)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ctl { socket, json, op } => match rt.block_on(run_ctl(&socket, json, op)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if !e.message.is_empty() {
                    eprintln!("hostd ctl: {}", e.message);
                }
                ExitCode::from(u8::try_from(e.code).unwrap_or(1))
            }
        },
    }
}

/// How often the daemon's background loops run.
struct Timing {
    supervise: std::time::Duration,
    idle: std::time::Duration,
}

async fn serve(
    cfg: HostConfig,
    socket: PathBuf,
    timing: Timing,
    metrics_listen: Option<std::net::SocketAddr>,
    aws: Option<(Option<String>, String, String)>,
    tailscale: Option<hostd::tailscale::TailscaleConfig>,
) -> anyhow::Result<()> {
    // Bound before anything else: a wrong address stops hostd at once, with its reason.
    let metrics = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?,
        ),
        None => None,
    };
    let mut host = Host::open(cfg).context("opening hostd's state store")?;
    if let Some((endpoint, region, host_id)) = aws {
        let source = hostd::secrets::SecretsSource::new(endpoint, region, host_id)
            .await
            .context("configuring the SSM secrets reader (--secrets none turns it off)")?;
        host = host.with_secrets(source);
    }
    match tailscale {
        Some(ts) => host = host.with_tailscale(ts),
        None => tracing::warn!("no --tailscale-image: agent tenants get no tailscale sidecar"),
    }
    let errors = host
        .reconcile(&mut |line| tracing::info!(target: "reconcile", "{line}"))
        .await;
    for e in &errors {
        tracing::error!(target: "reconcile", "{e}");
    }
    tracing::info!(socket = %socket.display(), tenants_with_errors = errors.len(), "serving");
    let daemon = hostd::api::Daemon::new(host);
    tokio::spawn(hostd::api::supervise(daemon.clone(), timing.supervise));
    if let Some(listener) = metrics {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = hostd::api::serve_metrics(d, listener).await {
                tracing::error!("metrics listener stopped: {e}");
            }
        });
    }
    if daemon.host().cfg().proxy_admin.is_some() {
        tokio::spawn(hostd::idle::watch(daemon.clone(), timing.idle));
        tokio::spawn(hostd::idle::listen_for_wakes(daemon.clone()));
    } else {
        tracing::warn!("no --proxy-admin: no tenant is frozen or put to sleep on its own");
    }
    tokio::select! {
        r = hostd::api::serve(daemon, &socket) => r.with_context(|| format!("serving on {}", socket.display())),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; engines keep running and are re-adopted on start");
            Ok(())
        }
    }
}

async fn run_ctl(socket: &std::path::Path, json: bool, op: Op) -> Result<(), CtlError> {
    let show = |v: &serde_json::Value| {
        if json {
            println!("{v}");
        } else if let Some(list) = v.as_array() {
            print!("{}", ctl::table(list));
        } else if v.get("name").is_some() {
            print!("{}", ctl::table(std::slice::from_ref(v)));
            if v.get("steps_not_in_place").is_some() {
                print!("{}", ctl::details(v));
            }
        } else if let Some(obj) = v.as_object() {
            for (k, val) in obj {
                println!(
                    "{k}: {}",
                    val.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| val.to_string())
                );
            }
        } else {
            println!("{v}");
        }
    };
    let v = match op {
        Op::Check {
            file,
            template,
            env_file,
            include,
        } => {
            let bundle = ctl::read_bundle(&file, env_file.as_ref(), &include)?;
            let template = match template {
                CheckTemplate::Agent => hostd::spec::Template::Agent,
                CheckTemplate::Baseline => hostd::spec::Template::Baseline,
            };
            let checked = hostd::check::check(&bundle, &template.default_limits());
            if json {
                println!("{}", checked.report);
            } else {
                print!("{}", hostd::check::text(&checked, &file));
            }
            if checked.accepted {
                return Ok(());
            }
            return Err(CtlError {
                message: String::new(),
                code: exit::FAILED,
            });
        }
        Op::Create { file } => {
            ctl::run(
                socket,
                Method::POST,
                "/v1/tenants",
                ctl::text_body(Some(ctl::read_input(&file)?)),
                json,
            )
            .await?
        }
        Op::List => {
            ctl::run(
                socket,
                Method::GET,
                "/v1/tenants",
                ctl::text_body(None),
                json,
            )
            .await?
        }
        Op::Status { name } => {
            ctl::run(
                socket,
                Method::GET,
                &format!("/v1/tenants/{name}"),
                ctl::text_body(None),
                json,
            )
            .await?
        }
        Op::Deploy {
            name,
            file,
            bundle,
            env_file,
            include,
        } => {
            let bundle = match (bundle, file) {
                (Some(json_file), _) => ctl::read_bundle_json(&json_file)?,
                (None, Some(file)) => ctl::read_bundle(&file, env_file.as_ref(), &include)?,
                (None, None) => {
                    return Err(CtlError {
                        message:
                            "give the compose file (-f FILE) or a whole bundle (--bundle JSON)"
                                .into(),
                        code: exit::USAGE,
                    })
                }
            };
            let body = ctl::text_body(Some(serde_json::to_string(&bundle).map_err(|e| {
                CtlError {
                    message: format!("encoding the deploy: {e}"),
                    code: exit::FAILED,
                }
            })?));
            ctl::run(
                socket,
                Method::POST,
                &format!("/v1/tenants/{name}/deploy"),
                body,
                json,
            )
            .await?
        }
        Op::Destroy { name, wipe } => {
            ctl::run(
                socket,
                Method::DELETE,
                &format!("/v1/tenants/{name}?wipe={wipe}"),
                ctl::text_body(None),
                json,
            )
            .await?
        }
        Op::Logs {
            name,
            service,
            follow,
            tail,
        } => {
            let mut path = format!("/v1/tenants/{name}/logs?follow={follow}&tail={tail}");
            if let Some(s) = service {
                path.push_str(&format!("&service={s}"));
            }
            ctl::run(socket, Method::GET, &path, ctl::text_body(None), json).await?;
            return Ok(());
        }
        Op::Load { name, input } => {
            let body = ctl::file_body(&input).await?;
            let path = format!("/v1/tenants/{name}/images");
            ctl::run(socket, Method::POST, &path, body, json).await?
        }
        Op::RotateSecrets { name } => {
            post(socket, &format!("/v1/tenants/{name}/rotate-secrets"), json).await?
        }
        Op::Stop { name } => post(socket, &format!("/v1/tenants/{name}/stop"), json).await?,
        Op::Start { name } => post(socket, &format!("/v1/tenants/{name}/start"), json).await?,
        Op::Freeze { name } => post(socket, &format!("/v1/tenants/{name}/freeze"), json).await?,
        Op::Sleep { name } => post(socket, &format!("/v1/tenants/{name}/sleep"), json).await?,
        Op::Wake { name } => post(socket, &format!("/v1/tenants/{name}/wake"), json).await?,
        Op::Quarantine { name, lift } => {
            let path = format!("/v1/tenants/{name}/quarantine?on={}", !lift);
            post(socket, &path, json).await?
        }
    };
    show(&v);
    let _ = exit::OK;
    Ok(())
}

async fn post(
    socket: &std::path::Path,
    path: &str,
    json: bool,
) -> Result<serde_json::Value, CtlError> {
    ctl::run(socket, Method::POST, path, ctl::text_body(None), json).await
}
