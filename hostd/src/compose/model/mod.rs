//! One typed compose model, read once, used by both the policy (`crate::policy`) and the
//! deploy (`super::plan`). Why our own types rather than a general crate such as
//! `docker-compose-types`: a general model must accept every key of the specification, where
//! hostd must accept only what it translates. Here every key hostd translates is a field;
//! every other key lands in an `other` map that the policy refuses, key by key, with the rule
//! and what to do instead. The plan destructures each struct without `..`, so a field added
//! here does not compile until the deploy translates it.
//!
//! Loading follows the compose specification: YAML anchors and merge keys (`<<: *defaults`),
//! interpolation with the tenant's variables (`crate::interpolate`), `x-` extensions dropped
//! wherever the specification allows them, then each key read into its type. Every problem
//! is reported, not only the first.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_norway::{Mapping, Value};

pub mod forms;

use forms::{Bytes, Command, Cpus, Dur, FileMode, Hosts, List, Pairs, Text};

/// A compose file as hostd reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ComposeFile {
    /// `services`, by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Top-level `networks`; `default:` with no body is `None`.
    #[serde(default)]
    pub networks: BTreeMap<String, Option<Network>>,
    /// Top-level `volumes` (named volumes); `data:` with no body is `None`.
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<Volume>>,
    /// Top-level `secrets`: files a service lists to see at `/run/secrets/<name>`.
    #[serde(default)]
    pub secrets: BTreeMap<String, FileSource>,
    /// Top-level `configs`: files a service lists to see at `/<name>` or its target.
    #[serde(default)]
    pub configs: BTreeMap<String, FileSource>,
    /// `version`: obsolete in the compose specification, which says implementations ignore it;
    /// read only so that the many files that still carry it deploy.
    #[serde(default)]
    pub version: Option<Text>,
    /// Every other top-level key: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One service. Every field is translated by the plan; `other` is refused by the policy.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Service {
    pub image: Option<String>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    pub environment: Option<Pairs>,
    pub working_dir: Option<String>,
    pub user: Option<Text>,
    pub restart: Option<String>,
    pub depends_on: Option<DependsOn>,
    pub healthcheck: Option<Healthcheck>,
    pub expose: Option<Vec<Text>>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Dur>,
    pub init: Option<bool>,
    pub tty: Option<bool>,
    pub stdin_open: Option<bool>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub extra_hosts: Option<Hosts>,
    pub dns: Option<List>,
    pub dns_search: Option<List>,
    pub dns_opt: Option<Vec<String>>,
    pub mem_limit: Option<Bytes>,
    pub mem_reservation: Option<Bytes>,
    pub cpus: Option<Cpus>,
    pub cpu_shares: Option<i64>,
    pub pids_limit: Option<i64>,
    pub shm_size: Option<Bytes>,
    pub deploy: Option<Deploy>,
    pub profiles: Option<Vec<String>>,
    pub pull_policy: Option<String>,
    pub group_add: Option<Vec<Text>>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub tmpfs: Option<List>,
    pub volumes: Option<Vec<ServiceVolume>>,
    pub networks: Option<ServiceNetworks>,
    pub network_mode: Option<String>,
    pub ipc: Option<String>,
    pub pid: Option<String>,
    pub sysctls: Option<Pairs>,
    pub ulimits: Option<BTreeMap<String, Ulimit>>,
    pub logging: Option<Logging>,
    pub oom_score_adj: Option<i64>,
    pub labels: Option<Pairs>,
    pub read_only: Option<bool>,
    pub privileged: Option<bool>,
    pub security_opt: Option<Vec<String>>,
    pub cgroup: Option<String>,
    pub volumes_from: Option<Vec<String>>,
    /// The top-level secrets this service sees (no other secret is mounted into it).
    pub secrets: Option<Vec<FileRef>>,
    /// The top-level configs this service sees.
    pub configs: Option<Vec<FileRef>>,
    /// Every other key: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `depends_on`: a list of services, or a mapping with conditions.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DependsOn {
    /// `depends_on: [db]`: wait for each to be started.
    List(Vec<String>),
    /// `depends_on: {db: {condition: service_healthy}}`.
    Map(BTreeMap<String, Dependency>),
}

