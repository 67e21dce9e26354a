//! Deploys a policy-checked compose file into a tenant engine through bollard: networks,
//! named volumes, then containers in dependency order (waiting for `service_healthy` and
//! `service_completed_successfully`), labelled as docker compose labels them so compose
//! tooling pointed at the tenant engine lists the project. hostd's hardening is applied to
//! every container whatever the file says: cap_drop ALL, no-new-privileges, the tenant's
//! seccomp and AppArmor profiles, read-only root with a noexec `/tmp`, pids and memory
//! limits, and the credential-broker environment and token mount.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountType,
    NetworkCreateRequest, NetworkingConfig, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_norway::{Mapping, Value};

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
    #[error("service `{service}` waits for `{dependency}` to be {condition}, which did not happen within {secs}s: {detail}")]
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

fn invalid(service: &str, message: impl Into<String>) -> ComposeError {
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
    /// Labels on every object.
    pub labels: HashMap<String, String>,
}

/// How long hostd waits for a dependency's condition.
pub const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(120);

/// A dependency and the condition a service waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dep {
    service: String,
    condition: String,
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `command`/`entrypoint`: a list stays as is; a string is split the way a shell would split words.
fn command(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(shell_words(s)),
        Value::Sequence(_) => Some(str_list(v)),
        _ => None,
    }
}

fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `environment` / `labels`: list of `K=V` or a mapping.
fn kv(v: Option<&Value>) -> Vec<(String, String)> {
    match v {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(scalar)
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e, String::new()),
            })
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Compose durations: "1m30s", "500ms", "10s", or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            "ms".to_owned()
        } else {
            c.to_string()
        };
        let n: f64 = num.parse().ok()?;
        num.clear();
        let secs = match unit.as_str() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
    }
    num.is_empty().then_some(total)
}

/// Docker sizes: "256m", "1g", "512k", "1024b" or a bare byte count.
pub fn parse_size(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix('b')
        .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .map(str::to_owned)
        .unwrap_or(s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        'b' => (&s[..s.len() - 1], 1),
        _ => (s.as_str(), 1),
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mult as f64) as i64)
}

fn size_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_size(s),
        _ => None,
    }
}

fn depends_on(service: &str, v: Option<&Value>) -> Result<Vec<Dep>, ComposeError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Sequence(_)) => Ok(str_list(v)
            .into_iter()
            .map(|s| Dep {
                service: s,
                condition: "service_started".into(),
            })
            .collect()),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, d)| {
                let name = scalar(k).unwrap_or_default();
                let condition = d
                    .get("condition")
                    .and_then(scalar)
                    .unwrap_or_else(|| "service_started".into());
                if ![
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                ]
                .contains(&condition.as_str())
                {
                    return Err(invalid(
                        service,
                        format!("depends_on.{name}.condition {condition:?} is unknown"),
                    ));
                }
                Ok(Dep {
                    service: name,
                    condition,
                })
            })
            .collect(),
        Some(_) => Err(invalid(service, "depends_on must be a list or a mapping")),
    }
}

/// Services in an order where every dependency comes first; names a cycle or an unknown service.
fn start_order(services: &BTreeMap<String, Vec<Dep>>) -> Result<Vec<String>, ComposeError> {
    for (s, deps) in services {
        if let Some(d) = deps.iter().find(|d| !services.contains_key(&d.service)) {
            return Err(invalid(
                s,
                format!(
                    "depends_on names `{}`, which is not a service of this file",
                    d.service
                ),
            ));
        }
    }
    let mut done: Vec<String> = Vec::new();
    let mut placed: HashSet<&str> = HashSet::new();
    while done.len() < services.len() {
        let ready: Vec<&String> = services
            .iter()
            .filter(|(s, deps)| {
                !placed.contains(s.as_str())
                    && deps.iter().all(|d| placed.contains(d.service.as_str()))
            })
            .map(|(s, _)| s)
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = services
                .keys()
                .map(String::as_str)
                .filter(|s| !placed.contains(s))
                .collect();
            return Err(invalid(
                stuck[0],
                format!("depends_on forms a cycle among {}", stuck.join(", ")),
            ));
        }
        for s in ready {
            placed.insert(s);
            done.push(s.clone());
        }
    }
    Ok(done)
}

