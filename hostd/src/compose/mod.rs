//! Deploys a policy-checked compose file (the typed model of `model`) into a tenant engine
//! through bollard: networks, named volumes, then the active services' containers in
//! dependency order (waiting for `service_healthy` and `service_completed_successfully`
//! within one deadline for the whole deploy), then the removal of containers of services the
//! file no longer has. Objects are labelled as docker compose labels them so compose tooling
//! pointed at the tenant engine lists the project. hostd's hardening is applied to every
//! container whatever the file says: cap_drop ALL, no-new-privileges, the tenant's seccomp and
//! AppArmor profiles, read-only root, noexec/nosuid/nodev tmpfs, pids and memory limits, and
//! the credential-broker environment and token mount.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

pub mod bundle;
pub mod files;
pub mod model;
mod order;
mod plan;

pub use bundle::{bundle_digest, file_digest, normalize_path, parse_env_file, Bundle};
pub use model::forms::{parse_duration, parse_size};
pub use model::ComposeFile;
use order::Dep;
pub use order::{active_profiles, active_services, is_shared, PROFILES_VAR};
pub use plan::Plan;

/// Label keys docker compose uses; `docker compose -p <project> ps` filters on them.
pub mod labels {
    /// Project name.
    pub const PROJECT: &str = "com.docker.compose.project";
    /// Service name.
    pub const SERVICE: &str = "com.docker.compose.service";
    /// Replica number.
    pub const NUMBER: &str = "com.docker.compose.container-number";
    /// One-off (`run`) containers are "True"; ours never are.
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    /// Hash of the effective configuration; a re-deploy recreates only changed services.
    pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
    /// Network name inside the project.
    pub const NETWORK: &str = "com.docker.compose.network";
    /// Volume name inside the project.
    pub const VOLUME: &str = "com.docker.compose.volume";
    /// The m8trx tenant owning the object.
    pub const TENANT: &str = "m8trx.tenant";
}

/// Failures deploying a project; each names the service and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The file is valid for the policy but cannot be deployed as written.
    #[error("service `{service}`: {message}")]
    Invalid {
        /// The service.
        service: String,
        /// What is wrong.
        message: String,
    },
    /// The engine refused an operation.
    #[error("{what}: {source}")]
    Engine {
        /// What hostd was doing.
        what: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A dependency never reached the condition a service waits for.
    #[error("service `{service}` waits for `{dependency}` to be {condition}, which did not happen within the deploy's {secs}s deadline: {detail}")]
    Dependency {
        /// The waiting service.
        service: String,
        /// The service it depends on.
        dependency: String,
        /// The compose condition.
        condition: String,
        /// How long hostd waited.
        secs: u64,
        /// Last observed state.
        detail: String,
    },
}

pub(super) fn invalid(service: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        service: service.to_owned(),
        message: message.into(),
    }
}