/// One entry of the long `depends_on` form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// `service_started` (default), `service_healthy`, `service_completed_successfully`.
    pub condition: Option<String>,
    /// `false`: the dependency may be absent (not in the file, or in an inactive profile).
    pub required: Option<bool>,
    /// Restart this service when the dependency is updated: refused by the policy.
    pub restart: Option<bool>,
}

impl DependsOn {
    /// `(service, condition, required)` for each dependency.
    pub fn entries(&self) -> Vec<(String, String, bool)> {
        match self {
            DependsOn::List(l) => l
                .iter()
                .map(|s| (s.clone(), "service_started".to_owned(), true))
                .collect(),
            DependsOn::Map(m) => m
                .iter()
                .map(|(s, d)| {
                    (
                        s.clone(),
                        d.condition
                            .clone()
                            .unwrap_or_else(|| "service_started".to_owned()),
                        d.required.unwrap_or(true),
                    )
                })
                .collect(),
        }
    }
}

/// `healthcheck`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub test: Option<Command>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub retries: Option<i64>,
    pub start_period: Option<Dur>,
    pub start_interval: Option<Dur>,
    pub disable: Option<bool>,
}

/// `deploy`: only `resources` and a single replica mean something on one host.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deploy {
    pub resources: Option<Resources>,
    pub replicas: Option<i64>,
    pub update_config: Option<UpdateConfig>,
    /// Every other key (`mode`, `placement`, `restart_policy`, …): refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `deploy.update_config`: only `order` means something for one container per service.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateConfig {
    /// `start-first` (the new container serves before the old one stops) or `stop-first`.
    pub order: Option<String>,
    /// `parallelism`, `delay`, `failure_action`, `monitor`, `max_failure_ratio`: refused.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub limits: Option<Limits>,
    pub reservations: Option<Reservations>,
}

/// `deploy.resources.limits`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub cpus: Option<Cpus>,
    pub memory: Option<Bytes>,
    pub pids: Option<i64>,
}

/// `deploy.resources.reservations` (`devices`, GPUs, are refused as unknown).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservations {
    pub cpus: Option<Cpus>,
    pub memory: Option<Bytes>,
}

/// One entry of a service's `volumes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServiceVolume {
    /// `name:/path[:ro]`, `/path` (anonymous), `./host:/path` (a bind: refused).
    Short(String),
    /// `{type, source, target, read_only, volume, tmpfs}`.
    Long(VolumeMount),
}

/// The long form of a service volume.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VolumeMount {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: Option<bool>,
    pub volume: Option<VolumeOptions>,
    pub tmpfs: Option<TmpfsOptions>,
    /// `bind`, `consistency`, `image`, …: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `volumes[].volume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    pub nocopy: Option<bool>,
    pub subpath: Option<String>,
}

/// `volumes[].tmpfs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsOptions {
    pub size: Option<Bytes>,
    pub mode: Option<FileMode>,
}

/// A service's `networks`: a list of names, or a mapping with per-network options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    /// `networks: [front, back]`.
    List(Vec<String>),
    /// `networks: {front: {aliases: [web]}}`.
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