fn healthcheck(service: &str, v: Option<&Value>) -> Result<Option<HealthConfig>, ComposeError> {
    let Some(Value::Mapping(h)) = v else {
        return Ok(None);
    };
    let dur = |k: &str| -> Result<Option<i64>, ComposeError> {
        match h.get(k).and_then(scalar) {
            None => Ok(None),
            Some(s) => parse_duration(&s)
                .map(|d| Some(d.as_nanos() as i64))
                .ok_or_else(|| {
                    invalid(
                        service,
                        format!("healthcheck.{k} {s:?} is not a duration like 10s"),
                    )
                }),
        }
    };
    if h.get("disable").and_then(Value::as_bool) == Some(true) {
        return Ok(Some(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        }));
    }
    let test = match h.get("test") {
        Some(Value::String(s)) => Some(vec!["CMD-SHELL".into(), s.clone()]),
        Some(t @ Value::Sequence(_)) => Some(str_list(Some(t))),
        _ => None,
    };
    Ok(Some(HealthConfig {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        start_period: dur("start_period")?,
        retries: h.get("retries").and_then(Value::as_i64),
        ..Default::default()
    }))
}

/// What a project's containers will look like, independent of any engine (testable alone).
pub struct Plan {
    name: String,
    hardening: Hardening,
}

impl Plan {
    /// A plan for the project `name` (see `CustomerName::compose_project`).
    pub fn new(name: impl Into<String>, hardening: Hardening) -> Self {
        Self {
            name: name.into(),
            hardening,
        }
    }

    fn labels(&self, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut l = self.hardening.labels.clone();
        l.insert(labels::PROJECT.into(), self.name.clone());
        for (k, v) in extra {
            l.insert((*k).into(), v.clone());
        }
        l
    }