fn engine(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ComposeError {
    let what = what.into();
    move |source| ComposeError::Engine { what, source }
}

/// What hostd forces onto every container of the tenant.
#[derive(Debug, Clone, Default)]
pub struct Hardening {
    /// Tenant profiles (`seccomp=<json>`, `apparmor=<profile>`) plus `no-new-privileges:true`.
    pub security_opt: Vec<String>,
    /// Memory limit when the service sets none (bytes).
    pub default_memory: i64,
    /// Upper bound for any service's memory limit (bytes): the tenant's aggregate.
    pub max_memory: i64,
    /// pids limit per container.
    pub pids_limit: i64,
    /// Environment every container gets (credential-broker variables).
    pub env: Vec<String>,
    /// Read-only bind mounts hostd owns (the broker token file), as (host path, container path).
    pub binds: Vec<(String, String)>,
    /// Where the deploy's secrets, configs and files are on the host.
    pub files: files::FileSources,
    /// Labels on every object.
    pub labels: HashMap<String, String>,
    /// Prefix of the host bridge names of the tenant's networks (`m8t-<slot>-`); each network's
    /// bridge is `<prefix><n>`, so the host firewall's `m8t-+` rules match every tenant bridge.
    pub bridge_prefix: String,
}

/// Linux limits interface names to 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// The bridge name of a new network: the lowest `<prefix><n>` no network of the engine uses
/// (`n` below 64, the name within IFNAMSIZ).
fn free_bridge_name(prefix: &str, used: &std::collections::HashSet<String>) -> Option<String> {
    (0..64)
        .map(|n| format!("{prefix}{n}"))
        .find(|b| !used.contains(b) && b.len() <= IFNAMSIZ_MAX)
}

/// dockerd's network option naming the host bridge of a bridge network.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// How long one deploy may wait, in all, for dependencies' conditions (healthchecks, one-shot
/// jobs): a chain of `service_healthy` dependencies shares this one deadline.
pub const DEPLOY_DEADLINE: Duration = Duration::from_secs(600);

/// The `label` filter that lists a project's containers (or one service's) in its engine.
pub fn project_filter(
    project: &str,
    service: Option<&str>,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{}={project}", labels::PROJECT)];
    if let Some(s) = service {
        labels.push(format!("{}={s}", labels::SERVICE));
    }
    std::collections::HashMap::from([("label".to_owned(), labels)])
}

/// What a deploy of `file` would create, offline (`hostd ctl check`): the active services in
/// start order with their engine requests, hostd's hardening filled from the tenant's
/// `limits` (its profiles and broker environment named by placeholders).
pub fn preview(
    project: &str,
    file: &ComposeFile,
    vars: &HashMap<String, String>,
    limits: &m8trx_spec::tenant::Limits,
) -> Result<Vec<(String, ContainerCreateBody)>, ComposeError> {
    let memory = i64::try_from(limits.memory.0).unwrap_or(i64::MAX);
    let plan = Plan::new(
        project,
        Hardening {
            security_opt: vec![
                "seccomp=<the tenant's seccomp profile>".into(),
                "apparmor=<the tenant's AppArmor profile>".into(),
            ],
            default_memory: memory.min(512 << 20),
            max_memory: memory,
            pids_limit: i64::from(limits.pids),
            env: Vec::new(),
            binds: Vec::new(),
            files: files::FileSources {
                tree: Some("<the tenant volume>/bundle/<digest>".into()),
                platform: Some("<the tenant volume>/secrets".into()),
            },
            labels: HashMap::new(),
            bridge_prefix: "m8t-<slot>-".into(),
        },
    );
    let active = active_services(file, &active_profiles(vars));
    let deps = order::dependencies(file, &active)?;
    let mut nets: BTreeMap<String, bool> = file
        .networks
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_ref().and_then(|n| n.internal).unwrap_or(false),
            )
        })
        .collect();
    nets.entry("default".into()).or_insert(false);
    order::start_order(&deps)?
        .into_iter()
        .map(|s| {
            let body = plan.container_body(file, &s, &nets, vars)?;
            Ok((s, body))
        })
        .collect()
}

/// Before a pull: the registry's name passed the policy, and what it resolves to must too (a
/// public name can point at 127.0.0.1, and the engine pulls from the host's network namespace).
pub async fn registry_resolves_safely(image: &str) -> Result<(), String> {
    let Some(host) = crate::policy::registry_host(image) else {
        return Ok(());
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 443))
        .await
        .map(|a| a.collect())
        .unwrap_or_default();
    match addrs
        .iter()
        .find(|a| crate::policy::forbidden_registry_ip(a.ip()))
    {
        Some(a) => Err(format!(
            "registry {host} of image {image} resolves to {}, an address on the host or a private network, which tenant engines must not pull from; use a public registry or `hostd ctl load`",
            a.ip()
        )),
        None => Ok(()),
    }
}

/// One project in one tenant engine.
pub struct Project<'a> {
    docker: &'a Docker,
    plan: Plan,
    handover: Option<(&'a str, &'a dyn Handover)>,
}

/// What a start-first replacement calls once the new container runs (and is healthy, when
/// it has a healthcheck) and before the old one stops: the executor waits until the new
/// container serves and points the tenant's routes at it.
#[async_trait::async_trait]
pub trait Handover: Send + Sync {
    /// `service`'s new container, at `ip`, is to take over.
    async fn ready(&self, service: &str, ip: &str) -> Result<(), String>;
}

/// How a changed container of a service is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Remove the old container, then create the new one (compose's default).
    StopFirst,
    /// Create and start the new one, hand over, then stop the old one.
    StartFirst,
}

impl<'a> Project<'a> {
    /// A project named `m8trx-<tenant>` (see `CustomerName::compose_project`).
    pub fn new(docker: &'a Docker, name: impl Into<String>, hardening: Hardening) -> Self {
        Self {
            docker,
            plan: Plan::new(name, hardening),
            handover: None,
        }
    }

    /// Makes sure `image` is in the engine as `pull_policy` says: `missing` (the default)
    /// pulls only when absent, `always` pulls, `never` requires it loaded.
    /// Replaces `ingress` start-first unless its file says otherwise (and no other service
    /// shares its namespaces), calling `handover` before the old container stops: a redeploy
    /// of the service the tenant's routes point at loses no connection.
    pub fn with_handover(mut self, ingress: &'a str, handover: &'a dyn Handover) -> Self {
        self.handover = Some((ingress, handover));
        self
    }

