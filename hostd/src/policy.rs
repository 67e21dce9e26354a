//! Container policy for tenant compose files: at least Kubernetes "restricted", translated
//! to compose. It is an allowlist: a key hostd does not know to be safe is refused, so a
//! new compose feature can never slip past it. Every refusal names the service, the key
//! and the rule, so the customer knows exactly what to change.

use std::fmt;

use serde_norway::{Mapping, Value};

/// Capabilities a service may add back after hostd's `cap_drop: [ALL]`: what an image's
/// entrypoint needs to bind :80/:443 and drop from root to its own user, nothing more.
pub const CAP_ADD_ALLOWED: [&str; 6] = [
    "NET_BIND_SERVICE",
    "CHOWN",
    "SETUID",
    "SETGID",
    "FOWNER",
    "DAC_OVERRIDE",
];

/// Namespaced sysctls that cannot affect other tenants (Kubernetes' "safe" set).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Service keys accepted as they are: they cannot reach outside the tenant's engine.
const PLAIN_SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "working_dir",
    "user",
    "restart",
    "depends_on",
    "healthcheck",
    "expose",
    "stop_signal",
    "stop_grace_period",
    "init",
    "tty",
    "stdin_open",
    "hostname",
    "domainname",
    "container_name",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "cpus",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpuset",
    "pids_limit",
    "shm_size",
    "deploy",
    "profiles",
    "pull_policy",
    "platform",
    "scale",
    "group_add",
    "links",
    "cap_drop",
    "tmpfs",
    "stop_grace_period",
    "attach",
];

/// One reason a compose file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Service name, or `None` for a top-level key.
    pub service: Option<String>,
    /// The offending key, with a sub-path where it helps (`volumes[0]`).
    pub key: String,
    /// The rule broken and what to do instead.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(s) => write!(f, "service `{s}`, key `{}`: {}", self.key, self.rule),
            None => write!(f, "top-level key `{}`: {}", self.key, self.rule),
        }
    }
}