    fn container_body(
        &self,
        service: &str,
        svc: &Value,
        nets: &BTreeMap<String, bool>,
    ) -> Result<ContainerCreateBody, ComposeError> {
        let h = &self.hardening;
        let image = svc
            .get("image")
            .and_then(scalar)
            .ok_or_else(|| invalid(service, "no image"))?;
        // hostd's variables (the broker's) replace any the file sets under the same name.
        let forced: Vec<&str> = h.env.iter().filter_map(|e| e.split('=').next()).collect();
        let mut env: Vec<String> = kv(svc.get("environment"))
            .into_iter()
            .filter(|(k, _)| !forced.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(h.env.iter().cloned());

        let memory = size_of(svc.get("mem_limit"))
            .unwrap_or(h.default_memory)
            .min(h.max_memory);
        let pids = svc
            .get("pids_limit")
            .and_then(Value::as_i64)
            .unwrap_or(h.pids_limit)
            .min(h.pids_limit);

        let mut tmpfs: HashMap<String, String> = HashMap::from([(
            "/tmp".to_owned(),
            "rw,noexec,nosuid,nodev,size=64m".to_owned(),
        )]);
        for t in str_list(svc.get("tmpfs")) {
            let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
            let opts = if opts.is_empty() {
                "rw,nosuid,nodev,size=64m".to_owned()
            } else {
                format!("{opts},nosuid,nodev")
            };
            tmpfs.entry(path.to_owned()).or_insert(opts);
        }

        let mut mounts = Vec::new();
        for (i, v) in svc
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (kind, source, target, ro) = match v {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    match parts.as_slice() {
                        [t] => ("volume", String::new(), t.to_string(), false),
                        [s, t] => ("volume", s.to_string(), t.to_string(), false),
                        [s, t, m] => (
                            "volume",
                            s.to_string(),
                            t.to_string(),
                            m.split(',').any(|x| x == "ro"),
                        ),
                        _ => {
                            return Err(invalid(
                                service,
                                format!("volumes[{i}] {s:?} is not name:/path[:ro]"),
                            ))
                        }
                    }
                }
                Value::Mapping(m) => (
                    if m.get("type").and_then(scalar).as_deref() == Some("tmpfs") {
                        "tmpfs"
                    } else {
                        "volume"
                    },
                    m.get("source").and_then(scalar).unwrap_or_default(),
                    m.get("target")
                        .and_then(scalar)
                        .ok_or_else(|| invalid(service, format!("volumes[{i}] has no target")))?,
                    m.get("read_only").and_then(Value::as_bool).unwrap_or(false),
                ),
                _ => {
                    return Err(invalid(
                        service,
                        format!("volumes[{i}] must be a string or a mapping"),
                    ))
                }
            };
            if kind == "tmpfs" {
                tmpfs.insert(target, "rw,nosuid,nodev,size=64m".into());
                continue;
            }
            mounts.push(Mount {
                typ: Some(MountType::VOLUME),
                source: (!source.is_empty()).then(|| format!("{}_{source}", self.name)),
                target: Some(target),
                read_only: Some(ro),
                ..Default::default()
            });
        }
        for (host, inside) in &h.binds {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(host.clone()),
                target: Some(inside.clone()),
                read_only: Some(true),
                ..Default::default()
            });
        }

        let network_mode = svc.get("network_mode").and_then(scalar);
        let service_nets: Vec<String> = match svc.get("networks") {
            Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
            Some(v @ Value::Sequence(_)) => str_list(Some(v)),
            _ => vec!["default".into()],
        };
        for n in &service_nets {
            if !nets.contains_key(n) {
                return Err(invalid(
                    service,
                    format!("networks names `{n}`, which the file does not declare"),
                ));
            }
        }
        let (mode, networking) = match network_mode.as_deref() {
            Some("none") => ("none".to_owned(), None),
            Some(m) if m.starts_with("service:") => {
                (format!("container:{}-{}-1", self.name, &m[8..]), None)
            }
            _ => {
                let first = format!("{}_{}", self.name, service_nets[0]);
                let endpoints = service_nets
                    .iter()
                    .map(|n| {
                        let ep = EndpointSettings {
                            aliases: Some(vec![service.to_owned()]),
                            ..Default::default()
                        };
                        (format!("{}_{n}", self.name), ep)
                    })
                    .collect();
                (
                    first,
                    Some(NetworkingConfig {
                        endpoints_config: Some(endpoints),
                    }),
                )
            }
        };

        let mut cap_add: Vec<String> = str_list(svc.get("cap_add"));
        cap_add.sort();
        cap_add.dedup();
        let mut security_opt = h.security_opt.clone();
        if !security_opt
            .iter()
            .any(|s| s.starts_with("no-new-privileges"))
        {
            security_opt.push("no-new-privileges:true".into());
        }
        let restart = svc.get("restart").and_then(scalar).map(|r| RestartPolicy {
            name: Some(match r.as_str() {
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                r if r.starts_with("on-failure") => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::NO,
            }),
            ..Default::default()
        });
        let sysctls: HashMap<String, String> = kv(svc.get("sysctls")).into_iter().collect();
        let ulimits = svc.get("ulimits").and_then(|u| u.get("nofile")).map(|n| {
            let (soft, hard) = match n {
                Value::Mapping(m) => (
                    m.get("soft").and_then(Value::as_i64).unwrap_or(1024),
                    m.get("hard").and_then(Value::as_i64).unwrap_or(1024),
                ),
                other => {
                    let v = other.as_i64().unwrap_or(1024);
                    (v, v)
                }
            };
            vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(soft),
                hard: Some(hard),
            }]
        });
        let host_config = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!cap_add.is_empty()).then_some(cap_add),
            security_opt: Some(security_opt),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(pids),
            nano_cpus: svc
                .get("cpus")
                .and_then(scalar)
                .and_then(|c| c.parse::<f64>().ok())
                .map(|c| (c * 1e9) as i64),
            shm_size: size_of(svc.get("shm_size")),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: Some(mode),
            restart_policy: restart,
            sysctls: (!sysctls.is_empty()).then_some(sysctls),
            ulimits,
            init: svc.get("init").and_then(Value::as_bool),
            extra_hosts: Some(str_list(svc.get("extra_hosts"))).filter(|v| !v.is_empty()),
            ..Default::default()
        };
        let mut lbl = self.labels(&[
            (labels::SERVICE, service.to_owned()),
            (labels::NUMBER, "1".into()),
            (labels::ONEOFF, "False".into()),
        ]);
        for (k, v) in kv(svc.get("labels")) {
            lbl.entry(k).or_insert(v);
        }
        let exposed: Vec<String> = str_list(svc.get("expose"))
            .into_iter()
            .map(|p| {
                if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                }
            })
            .collect();
        Ok(ContainerCreateBody {
            image: Some(image),
            cmd: command(svc.get("command")),
            entrypoint: command(svc.get("entrypoint")),
            env: Some(env),
            working_dir: svc.get("working_dir").and_then(scalar),
            user: svc.get("user").and_then(scalar),
            hostname: svc.get("hostname").and_then(scalar),
            stop_signal: svc.get("stop_signal").and_then(scalar),
            labels: Some(lbl),
            healthcheck: healthcheck(service, svc.get("healthcheck"))?,
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            networking_config: networking,
            ..Default::default()
        })
    }
}

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