impl ServiceNetworks {
    /// `(network, aliases)` in file order (a mapping's order is its sorted keys).
    pub fn entries(&self) -> Vec<(String, Vec<String>)> {
        match self {
            ServiceNetworks::List(l) => l.iter().map(|n| (n.clone(), Vec::new())).collect(),
            ServiceNetworks::Map(m) => m
                .iter()
                .map(|(n, o)| {
                    (
                        n.clone(),
                        o.as_ref()
                            .and_then(|o| o.aliases.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }
}

/// Options of one network a service joins.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceNetwork {
    pub aliases: Option<Vec<String>>,
    /// `ipv4_address`, `priority`, `mac_address`, …: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `ulimits.<name>`: one number, or soft and hard.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Ulimit {
    /// `nofile: 65536`.
    Single(i64),
    /// `nofile: {soft: 1024, hard: 65536}`.
    Pair(UlimitPair),
}

/// The long form of a ulimit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UlimitPair {
    /// The soft limit.
    pub soft: i64,
    /// The hard limit.
    pub hard: i64,
}

/// `logging`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: Option<BTreeMap<String, Text>>,
}

/// A top-level network.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Network {
    pub driver: Option<String>,
    pub internal: Option<bool>,
    pub labels: Option<Pairs>,
    /// `external`, `ipam`, `driver_opts`, `name`, …: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A top-level named volume.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Volume {
    pub driver: Option<String>,
    pub labels: Option<Pairs>,
    /// `driver_opts`, `external`, `name`: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A top-level `secrets.<name>` or `configs.<name>`: where its bytes come from. Exactly one
/// source: `file` (a file of the deploy's bundle), `content` (inline), `environment` (a
/// variable of the tenant's env file) or, for secrets, `external: true` (one of the tenant's
/// platform parameters, read from SSM with the customer's role).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FileSource {
    pub file: Option<String>,
    pub content: Option<String>,
    pub environment: Option<String>,
    pub external: Option<bool>,
    /// `name`, `driver`, `template_driver`, `labels`, …: refused by the policy.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One entry of a service's `secrets` or `configs`: `- name` or the long form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileRef {
    /// `- name`: at the default target, owned by the container's root.
    Short(String),
    /// `{source, target, uid, gid, mode}`.
    Long(FileRefLong),
}

/// The long form of a service's secret or config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefLong {
    pub source: String,
    pub target: Option<String>,
    pub uid: Option<Text>,
    pub gid: Option<Text>,
    pub mode: Option<FileMode>,
}

impl FileRef {
    /// The top-level name it refers to.
    pub fn source(&self) -> &str {
        match self {
            FileRef::Short(s) => s,
            FileRef::Long(l) => &l.source,
        }
    }
}

/// One problem with a compose file: where (`services.web.cap_add`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Service name, or `None` for a top-level key.
    pub service: Option<String>,
    /// The key path inside the service (or from the top level).
    pub key: String,
    /// The rule broken and what to do instead.
    pub rule: String,
}

/// The most services one compose file may hold: a tenant's project is a handful of
/// services; hundreds would be a mistake or an attack on the tenant's engine.
pub const MAX_SERVICES: usize = 50;