    /// The replacement order of `service`: its `deploy.update_config.order`, else start-first
    /// for the ingress (when nothing shares it), else stop-first.
    fn order(&self, file: &ComposeFile, service: &str) -> Order {
        let said = file.services[service]
            .deploy
            .as_ref()
            .and_then(|d| d.update_config.as_ref())
            .and_then(|u| u.order.as_deref());
        match said {
            Some("start-first") => Order::StartFirst,
            Some(_) => Order::StopFirst,
            None if self.handover.is_some_and(|(i, _)| i == service)
                && !is_shared(file, service) =>
            {
                Order::StartFirst
            }
            None => Order::StopFirst,
        }
    }

    pub async fn ensure_image(
        &self,
        image: &str,
        pull_policy: Option<&str>,
    ) -> Result<(), ComposeError> {
        let present = self.docker.inspect_image(image).await.is_ok();
        match (pull_policy, present) {
            (Some("never"), false) => {
                return Err(ComposeError::Invalid {
                    service: "(images)".into(),
                    message: format!("image {image} is not in the tenant engine and pull_policy is never: load it with `hostd ctl load`"),
                })
            }
            (Some("always"), _) => {}
            (_, true) => return Ok(()),
            (_, false) => {}
        }
        registry_resolves_safely(image)
            .await
            .map_err(|message| ComposeError::Invalid {
                service: "(images)".into(),
                message,
            })?;
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(engine(format!(
                "image {image} is not in the tenant engine and pulling it failed (load it from a tarball on air-gapped hosts)"
            )))?;
        }
        Ok(())
    }

    /// Deploys `file` (already accepted by [`crate::policy::check_compose`]) with the tenant's
    /// variables `vars` (which also name the active profiles, `COMPOSE_PROFILES`); reports
    /// each step through `progress` and returns the container names in start order.
    pub async fn deploy(
        &self,
        file: &ComposeFile,
        vars: &HashMap<String, String>,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Vec<String>, ComposeError> {
        let active = active_services(file, &active_profiles(vars));
        let deps = order::dependencies(file, &active)?;
        let order = order::start_order(&deps)?;
        let deadline = Instant::now() + DEPLOY_DEADLINE;

        // Networks: the declared ones plus `default`, each `<project>_<name>`.
        let mut nets: BTreeMap<String, bool> = BTreeMap::new();
        for (k, v) in &file.networks {
            nets.insert(
                k.clone(),
                v.as_ref().and_then(|n| n.internal).unwrap_or(false),
            );
        }
        nets.entry("default".into()).or_insert(false);
        let mut bridges: std::collections::HashSet<String> = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(engine("listing networks".to_owned()))?
            .into_iter()
            .filter_map(|n| n.options?.get(BRIDGE_NAME_OPTION).cloned())
            .collect();
        for (net, internal) in &nets {
            let full = format!("{}_{net}", self.plan.name);
            if self.docker.inspect_network(&full, None).await.is_ok() {
                continue;
            }
            let bridge = free_bridge_name(&self.plan.hardening.bridge_prefix, &bridges).ok_or_else(
                || ComposeError::Invalid {
                    service: "(networks)".to_owned(),
                    message: format!(
                        "no free bridge name with prefix {} for network `{net}`: declare fewer networks",
                        self.plan.hardening.bridge_prefix
                    ),
                },
            )?;
            bridges.insert(bridge.clone());
            progress(format!("creating network {full} (bridge {bridge})"));
            let mut l = self.plan.labels(&[(labels::NETWORK, net.clone())]);
            for (k, v) in file
                .networks
                .get(net)
                .and_then(|n| n.as_ref()?.labels.as_ref())
                .map(|p| p.0.clone())
                .unwrap_or_default()
            {
                l.entry(k).or_insert(v.unwrap_or_default());
            }
            self.docker
                .create_network(NetworkCreateRequest {
                    name: full.clone(),
                    driver: Some("bridge".into()),
                    internal: Some(*internal),
                    labels: Some(l),
                    options: Some(HashMap::from([(BRIDGE_NAME_OPTION.to_owned(), bridge)])),
                    ..Default::default()
                })
                .await
                .map_err(engine(format!("creating network {full}")))?;
        }
        for (v, def) in &file.volumes {
            let full = format!("{}_{v}", self.plan.name);
            progress(format!("ensuring volume {full}"));
            let mut l = self.plan.labels(&[(labels::VOLUME, v.clone())]);
            for (k, val) in def
                .as_ref()
                .and_then(|d| d.labels.as_ref())
                .map(|p| p.0.clone())
                .unwrap_or_default()
            {
                l.entry(k).or_insert(val.unwrap_or_default());
            }
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(full.clone()),
                    labels: Some(l),
                    ..Default::default()
                })
                .await
                .map_err(engine(format!("creating volume {full}")))?;
        }

        let mut started = Vec::new();
        for service in &order {
            let svc = &file.services[service];
            for dep in &deps[service] {
                self.wait_for(service, dep, deadline).await?;
            }
            let body = self.plan.container_body(file, service, &nets, vars)?;
            let hash = config_hash(&body);
            let cname = format!("{}-{service}-1", self.plan.name);
            if let Ok(existing) = self
                .docker
                .inspect_container(&cname, None::<InspectContainerOptions>)
                .await
            {
                let same = existing
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(labels::CONFIG_HASH).cloned())
                    .is_some_and(|h| h == hash);
                let running = existing.state.and_then(|s| s.running).unwrap_or(false);
                if same && running {
                    progress(format!("{cname} up to date"));
                    started.push(cname);
                    continue;
                }
                if running && self.order(file, service) == Order::StartFirst {
                    self.ensure_image(
                        body.image.as_deref().unwrap_or_default(),
                        svc.pull_policy.as_deref(),
                    )
                    .await?;
                    self.replace_start_first(service, &cname, body, hash, deadline, progress)
                        .await?;
                    started.push(cname);
                    continue;
                }
                progress(format!("recreating {cname}"));
                let rm = RemoveContainerOptionsBuilder::default().force(true).build();
                self.docker
                    .remove_container(&cname, Some(rm))
                    .await
                    .map_err(engine(format!("removing {cname}")))?;
            }
            let image = body.image.clone().unwrap_or_default();
            self.ensure_image(&image, svc.pull_policy.as_deref())
                .await?;
            progress(format!("creating {cname} from {image}"));
            self.create_and_start(&cname, body, hash).await?;
            started.push(cname);
        }
        self.remove_orphans(&started, progress).await?;
        Ok(started)
    }

    async fn create_and_start(
        &self,
        cname: &str,
        mut body: ContainerCreateBody,
        hash: String,
    ) -> Result<(), ComposeError> {
        if let Some(l) = body.labels.as_mut() {
            l.insert(labels::CONFIG_HASH.into(), hash);
        }
        // The engine's API (before 1.44) joins one network at create: the one named by the
        // network mode; the others are joined before the container starts, as compose does.
        let primary = body
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone());
        let mut others = Vec::new();
        if let Some(endpoints) = body
            .networking_config
            .as_mut()
            .and_then(|n| n.endpoints_config.as_mut())
        {
            let extra: Vec<String> = endpoints
                .keys()
                .filter(|n| Some(*n) != primary.as_ref())
                .cloned()
                .collect();
            for n in extra {
                if let Some(ep) = endpoints.remove(&n) {
                    others.push((n, ep));
                }
            }
        }
        let opts = CreateContainerOptionsBuilder::default().name(cname).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(engine(format!("creating {cname}")))?;
        for (network, ep) in others {
            let join = bollard::models::NetworkConnectRequest {
                container: cname.to_owned(),
                endpoint_config: Some(ep),
            };
            self.docker
                .connect_network(&network, join)
                .await
                .map_err(engine(format!("connecting {cname} to {network}")))?;
        }
        self.docker
            .start_container(cname, None)
            .await
            .map_err(engine(format!("starting {cname}")))
    }

    /// Start-first: the new container as `<name>-next`, running (and healthy, with a
    /// healthcheck) within the deploy's deadline, the handover, then the old one stopped
    /// (its own stop grace period) and removed, and the new one renamed to `<name>`. A new
    /// container that never gets ready is removed and the old one keeps serving.
    async fn replace_start_first(
        &self,
        service: &str,
        cname: &str,
        body: ContainerCreateBody,
        hash: String,
        deadline: Instant,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), ComposeError> {
        let next = format!("{cname}-next");
        let rm = || RemoveContainerOptionsBuilder::default().force(true).build();
        // A replacement a crash interrupted.
        let _ = self.docker.remove_container(&next, Some(rm())).await;
        let healthcheck = body
            .healthcheck
            .as_ref()
            .and_then(|h| h.test.as_ref())
            .is_some_and(|t| t.first().map(String::as_str) != Some("NONE"));
        progress(format!(
            "starting a new {service} container beside {cname} (start-first)"
        ));
        self.create_and_start(&next, body, hash).await?;
        let ready = self.ready(service, &next, healthcheck, deadline).await;
        let ready = match ready {
            Ok(ip) => match self.handover {
                Some((_, h)) => h.ready(service, &ip).await.map_err(|e| invalid(service, e)),
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            let _ = self.docker.remove_container(&next, Some(rm())).await;
            return Err(e);
        }
        progress(format!("stopping {cname}: its replacement serves"));
        self.docker
            .stop_container(
                cname,
                None::<bollard::query_parameters::StopContainerOptions>,
            )
            .await
            .map_err(engine(format!("stopping {cname}")))?;
        self.docker
            .remove_container(cname, Some(rm()))
            .await
            .map_err(engine(format!("removing {cname}")))?;
        let opts = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(cname)
            .build();
        self.docker
            .rename_container(&next, opts)
            .await
            .map_err(engine(format!("renaming {next} to {cname}")))
    }

    /// Waits until `container` runs (and is healthy, with a healthcheck) and returns its
    /// address on its first network.
    async fn ready(
        &self,
        service: &str,
        container: &str,
        healthcheck: bool,
        deadline: Instant,
    ) -> Result<String, ComposeError> {
        loop {
            let c = self
                .docker
                .inspect_container(container, None::<InspectContainerOptions>)
                .await
                .map_err(engine(format!("inspecting {container}")))?;
            let state = c.state.unwrap_or_default();
            let health = state
                .health
                .as_ref()
                .and_then(|h| h.status)
                .map(|s| s.to_string());
            let ip = c
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|n| {
                    n.into_values()
                        .find_map(|e| e.ip_address.filter(|i| !i.is_empty()))
                })
                .unwrap_or_default();
            let up = state.running == Some(true)
                && (!healthcheck || health.as_deref() == Some("healthy"));
            if up {
                return Ok(ip);
            }
            if state.running == Some(false)
                || health.as_deref() == Some("unhealthy")
                || Instant::now() > deadline
            {
                return Err(invalid(
                    service,
                    format!(
                        "its new container did not get ready (status {:?}, health {health:?}, exit code {:?}); the old one keeps serving",
                        state.status, state.exit_code
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes the project's containers that the deployed file does not start (a service
    /// removed from the file, or moved to an inactive profile): hostd owns the project, and
    /// an orphan would keep running outside what the tenant's record says.
    async fn remove_orphans(
        &self,
        keep: &[String],
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), ComposeError> {
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&project_filter(&self.plan.name, None))
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(engine("listing the project's containers".to_owned()))?;
        for c in list {
            let Some(name) = c
                .names
                .iter()
                .flatten()
                .map(|n| n.trim_start_matches('/').to_owned())
                .next()
            else {
                continue;
            };
            if keep.contains(&name) {
                continue;
            }
            progress(format!(
                "removing {name}: its service is not in the deployed file"
            ));
            let rm = RemoveContainerOptionsBuilder::default().force(true).build();
            self.docker
                .remove_container(&name, Some(rm))
                .await
                .map_err(engine(format!("removing {name}")))?;
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        service: &str,
        dep: &Dep,
        deadline: Instant,
    ) -> Result<(), ComposeError> {
        let cname = format!("{}-{}-1", self.plan.name, dep.service);
        loop {
            let state = self
                .docker
                .inspect_container(&cname, None::<InspectContainerOptions>)
                .await
                .map_err(engine(format!("inspecting {cname}")))?
                .state
                .unwrap_or_default();
            let health = state
                .health
                .as_ref()
                .and_then(|h| h.status)
                .map(|s| s.to_string());
            let detail = format!(
                "status {:?}, health {:?}, exit code {:?}",
                state.status, health, state.exit_code
            );
            let met = match dep.condition.as_str() {
                "service_healthy" => health.as_deref() == Some("healthy"),
                "service_completed_successfully" => {
                    state.running == Some(false)
                        && state.exit_code == Some(0)
                        && state
                            .finished_at
                            .as_deref()
                            .is_some_and(|f| !f.starts_with("0001"))
                }
                _ => state.running == Some(true) || state.exit_code == Some(0),
            };
            if met {
                return Ok(());
            }
            let failed = match dep.condition.as_str() {
                "service_completed_successfully" => {
                    state.running == Some(false) && state.exit_code.is_some_and(|c| c != 0)
                }
                "service_healthy" => health.as_deref() == Some("unhealthy"),
                _ => false,
            };
            if failed || Instant::now() > deadline {
                return Err(ComposeError::Dependency {
                    service: service.to_owned(),
                    dependency: dep.service.clone(),
                    condition: dep.condition.clone(),
                    secs: DEPLOY_DEADLINE.as_secs(),
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A digest of the engine request, the same for the same request whatever the order its
/// maps were filled in (labels and tmpfs are hash maps): a redeploy of an unchanged file
/// must find every container up to date.
fn config_hash(body: &ContainerCreateBody) -> String {
    use sha2::{Digest, Sha256};
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&m[k], out);
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for x in a {
                    canonical(x, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(&serde_json::to_value(body).unwrap_or_default(), &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(spec: &[(&str, &[&str])]) -> BTreeMap<String, Vec<Dep>> {
        spec.iter()
            .map(|(s, d)| {
                (
                    s.to_string(),
                    d.iter()
                        .map(|x| Dep {
                            service: x.to_string(),
                            condition: "service_started".into(),
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_registry_name_resolving_to_the_host_is_refused_before_a_pull() {
        let e = registry_resolves_safely("localhost:5000/evil:1")
            .await
            .unwrap_err();
        assert!(
            e.contains("resolves to 127.0.0.1") || e.contains("resolves to ::1"),
            "{e}"
        );
        assert!(
            registry_resolves_safely("nginx:1.27").await.is_ok(),
            "Docker Hub: no name to check"
        );
    }

    #[test]
    fn the_config_hash_ignores_map_order() {
        let body = |pairs: &[(&str, &str)]| ContainerCreateBody {
            labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        };
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let fwd: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let rev: Vec<(&str, &str)> = fwd.iter().rev().copied().collect();
        assert_eq!(config_hash(&body(&fwd)), config_hash(&body(&rev)));
        assert_ne!(config_hash(&body(&fwd)), config_hash(&body(&fwd[1..])));
    }

    #[test]
    fn start_order_puts_dependencies_first_and_names_cycles() {
        let o = order::start_order(&deps(&[("caddy", &["app"]), ("app", &["db"]), ("db", &[])]))
            .unwrap();
        assert_eq!(o, ["db", "app", "caddy"]);
        let e = order::start_order(&deps(&[("a", &["b"]), ("b", &["a"]), ("c", &[])])).unwrap_err();
        assert!(e.to_string().contains("cycle among a, b"), "{e}");
        let e = order::start_order(&deps(&[("a", &["nope"])])).unwrap_err();
        assert!(
            e.to_string()
                .contains("service `a`: depends_on names `nope`"),
            "{e}"
        );
    }

    fn file(text: &str) -> ComposeFile {
        let (f, p) = model::load(text, &HashMap::new()).unwrap();
        assert!(p.is_empty(), "{p:#?}");
        f
    }

    struct NoHandover;
    #[async_trait::async_trait]
    impl Handover for NoHandover {
        async fn ready(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn the_ingress_is_replaced_start_first_unless_shared_or_told_otherwise() {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let h = NoHandover;
        let p = Project::new(&docker, "m8trx-t", hardening()).with_handover("web", &h);
        let f = file("services:\n  web:\n    image: x\n  db:\n    image: y\n");
        assert_eq!(p.order(&f, "web"), Order::StartFirst);
        assert_eq!(p.order(&f, "db"), Order::StopFirst);
        let f = file("services:\n  web:\n    image: x\n    deploy: {update_config: {order: stop-first}}\n  db:\n    image: y\n    deploy: {update_config: {order: start-first}}\n");
        assert_eq!(p.order(&f, "web"), Order::StopFirst);
        assert_eq!(p.order(&f, "db"), Order::StartFirst);
        let f = file("services:\n  web:\n    image: x\n  side:\n    image: y\n    network_mode: service:web\n");
        assert!(is_shared(&f, "web") && !is_shared(&f, "side"));
        assert_eq!(
            p.order(&f, "web"),
            Order::StopFirst,
            "side holds web's namespace"
        );
    }

    #[test]
    fn profiles_decide_which_services_start() {
        let f = file(
            "services:
  web:
    image: x
  debug:
    image: y
    profiles: [debug]
  all:
    image: z
    profiles: [ops, debug]
",
        );
        let none = active_services(&f, &active_profiles(&HashMap::new()));
        assert_eq!(none.into_iter().collect::<Vec<_>>(), ["web"]);
        let vars = HashMap::from([(PROFILES_VAR.to_owned(), "ops".to_owned())]);
        assert_eq!(
            active_services(&f, &active_profiles(&vars))
                .into_iter()
                .collect::<Vec<_>>(),
            ["all", "web"]
        );
        let f = file(
            "services:
  web:
    image: x
    depends_on: [debug]
  debug:
    image: y
    profiles: [debug]
",
        );
        let e = order::dependencies(&f, &active_services(&f, &Default::default())).unwrap_err();
        assert!(e.to_string().contains("COMPOSE_PROFILES"), "{e}");
        let f = file(
            "services:
  web:
    image: x
    depends_on: {debug: {condition: service_started, required: false}}
  debug:
    image: y
    profiles: [debug]
",
        );
        let d = order::dependencies(&f, &active_services(&f, &Default::default())).unwrap();
        assert!(
            d["web"].is_empty(),
            "an optional dependency that does not start is skipped"
        );
        let f = file("services:\n  a-side:\n    image: y\n    network_mode: service:web\n  web:\n    image: x\n");
        let d = order::dependencies(&f, &active_services(&f, &Default::default())).unwrap();
        assert_eq!(
            order::start_order(&d).unwrap(),
            ["web", "a-side"],
            "the namespace's owner first"
        );
    }

    fn hardening() -> Hardening {
        Hardening {
            security_opt: vec!["seccomp={}".into()],
            default_memory: 256 << 20,
            max_memory: 1 << 30,
            pids_limit: 256,
            env: vec![
                "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials".into(),
            ],
            binds: vec![(
                "/srv/m8trx/tenants/acme/secrets/broker-token".into(),
                "/run/secrets/m8trx/broker-token".into(),
            )],
            files: files::FileSources {
                tree: Some("/srv/m8trx/tenants/acme/bundle/d1".into()),
                platform: Some("/srv/m8trx/tenants/acme/secrets".into()),
            },
            labels: HashMap::new(),
            bridge_prefix: "m8t-9-".into(),
        }
    }

    #[test]
    fn hardening_overrides_what_the_file_says() {
        let f = file(
            "services:\n  web:\n    image: x\n    mem_limit: 8g\n    pids_limit: 100000\n    cap_add: [NET_BIND_SERVICE]\n    tmpfs: ['/cache:size=10m,exec']\n",
        );
        let p = Plan::new("m8trx-acme", hardening());
        let nets = BTreeMap::from([("default".to_owned(), false)]);
        let body = p.container_body(&f, "web", &nets, &HashMap::new()).unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".into()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.memory, Some(1 << 30), "capped at the tenant aggregate");
        assert_eq!(hc.pids_limit, Some(256), "capped at hostd's limit");
        let tmpfs = hc.tmpfs.unwrap();
        assert!(tmpfs["/tmp"].contains("noexec"));
        assert_eq!(
            tmpfs["/cache"], "rw,noexec,nosuid,nodev,size=10m",
            "exec dropped"
        );
        let so = hc.security_opt.unwrap();
        assert!(
            so.contains(&"seccomp={}".to_owned())
                && so.contains(&"no-new-privileges:true".to_owned())
        );
        assert_eq!(hc.network_mode.as_deref(), Some("m8trx-acme_default"));
        let mounts = hc.mounts.unwrap();
        assert!(mounts.iter().any(|m| m.target.as_deref()
            == Some("/run/secrets/m8trx/broker-token")
            && m.read_only == Some(true)));
        assert!(body
            .env
            .unwrap()
            .iter()
            .any(|e| e.starts_with("AWS_CONTAINER_CREDENTIALS_FULL_URI=")));
        let l = body.labels.unwrap();
        assert_eq!(l[labels::PROJECT], "m8trx-acme");
        assert_eq!(l[labels::SERVICE], "web");
    }

    #[test]
    fn every_translated_key_reaches_the_engine_request() {
        let f = file(
            r#"
services:
  web:
    image: x
    command: npm start
    entrypoint: [tini, --]
    environment: [A=1, FROM_ENV, MISSING]
    working_dir: /app
    user: "1000"
    restart: on-failure:3
    healthcheck: {test: curl -f http://localhost/, interval: 5s, timeout: 2s, retries: 3, start_period: 10s, start_interval: 1s}
    expose: [80, "53/udp"]
    stop_signal: SIGINT
    stop_grace_period: 30s
    init: true
    tty: true
    stdin_open: true
    hostname: web
    domainname: example.test
    extra_hosts: ["db.local:10.1.2.3", "other=10.1.2.4"]
    dns: 1.1.1.1
    dns_search: [example.test]
    dns_opt: [ndots:2]
    cpu_shares: 512
    shm_size: 64m
    deploy: {resources: {limits: {cpus: "0.25", memory: 128m, pids: 50}, reservations: {memory: 64m}}, replicas: 1}
    group_add: [audio]
    cap_add: [NET_BIND_SERVICE, CHOWN]
    cap_drop: [CHOWN]
    volumes: ["data:/data:ro", {type: volume, source: data, target: /sub, volume: {subpath: a/b, nocopy: true}}, {type: tmpfs, target: /run/x, tmpfs: {size: 1m, mode: "1777"}}]
    networks: {front: {aliases: [www]}}
    sysctls: [net.ipv4.tcp_fin_timeout=30]
    ulimits: {nofile: {soft: 1024, hard: 4096}}
    logging: {driver: local, options: {max-size: 10m, max-file: "3"}}
    oom_score_adj: 100
    labels: {team: web}
  side:
    image: y
    network_mode: service:web
    ipc: service:web
    volumes_from: ["web:ro"]
volumes:
  data: {}
networks:
  front: {labels: {tier: front}}
"#,
        );
        let p = Plan::new("m8trx-acme", hardening());
        let nets = BTreeMap::from([("default".to_owned(), false), ("front".to_owned(), false)]);
        let vars = HashMap::from([("FROM_ENV".to_owned(), "e".to_owned())]);
        let b = p.container_body(&f, "web", &nets, &vars).unwrap();
        assert_eq!(b.cmd, Some(vec!["npm".into(), "start".into()]));
        assert_eq!(b.entrypoint, Some(vec!["tini".into(), "--".into()]));
        let env = b.env.unwrap();
        assert!(env.contains(&"A=1".into()) && env.contains(&"FROM_ENV=e".into()));
        assert!(
            !env.iter().any(|e| e.starts_with("MISSING")),
            "unset stays unset"
        );
        assert_eq!(b.working_dir.as_deref(), Some("/app"));
        assert_eq!(b.user.as_deref(), Some("1000"));
        assert_eq!(b.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(b.stop_timeout, Some(30));
        assert_eq!((b.tty, b.open_stdin), (Some(true), Some(true)));
        assert_eq!(b.hostname.as_deref(), Some("web"));
        assert_eq!(b.domainname.as_deref(), Some("example.test"));
        let health = b.healthcheck.unwrap();
        assert_eq!(
            health.test,
            Some(vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()])
        );
        assert_eq!(health.interval, Some(5_000_000_000));
        assert_eq!(health.start_interval, Some(1_000_000_000));
        assert_eq!(health.retries, Some(3));
        assert_eq!(
            b.exposed_ports,
            Some(vec!["80/tcp".into(), "53/udp".into()])
        );
        assert_eq!(b.labels.unwrap()["team"], "web");
        let hc = b.host_config.unwrap();
        assert_eq!(hc.restart_policy.unwrap().maximum_retry_count, Some(3));
        assert_eq!(hc.init, Some(true));
        assert_eq!(
            hc.extra_hosts,
            Some(vec!["db.local:10.1.2.3".into(), "other:10.1.2.4".into()])
        );
        assert_eq!(hc.dns, Some(vec!["1.1.1.1".into()]));
        assert_eq!(hc.dns_search, Some(vec!["example.test".into()]));
        assert_eq!(hc.dns_options, Some(vec!["ndots:2".into()]));
        assert_eq!(hc.cpu_shares, Some(512));
        assert_eq!(hc.nano_cpus, Some(250_000_000));
        assert_eq!(hc.memory, Some(128 << 20));
        assert_eq!(hc.memory_reservation, Some(64 << 20));
        assert_eq!(hc.pids_limit, Some(50));
        assert_eq!(hc.shm_size, Some(64 << 20));
        assert_eq!(hc.group_add, Some(vec!["audio".into()]));
        assert_eq!(
            hc.cap_add,
            Some(vec!["NET_BIND_SERVICE".into()]),
            "CHOWN dropped"
        );
        let mounts = hc.mounts.unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.source.as_deref() == Some("m8trx-acme_data")
                && m.target.as_deref() == Some("/data")
                && m.read_only == Some(true)));
        assert!(mounts.iter().any(|m| m.target.as_deref() == Some("/sub")
            && m.volume_options.as_ref().and_then(|o| o.subpath.as_deref()) == Some("a/b")));
        assert_eq!(
            hc.tmpfs.unwrap()["/run/x"],
            "rw,noexec,nosuid,nodev,size=1048576,mode=1777"
        );
        assert_eq!(hc.network_mode.as_deref(), Some("m8trx-acme_front"));
        let ep = &b.networking_config.unwrap().endpoints_config.unwrap()["m8trx-acme_front"];
        assert_eq!(ep.aliases, Some(vec!["web".into(), "www".into()]));
        assert_eq!(hc.sysctls.unwrap()["net.ipv4.tcp_fin_timeout"], "30");
        assert_eq!(hc.ulimits.unwrap()[0].hard, Some(4096));
        let log = hc.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("local"));
        assert_eq!(log.config.unwrap()["max-file"], "3");
        assert_eq!(hc.oom_score_adj, Some(100));
        let side = p.container_body(&f, "side", &nets, &vars).unwrap();
        let shc = side.host_config.unwrap();
        assert_eq!(
            shc.network_mode.as_deref(),
            Some("container:m8trx-acme-web-1")
        );
        assert_eq!(shc.ipc_mode.as_deref(), Some("container:m8trx-acme-web-1"));
        assert_eq!(shc.volumes_from, Some(vec!["m8trx-acme-web-1:ro".into()]));
    }
}