/// One project in one tenant engine.
pub struct Project<'a> {
    docker: &'a Docker,
    plan: Plan,
}

impl<'a> Project<'a> {
    /// A project named `m8trx-<tenant>` (see `CustomerName::compose_project`).
    pub fn new(docker: &'a Docker, name: impl Into<String>, hardening: Hardening) -> Self {
        Self {
            docker,
            plan: Plan::new(name, hardening),
        }
    }

    /// Makes sure `image` is in the engine: present, or pulled from its registry.
    pub async fn ensure_image(&self, image: &str) -> Result<(), ComposeError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
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

    /// Deploys the document (already accepted by [`crate::policy::check_compose`]); reports
    /// each step through `progress` and returns the container names in start order.
    pub async fn deploy(
        &self,
        doc: &Mapping,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Vec<String>, ComposeError> {
        let empty = Mapping::new();
        let services = match doc.get("services") {
            Some(Value::Mapping(m)) => m,
            _ => &empty,
        };
        let mut deps = BTreeMap::new();
        for (k, v) in services {
            let s = scalar(k).unwrap_or_default();
            deps.insert(s.clone(), depends_on(&s, v.get("depends_on"))?);
        }
        let order = start_order(&deps)?;

        // Networks: the declared ones plus `default`, each `<project>_<name>`.
        let mut nets: BTreeMap<String, bool> = BTreeMap::new();
        if let Some(Value::Mapping(m)) = doc.get("networks") {
            for (k, v) in m {
                nets.insert(
                    scalar(k).unwrap_or_default(),
                    v.get("internal").and_then(Value::as_bool).unwrap_or(false),
                );
            }
        }
        nets.entry("default".into()).or_insert(false);
        for (net, internal) in &nets {
            let full = format!("{}_{net}", self.plan.name);
            if self.docker.inspect_network(&full, None).await.is_ok() {
                continue;
            }
            progress(format!("creating network {full}"));
            self.docker
                .create_network(NetworkCreateRequest {
                    name: full.clone(),
                    driver: Some("bridge".into()),
                    internal: Some(*internal),
                    labels: Some(self.plan.labels(&[(labels::NETWORK, net.clone())])),
                    ..Default::default()
                })
                .await
                .map_err(engine(format!("creating network {full}")))?;
        }
        if let Some(Value::Mapping(m)) = doc.get("volumes") {
            for (k, _) in m {
                let v = scalar(k).unwrap_or_default();
                let full = format!("{}_{v}", self.plan.name);
                progress(format!("ensuring volume {full}"));
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(full.clone()),
                        labels: Some(self.plan.labels(&[(labels::VOLUME, v.clone())])),
                        ..Default::default()
                    })
                    .await
                    .map_err(engine(format!("creating volume {full}")))?;
            }
        }