/// A compose file refused by the policy, with every violation found (not just the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not YAML or not a compose mapping.
    #[error("compose file is not valid YAML/compose: {0}")]
    Syntax(String),
    /// The file parsed but breaks the policy.
    #[error("compose file refused by the tenant policy:\n{}", list(.0))]
    Refused(Vec<Violation>),
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|x| format!("  - {x}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a compose file as users write it; returns the parsed document, interpolated
/// (see [`crate::interpolate`]), when it is allowed. The policy sees interpolated values,
/// so `privileged: ${X:-true}` is judged as `true`.
pub fn check_compose(text: &str) -> Result<Mapping, PolicyError> {
    let mut doc: Value =
        serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    crate::interpolate::interpolate(&mut doc, &std::collections::HashMap::new()).map_err(|e| {
        let (service, key) = match e.path.as_slice() {
            [top, svc, rest @ ..] if top == "services" => (Some(svc.clone()), dotted(rest)),
            other => (None, dotted(other)),
        };
        PolicyError::Refused(vec![Violation {
            service,
            key,
            rule: e.message,
        }])
    })?;
    let Value::Mapping(root) = doc else {
        return Err(PolicyError::Syntax("the document is not a mapping".into()));
    };
    let mut c = Checker::default();
    c.top_level(&root);
    if c.violations.is_empty() {
        Ok(root)
    } else {
        Err(PolicyError::Refused(c.violations))
    }
}

/// `["volumes", "[0]", "source"]` as `volumes[0].source`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

#[derive(Default)]
struct Checker {
    violations: Vec<Violation>,
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn as_str(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Items of a list-or-mapping compose field as `(key, value)` strings (`A=b` lists and maps).
fn kv_items(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Sequence(seq) => seq
            .iter()
            .filter_map(as_str)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s.to_owned(), String::new()),
            })
            .collect(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                (
                    key_str(k),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{v:?}")),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Checker {
    fn refuse(&mut self, service: Option<&str>, key: impl Into<String>, rule: impl Into<String>) {
        self.violations.push(Violation {
            service: service.map(str::to_owned),
            key: key.into(),
            rule: rule.into(),
        });
    }

    fn top_level(&mut self, root: &Mapping) {
        for (k, v) in root {
            let key = key_str(k);
            match key.as_str() {
                "version" | "name" => {}
                k if k.starts_with("x-") => {}
                "services" => match v {
                    Value::Mapping(services) => {
                        if services.is_empty() {
                            self.refuse(None, "services", "at least one service is required");
                        }
                        for (name, svc) in services {
                            self.service(&key_str(name), svc);
                        }
                    }
                    _ => self.refuse(None, "services", "must be a mapping of service names to services"),
                },
                "volumes" => self.top_volumes(v),
                "networks" => self.top_networks(v),
                "secrets" | "configs" => self.refuse(
                    None,
                    key,
                    "reads files from the host; hostd writes the tenant's secrets itself under /run/secrets/m8trx",
                ),
                "include" => self.refuse(None, key, "includes other files from the host; send one self-contained compose file"),
                _ => self.refuse(None, key, "unsupported top-level key; allowed: version, name, services, volumes, networks, x-*"),
            }
        }
        if !root.contains_key("services") {
            self.refuse(
                None,
                "services",
                "a compose file needs a `services` mapping",
            );
        }
    }

    fn top_volumes(&mut self, v: &Value) {
        let Value::Mapping(vols) = v else { return };
        for (name, def) in vols {
            let name = key_str(name);
            let Value::Mapping(def) = def else { continue };
            for (k, val) in def {
                let k = key_str(k);
                match k.as_str() {
                    "driver" if as_str(val) == Some("local") => {}
                    "driver" => self.refuse(None, format!("volumes.{name}.driver"), "only the local driver: named volumes live on the tenant's encrypted volume"),
                    "driver_opts" => self.refuse(None, format!("volumes.{name}.driver_opts"), "driver options can bind host paths or devices; use a plain named volume"),
                    "external" | "labels" | "name" => {}
                    _ => self.refuse(None, format!("volumes.{name}.{k}"), "unsupported volume option"),
                }
            }
        }
    }

    fn top_networks(&mut self, v: &Value) {
        let Value::Mapping(nets) = v else { return };
        for (name, def) in nets {
            let name = key_str(name);
            let Value::Mapping(def) = def else { continue };
            for (k, val) in def {
                let k = key_str(k);
                match k.as_str() {
                    "driver" if as_str(val) == Some("bridge") => {}
                    "driver" => self.refuse(None, format!("networks.{name}.driver"), "only bridge networks inside the tenant; host, macvlan, ipvlan and overlay reach outside it"),
                    "driver_opts" => self.refuse(None, format!("networks.{name}.driver_opts"), "bridge options are set by hostd"),
                    "external" => self.refuse(None, format!("networks.{name}.external"), "external networks are not the tenant's; declare the network in this file"),
                    "ipam" => self.refuse(None, format!("networks.{name}.ipam"), "addresses are allocated by hostd from the tenant's subnet"),
                    "internal" | "labels" | "attachable" | "name" | "enable_ipv6" => {}
                    _ => self.refuse(None, format!("networks.{name}.{k}"), "unsupported network option"),
                }
            }
        }
    }

    fn service(&mut self, name: &str, svc: &Value) {
        let s = Some(name);
        let Value::Mapping(svc) = svc else {
            self.refuse(s, "(service)", "a service must be a mapping");
            return;
        };
        if !svc.contains_key("image") {
            self.refuse(
                s,
                "image",
                "every service needs an image (pulled from a registry or loaded from a tarball)",
            );
        }
        for (k, v) in svc {
            let key = key_str(k);
            match key.as_str() {
                k if PLAIN_SERVICE_KEYS.contains(&k) || k.starts_with("x-") => {}
                "privileged" => {
                    if v.as_bool() != Some(false) {
                        self.refuse(s, key, "privileged containers control the host kernel; never allowed");
                    }
                }
                "read_only" => {
                    if v.as_bool() != Some(true) {
                        self.refuse(s, key, "the root filesystem is always read-only; write to named volumes or tmpfs");
                    }
                }
                "network_mode" => {
                    let m = as_str(v).unwrap_or("");
                    if !(m == "none" || m == "bridge" || m.starts_with("service:")) {
                        self.refuse(s, key, format!("network_mode {m:?} is not allowed; use none, bridge or service:<name> (host and container: reach outside the tenant)"));
                    }
                }
                "pid" => self.refuse(s, key, "sharing a PID namespace is not allowed (host PIDs are other tenants')"),
                "ipc" => {
                    let m = as_str(v).unwrap_or("");
                    if !(m == "private" || m == "none") {
                        self.refuse(s, key, format!("ipc {m:?} is not allowed; only private or none"));
                    }
                }
                "uts" => self.refuse(s, key, "sharing the host UTS namespace is not allowed"),
                "userns_mode" => self.refuse(s, key, "the user namespace is set by the tenant engine; userns_mode would undo the remapping"),
                "cgroup" => {
                    if as_str(v) != Some("private") {
                        self.refuse(s, key, "only a private cgroup namespace is allowed");
                    }
                }
                "cgroup_parent" => self.refuse(s, key, "containers stay inside the tenant's cgroup; cgroup_parent would escape its limits"),
                "cap_add" => self.cap_add(name, v),
                "devices" | "device_cgroup_rules" | "gpus" => self.refuse(s, key, "host devices are not available to tenants"),
                "security_opt" => self.security_opt(name, v),
                "sysctls" => {
                    for (k, _) in kv_items(v) {
                        if !SAFE_SYSCTLS.contains(&k.as_str()) {
                            self.refuse(s, format!("sysctls.{k}"), format!("sysctl {k} is not namespaced-safe; allowed: {}", SAFE_SYSCTLS.join(", ")));
                        }
                    }
                }
                "volumes" => self.service_volumes(name, v),
                "volumes_from" => {
                    for item in v.as_sequence().into_iter().flatten() {
                        let f = as_str(item).unwrap_or("");
                        if f.starts_with("container:") {
                            self.refuse(s, key.clone(), format!("volumes_from {f:?}: only services of this project"));
                        }
                    }
                }
                "ports" => self.refuse(s, key, "no host ports: public traffic reaches the tenant through sni-proxy; use expose"),
                "networks" => {}
                "labels" => {
                    for (k, _) in kv_items(v) {
                        if k.starts_with("com.docker.compose.") || k.starts_with("m8trx.") {
                            self.refuse(s, format!("labels.{k}"), "labels under com.docker.compose.* and m8trx.* are set by hostd");
                        }
                    }
                }
                "logging" => {
                    let driver = v.get("driver").and_then(as_str).unwrap_or("json-file");
                    if !["json-file", "local", "none"].contains(&driver) {
                        self.refuse(s, "logging.driver", format!("log driver {driver:?} writes outside the tenant; use json-file or local"));
                    }
                }
                "ulimits" => {
                    if let Value::Mapping(m) = v {
                        for (k, _) in m {
                            let k = key_str(k);
                            if k != "nofile" {
                                self.refuse(s, format!("ulimits.{k}"), "only nofile may be set; other limits come from the tenant cgroup");
                            }
                        }
                    }
                }
                "oom_kill_disable" => self.refuse(s, key, "a container that cannot be OOM-killed can starve the host; the tenant limit must be able to kill"),
                "oom_score_adj" => {
                    if v.as_i64().unwrap_or(0) < 0 {
                        self.refuse(s, key, "a negative OOM score would make the host kill other tenants first");
                    }
                }
                "build" => self.refuse(s, key, "images are not built on the shared host; push to a registry or load a tarball"),
                "env_file" => self.refuse(s, key, "env_file reads files from the host; put the variables in `environment`"),
                "secrets" | "configs" => self.refuse(s, key, "reads files from the host; hostd mounts the tenant's secrets under /run/secrets/m8trx"),
                "runtime" | "isolation" => self.refuse(s, key, "the container runtime is fixed by hostd"),
                "storage_opt" | "blkio_config" => self.refuse(s, key, "storage options reference host devices; the tenant volume sets the disk quota"),
                "external_links" => self.refuse(s, key, "links to containers outside this project are not allowed"),
                "extends" => self.refuse(s, key, "extends reads other files from the host; send one self-contained compose file"),
                "credential_spec" => self.refuse(s, key, "not supported on Linux tenants"),
                "mac_address" | "link_local_ips" => self.refuse(s, key, "addresses are allocated by hostd"),
                _ => self.refuse(s, key, "unsupported key; hostd accepts only compose keys it knows to be safe (see docs/ARCHITECTURE.md)"),
            }
        }
    }

    fn cap_add(&mut self, service: &str, v: &Value) {
        for cap in v.as_sequence().into_iter().flatten() {
            let raw = as_str(cap).unwrap_or("");
            let norm = raw.trim().to_ascii_uppercase();
            let norm = norm.strip_prefix("CAP_").unwrap_or(&norm);
            if !CAP_ADD_ALLOWED.contains(&norm) {
                self.refuse(
                    Some(service),
                    "cap_add",
                    format!(
                        "capability {raw:?} is not allowed; allowed: {}",
                        CAP_ADD_ALLOWED.join(", ")
                    ),
                );
            }
        }
    }

    fn security_opt(&mut self, service: &str, v: &Value) {
        for opt in v.as_sequence().into_iter().flatten() {
            let raw = as_str(opt).unwrap_or("");
            let compact: String = raw
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            let harmless = [
                "no-new-privileges",
                "no-new-privileges:true",
                "no-new-privileges=true",
            ];
            if !harmless.contains(&compact.as_str()) {
                self.refuse(
                    Some(service),
                    "security_opt",
                    format!("{raw:?} is not allowed: seccomp, AppArmor and no-new-privileges are set by hostd and cannot be relaxed"),
                );
            }
        }
    }

    fn service_volumes(&mut self, service: &str, v: &Value) {
        for (i, item) in v.as_sequence().into_iter().flatten().enumerate() {
            let key = format!("volumes[{i}]");
            let (kind, source) = match item {
                Value::String(short) => {
                    let source = short.split(':').next().unwrap_or("");
                    let kind = if short.contains(':')
                        && (source.starts_with('/')
                            || source.starts_with('.')
                            || source.starts_with('~'))
                    {
                        "bind"
                    } else {
                        "volume"
                    };
                    (kind.to_owned(), source.to_owned())
                }
                Value::Mapping(m) => (
                    m.get("type")
                        .and_then(as_str)
                        .unwrap_or("volume")
                        .to_owned(),
                    m.get("source").and_then(as_str).unwrap_or("").to_owned(),
                ),
                _ => ("unknown".to_owned(), String::new()),
            };
            match kind.as_str() {
                "volume" | "tmpfs" => {}
                "bind" if source.contains("docker.sock") || source.contains("containerd.sock") => self.refuse(
                    Some(service),
                    key,
                    format!("mounting the engine socket {source:?} gives root on the host"),
                ),
                "bind" => self.refuse(
                    Some(service),
                    key,
                    format!("bind mount of host path {source:?} is not allowed; use a named volume (it lives on the tenant's encrypted volume)"),
                ),
                other => self.refuse(Some(service), key, format!("volume type {other:?} is not allowed; use volume or tmpfs")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(text: &str) -> Vec<Violation> {
        match check_compose(text) {
            Err(PolicyError::Refused(v)) => v,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_normal_stack_passes() {
        let ok = r#"
services:
  caddy:
    image: caddy:2.11
    cap_add: [NET_BIND_SERVICE]
    read_only: true
    volumes: ["caddy-data:/data", {type: tmpfs, target: /config}]
    depends_on: { app: { condition: service_healthy } }
    security_opt: ["no-new-privileges:true"]
    sysctls: { net.ipv4.ip_unprivileged_port_start: 0 }
  app:
    image: example/app:1
    environment: { PORT: "8080" }
    healthcheck: { test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/"], interval: 5s }
    labels: { team: web }
    logging: { driver: local }
volumes:
  caddy-data: {}
networks:
  default: { driver: bridge }
"#;
        check_compose(ok).unwrap();
    }

    #[test]
    fn reports_every_violation_with_service_key_and_rule() {
        let v =
            violations("services:\n  web:\n    image: x\n    privileged: true\n    pid: host\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].service.as_deref(), Some("web"));
        assert_eq!(v[0].key, "privileged");
        assert!(
            v[0].to_string().contains("service `web`, key `privileged`"),
            "{}",
            v[0]
        );
        assert_eq!(v[1].key, "pid");
    }

    #[test]
    fn not_yaml_is_a_syntax_error() {
        assert!(matches!(
            check_compose("services: [unclosed"),
            Err(PolicyError::Syntax(_))
        ));
        assert!(matches!(
            check_compose("- a list"),
            Err(PolicyError::Syntax(_))
        ));
    }
}