/// Reads `text` with the tenant's variables `vars`. On success the file and the problems
/// found while reading (none); YAML that does not parse is `Err` with the parser's message.
pub fn load(
    text: &str,
    vars: &HashMap<String, String>,
) -> Result<(ComposeFile, Vec<Problem>), String> {
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    doc.apply_merge()
        .map_err(|e| format!("merge key (`<<`): {e}"))?;
    let mut problems = Vec::new();
    for e in crate::interpolate::interpolate(&mut doc, vars) {
        let (service, key) = split_path(&e.path);
        problems.push(Problem {
            service,
            key,
            rule: e.message,
        });
    }
    let Value::Mapping(mut root) = doc else {
        return Err("the document is not a mapping of compose keys".into());
    };
    strip_extensions(&mut root);
    let mut file = ComposeFile::default();
    let services = root.remove("services");
    match services {
        None => problems.push(top("services", "a compose file needs a `services` mapping")),
        Some(Value::Mapping(m)) => {
            if m.is_empty() {
                problems.push(top("services", "at least one service is required"));
            }
            if m.len() > MAX_SERVICES {
                problems.push(top(
                    "services",
                    format!(
                        "{} services; at most {MAX_SERVICES} per file: split the stack into tenants",
                        m.len()
                    ),
                ));
            }
            for (name, body) in m {
                let Some(name) = name.as_str().map(str::to_owned) else {
                    problems.push(top(
                        "services",
                        format!("service name {name:?} is not a string"),
                    ));
                    continue;
                };
                match body {
                    Value::Mapping(body) => {
                        let svc = typed::<Service>(body, Some(&name), "", &mut problems);
                        file.services.insert(name, svc);
                    }
                    _ => problems.push(Problem {
                        service: Some(name),
                        key: "(service)".into(),
                        rule: "a service must be a mapping of compose keys".into(),
                    }),
                }
            }
        }
        Some(_) => problems.push(top(
            "services",
            "must be a mapping of service names to services",
        )),
    }
    for (section, is_net) in [("networks", true), ("volumes", false)] {
        match root.remove(section) {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (name, body) in m {
                    let name = name.as_str().unwrap_or_default().to_owned();
                    let prefix = format!("{section}.{name}.");
                    match body {
                        Value::Null => {
                            if is_net {
                                file.networks.insert(name, None);
                            } else {
                                file.volumes.insert(name, None);
                            }
                        }
                        Value::Mapping(body) => {
                            if is_net {
                                let n = typed::<Network>(body, None, &prefix, &mut problems);
                                file.networks.insert(name, Some(n));
                            } else {
                                let v = typed::<Volume>(body, None, &prefix, &mut problems);
                                file.volumes.insert(name, Some(v));
                            }
                        }
                        _ => problems.push(top(
                            format!("{section}.{name}"),
                            "must be a mapping (or empty)",
                        )),
                    }
                }
            }
            Some(_) => problems.push(top(section, "must be a mapping of names to definitions")),
        }
    }
    for (section, is_secret) in [("secrets", true), ("configs", false)] {
        match root.remove(section) {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (name, body) in m {
                    let name = name.as_str().unwrap_or_default().to_owned();
                    let prefix = format!("{section}.{name}.");
                    match body {
                        Value::Mapping(body) => {
                            let f = typed::<FileSource>(body, None, &prefix, &mut problems);
                            if is_secret {
                                file.secrets.insert(name, f);
                            } else {
                                file.configs.insert(name, f);
                            }
                        }
                        _ => problems.push(top(
                            format!("{section}.{name}"),
                            "must be a mapping with one of file, content, environment (or external for secrets)",
                        )),
                    }
                }
            }
            Some(_) => problems.push(top(section, "must be a mapping of names to definitions")),
        }
    }
    if let Some(v) = root.remove("version") {
        file.version = serde_norway::from_value(v).ok();
    }
    for (k, v) in root {
        file.other
            .insert(k.as_str().unwrap_or_default().to_owned(), v);
    }
    Ok((file, problems))
}

fn top(key: impl Into<String>, rule: impl Into<String>) -> Problem {
    Problem {
        service: None,
        key: key.into(),
        rule: rule.into(),
    }
}

/// `["services", "web", "command", "[1]"]` as (`web`, `command[1]`).
fn split_path(path: &[String]) -> (Option<String>, String) {
    match path {
        [top, svc, rest @ ..] if top == "services" => (Some(svc.clone()), dotted(rest)),
        other => (None, dotted(other)),
    }
}

/// `["volumes", "[0]", "source"]` as `volumes[0].source`.
pub fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