        let mut started = Vec::new();
        for service in &order {
            let svc = services
                .get(service.as_str())
                .cloned()
                .unwrap_or(Value::Null);
            for dep in &deps[service] {
                self.wait_for(service, dep).await?;
            }
            let body = self.plan.container_body(service, &svc, &nets)?;
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
                progress(format!("recreating {cname}"));
                let rm = RemoveContainerOptionsBuilder::default().force(true).build();
                self.docker
                    .remove_container(&cname, Some(rm))
                    .await
                    .map_err(engine(format!("removing {cname}")))?;
            }
            let image = body.image.clone().unwrap_or_default();
            self.ensure_image(&image).await?;
            let mut body = body;
            if let Some(l) = body.labels.as_mut() {
                l.insert(labels::CONFIG_HASH.into(), hash);
            }
            progress(format!("creating {cname} from {image}"));
            let opts = CreateContainerOptionsBuilder::default()
                .name(&cname)
                .build();
            self.docker
                .create_container(Some(opts), body)
                .await
                .map_err(engine(format!("creating {cname}")))?;
            self.docker
                .start_container(&cname, None)
                .await
                .map_err(engine(format!("starting {cname}")))?;
            started.push(cname);
        }
        Ok(started)
    }

    async fn wait_for(&self, service: &str, dep: &Dep) -> Result<(), ComposeError> {
        let cname = format!("{}-{}-1", self.plan.name, dep.service);
        let deadline = Instant::now() + DEPENDENCY_TIMEOUT;
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
                    secs: DEPENDENCY_TIMEOUT.as_secs(),
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn config_hash(body: &ContainerCreateBody) -> String {
    use std::hash::{Hash, Hasher};
    let json = serde_json::to_string(body).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    format!("{:016x}", h.finish())
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

    #[test]
    fn start_order_puts_dependencies_first_and_names_cycles() {
        let o = start_order(&deps(&[("caddy", &["app"]), ("app", &["db"]), ("db", &[])])).unwrap();
        assert_eq!(o, ["db", "app", "caddy"]);
        let e = start_order(&deps(&[("a", &["b"]), ("b", &["a"]), ("c", &[])])).unwrap_err();
        assert!(e.to_string().contains("cycle among a, b"), "{e}");
        let e = start_order(&deps(&[("a", &["nope"])])).unwrap_err();
        assert!(
            e.to_string()
                .contains("service `a`: depends_on names `nope`"),
            "{e}"
        );
    }

    #[test]
    fn durations_sizes_and_words() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(
            shell_words(r#"sh -c 'echo "a b"; sleep 1'"#),
            ["sh", "-c", r#"echo "a b"; sleep 1"#]
        );
    }

    #[test]
    fn hardening_overrides_what_the_file_says() {
        let doc: Mapping = serde_norway::from_str(
            "services:\n  web:\n    image: x\n    mem_limit: 8g\n    pids_limit: 100000\n    cap_add: [NET_BIND_SERVICE]\n",
        )
        .unwrap();
        let p = Plan::new(
            "m8trx-acme",
            Hardening {
                security_opt: vec!["seccomp={}".into()],
                default_memory: 256 << 20,
                max_memory: 1 << 30,
                pids_limit: 256,
                env: vec![
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials"
                        .into(),
                ],
                binds: vec![(
                    "/srv/m8trx/tenants/acme/secrets/broker-token".into(),
                    "/run/secrets/m8trx/broker-token".into(),
                )],
                labels: HashMap::new(),
            },
        );
        let nets = BTreeMap::from([("default".to_owned(), false)]);
        let body = p
            .container_body("web", &doc["services"]["web"], &nets)
            .unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".into()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.memory, Some(1 << 30), "capped at the tenant aggregate");
        assert_eq!(hc.pids_limit, Some(256), "capped at hostd's limit");
        assert!(hc.tmpfs.unwrap()["/tmp"].contains("noexec"));
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
}