/// Drops `x-` keys where the specification allows extensions: the top level, each service,
/// network and volume, and the mappings inside a service (`deploy`, `healthcheck`, …) —
/// not inside the value maps (`environment`, `labels`, `sysctls`, …), where a key starting
/// with `x-` is data.
fn strip_extensions(root: &mut Mapping) {
    fn strip(m: &mut Mapping) {
        m.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    const DATA: [&str; 6] = [
        "environment",
        "labels",
        "sysctls",
        "extra_hosts",
        "options",
        "ulimits",
    ];
    strip(root);
    for section in ["services", "networks", "volumes", "secrets", "configs"] {
        let Some(Value::Mapping(items)) = root.get_mut(section) else {
            continue;
        };
        for (_, body) in items.iter_mut() {
            let Value::Mapping(body) = body else { continue };
            strip(body);
            for (k, v) in body.iter_mut() {
                if let (Some(k), Value::Mapping(inner)) = (k.as_str(), v) {
                    if !DATA.contains(&k) {
                        strip(inner);
                    }
                }
            }
        }
    }
}

/// Reads one mapping into `T`, key by key, so that every key that has the wrong form is
/// reported (with its path) and left out, instead of the first error hiding the rest.
fn typed<T: for<'de> Deserialize<'de> + Default>(
    body: Mapping,
    service: Option<&str>,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> T {
    let mut good = Mapping::new();
    for (k, v) in body {
        let key = k
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{k:?}"));
        let one = Value::Mapping(Mapping::from_iter([(k.clone(), v.clone())]));
        match serde_path_to_error::deserialize::<_, T>(one) {
            Ok(_) => {
                good.insert(k, v);
            }
            Err(e) => {
                let path = e.path().to_string();
                let path = if path.is_empty() || path == "." || path == "?" {
                    key.clone()
                } else {
                    path
                };
                problems.push(Problem {
                    service: service.map(str::to_owned),
                    key: format!("{prefix}{path}"),
                    rule: format!(
                        "{}; see the compose specification for the forms of `{key}`",
                        e.into_inner()
                    ),
                });
            }
        }
    }
    serde_norway::from_value(Value::Mapping(good)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_ok(text: &str) -> ComposeFile {
        let (f, p) = load(text, &HashMap::new()).unwrap();
        assert!(p.is_empty(), "{p:#?}");
        f
    }

    #[test]
    fn merge_keys_and_anchors_apply() {
        let f = load_ok(
            "x-defaults: &d\n  restart: unless-stopped\n  environment: &env\n    A: '1'\nservices:\n  web:\n    <<: *d\n    image: x\n    environment:\n      <<: *env\n      B: '2'\n",
        );
        let web = &f.services["web"];
        assert_eq!(web.restart.as_deref(), Some("unless-stopped"));
        let env = web.environment.as_ref().unwrap();
        assert_eq!(
            env.keys().collect::<Vec<_>>(),
            ["A", "B"],
            "no variable named <<"
        );
        assert!(web.other.is_empty(), "{:?}", web.other);
    }

    #[test]
    fn every_badly_formed_key_is_reported() {
        let (f, p) = load(
            "services:\n  web:\n    image: x\n    cap_add: ALL\n    healthcheck: {interval: 99999999999999999999h}\n    mem_limit: lots\n",
            &HashMap::new(),
        )
        .unwrap();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cap_add", "healthcheck.interval", "mem_limit"],
            "{p:#?}"
        );
        assert_eq!(f.services["web"].image.as_deref(), Some("x"));
    }

    #[test]
    fn interpolation_errors_are_all_reported_and_variables_come_from_the_env_file() {
        let (_, p) = load(
            "services:\n  web:\n    image: ${IMG}\n    command: ${CMD}\n",
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(p.len(), 2, "{p:#?}");
        let vars = HashMap::from([("IMG".to_owned(), "nginx".to_owned())]);
        let (f, p) = load("services:\n  web:\n    image: ${IMG}\n", &vars).unwrap();
        assert!(p.is_empty());
        assert_eq!(f.services["web"].image.as_deref(), Some("nginx"));
    }

    #[test]
    fn unknown_keys_are_kept_for_the_policy_and_extensions_dropped() {
        let f = load_ok(
            "x-top: 1\nname: p\nservices:\n  web:\n    image: x\n    x-note: hi\n    privileged: false\n    container_name: c\n",
        );
        assert_eq!(f.other.keys().collect::<Vec<_>>(), ["name"]);
        assert_eq!(
            f.services["web"].other.keys().collect::<Vec<_>>(),
            ["container_name"]
        );
    }

    #[test]
    fn the_service_bound_holds() {
        let mut text = String::from("services:\n");
        for i in 0..(MAX_SERVICES + 1) {
            text.push_str(&format!("  s{i}:\n    image: x\n"));
        }
        let (_, p) = load(&text, &HashMap::new()).unwrap();
        assert!(p
            .iter()
            .any(|p| p.key == "services" && p.rule.contains("at most 50")));
    }
}
