//! Container policy for tenant compose files, over the typed model (`crate::compose::model`):
//! at least Kubernetes "restricted", translated to compose. A file is accepted only if every
//! key in it is one hostd translates (a field of the model) and every value is within the
//! rules below; any other key is refused, by name, with what to do instead. Every problem in
//! the file is reported, not only the first.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use m8trx_spec::tenant::Limits;

use crate::compose::files::{self, Kind};
use crate::compose::model::{self, ComposeFile, FileRef, Problem, Service, ServiceVolume};
use crate::compose::{bundle, normalize_path, Bundle};

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

/// Healthchecks run in the tenant's engine, outside the tenant's CPU budget: at most one a
/// second, and a timeout of at least a second.
pub const MIN_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Retries above this only delay the verdict.
pub const MAX_HEALTH_RETRIES: i64 = 100;
/// A start period longer than this holds the deploy (and its deadline) for nothing.
pub const MAX_START_PERIOD: std::time::Duration = std::time::Duration::from_secs(600);
/// The longest stop grace period: a tenant stop or redeploy waits at most this per container.
pub const MAX_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(120);
/// nofile ceiling a container may ask for: the engine's own hard limit, which a container in
/// a user namespace cannot raise.
pub const MAX_NOFILE: i64 = crate::engine::ENGINE_NOFILE as i64;
/// json-file/local log rotation bounds: files of at most 100 MiB, at most 10 of them.
pub const MAX_LOG_SIZE: i64 = 100 << 20;
/// See [`MAX_LOG_SIZE`].
pub const MAX_LOG_FILES: i64 = 10;

/// One reason a compose file was refused (the service, the key path, the rule).
pub type Violation = Problem;

impl fmt::Display for Problem {
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

/// Reads the bundle's compose file with its variables and checks it, with the bundle's
/// files, against the policy within the tenant's aggregate `limits`: the typed file when
/// accepted, every violation when not.
pub fn check_compose(bundle: &Bundle, limits: &Limits) -> Result<ComposeFile, PolicyError> {
    let (file, mut problems) =
        model::load(&bundle.compose, &bundle.vars()).map_err(PolicyError::Syntax)?;
    for p in bundle::check_files(&bundle.files) {
        problems.push(Problem {
            service: None,
            key: "(bundle files)".into(),
            rule: p,
        });
    }
    problems.extend(check(&file, bundle, limits));
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(PolicyError::Refused(problems))
    }
}

/// What this host cannot give a file the policy accepts: open files limits above what a
/// container can be granted here (see [`crate::engine::container_nofile_ceiling`]).
pub fn host_violations(file: &ComposeFile, nofile_ceiling: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, svc) in &file.services {
        let Some(model::Ulimit::Single(hard) | model::Ulimit::Pair(model::UlimitPair { hard, .. })) =
            svc.ulimits.as_ref().and_then(|u| u.get("nofile")).copied()
        else {
            continue;
        };
        if u64::try_from(hard).is_ok_and(|h| h > nofile_ceiling) {
            out.push(Problem {
                service: Some(name.clone()),
                key: "ulimits.nofile".into(),
                rule: format!(
                    "hard {hard} is above what this host can give a container ({nofile_ceiling}: \
                     hostd runs without CAP_SYS_RESOURCE); ask for at most {nofile_ceiling}"
                ),
            });
        }
    }
    out
}

/// Every rule the typed file breaks, read with the bundle it came in (its variables and
/// files).
pub fn check(file: &ComposeFile, bundle: &Bundle, limits: &Limits) -> Vec<Violation> {
    let mut c = Checker {
        violations: Vec::new(),
        limits,
        services: file.services.keys().cloned().collect(),
        bundle,
    };
    for key in file.other.keys() {
        let rule = match key.as_str() {
            "include" => "includes other files from the host; send one self-contained compose file",
            "name" => "the project name is m8trx-<tenant>, set by hostd; remove `name`",
            _ => "unsupported top-level key; allowed: services, networks, volumes, secrets, configs, version, x-*",
        };
        c.top(key, rule);
    }
    for (name, net) in &file.networks {
        c.network(name, net.as_ref());
    }
    for (name, vol) in &file.volumes {
        c.volume(name, vol.as_ref());
    }
    for (kind, map) in [(Kind::Secret, &file.secrets), (Kind::Config, &file.configs)] {
        for (name, src) in map {
            c.file_source(kind, name, src);
        }
    }
    for (name, svc) in &file.services {
        c.service(name, svc, file);
    }
    c.violations
}

struct Checker<'a> {
    violations: Vec<Violation>,
    limits: &'a Limits,
    services: BTreeSet<String>,
    bundle: &'a Bundle,
}

impl Checker<'_> {
    fn top(&mut self, key: impl Into<String>, rule: impl Into<String>) {
        self.violations.push(Problem {
            service: None,
            key: key.into(),
            rule: rule.into(),
        });
    }

    fn refuse(&mut self, service: &str, key: impl Into<String>, rule: impl Into<String>) {
        self.violations.push(Problem {
            service: Some(service.to_owned()),
            key: key.into(),
            rule: rule.into(),
        });
    }

    fn network(&mut self, name: &str, net: Option<&model::Network>) {
        let Some(net) = net else { return };
        if let Some(d) = &net.driver {
            if d != "bridge" {
                self.top(format!("networks.{name}.driver"), "only bridge networks inside the tenant; host, macvlan, ipvlan and overlay reach outside it");
            }
        }
        for key in net.other.keys() {
            let rule = match key.as_str() {
                "driver_opts" => "bridge options are set by hostd",
                "external" => {
                    "external networks are not the tenant's; declare the network in this file"
                }
                "ipam" => "addresses are allocated by hostd from the tenant's subnet",
                "name" => "hostd names networks m8trx-<tenant>_<network>; remove `name`",
                "enable_ipv6" => "tenant networks are IPv4 only",
                "attachable" => "a swarm option; tenant networks are the project's own",
                _ => "unsupported network option; allowed: driver (bridge), internal, labels",
            };
            self.top(format!("networks.{name}.{key}"), rule);
        }
    }

    fn volume(&mut self, name: &str, vol: Option<&model::Volume>) {
        let Some(vol) = vol else { return };
        if let Some(d) = &vol.driver {
            if d != "local" {
                self.top(
                    format!("volumes.{name}.driver"),
                    "only the local driver: named volumes live on the tenant's encrypted volume",
                );
            }
        }
        for key in vol.other.keys() {
            let rule = match key.as_str() {
                "driver_opts" => "driver options can bind host paths or devices; use a plain named volume",
                "external" => "volumes are the project's own, created by hostd on the tenant's volume; declare it without external",
                "name" => "hostd names volumes m8trx-<tenant>_<volume>; remove `name`",
                _ => "unsupported volume option; allowed: driver (local), labels",
            };
            self.top(format!("volumes.{name}.{key}"), rule);
        }
    }

    /// A top-level `secrets.<name>` or `configs.<name>`: exactly one source, and that one
    /// available to this deploy.
    fn file_source(&mut self, kind: Kind, name: &str, src: &model::FileSource) {
        let section = kind.key();
        let key = format!("{section}.{name}");
        if normalize_path(name).as_deref() != Some(name) || name.contains('/') {
            self.top(&key, "names are letters, digits and ._-+@=,");
        }
        let external = src.external == Some(true);
        let given = [
            src.file.is_some(),
            src.content.is_some(),
            src.environment.is_some(),
            external,
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.top(&key, match kind {
                Kind::Secret => "needs exactly one of file (a file of the deploy, `--include`), content, environment (a variable of the env file) or external: true (a platform parameter)",
                Kind::Config => "needs exactly one of file (a file of the deploy, `--include`), content or environment (a variable of the env file)",
            });
        }
        if let Some(f) = &src.file {
            match normalize_path(f) {
                None => self.top(format!("{key}.file"), format!("{f:?}: a relative path of the deploy's files (sent with `hostd ctl deploy … --include {f}`); host paths are not readable")),
                Some(p) if !self.bundle.files.contains_key(&p) => self.top(format!("{key}.file"), format!("{f:?} is not among the deploy's files: send it with `hostd ctl deploy … --include {p}`")),
                Some(_) => {}
            }
        }
        if let Some(c) = &src.content {
            if c.len() > bundle::MAX_FILE_BYTES {
                self.top(
                    format!("{key}.content"),
                    format!(
                        "{} bytes; at most {} inline: send a file with `--include`",
                        c.len(),
                        bundle::MAX_FILE_BYTES
                    ),
                );
            }
        }
        if let Some(v) = &src.environment {
            if !self.bundle.env.contains_key(v) {
                self.top(
                    format!("{key}.environment"),
                    format!("variable {v} is not set by the deploy's env file (`--env-file`)"),
                );
            }
        }
        if src.external == Some(false) {
            self.top(
                format!("{key}.external"),
                "external: false means nothing; remove it",
            );
        }
        if external {
            let leaf = files::platform_leaf(name, src);
            let leaves: Vec<&str> = m8trx_spec::SSM_PARAMETERS.iter().map(|p| p.leaf).collect();
            if kind == Kind::Config {
                self.top(
                    format!("{key}.external"),
                    "there are no platform configs; use content, environment or file",
                );
            } else if !leaves.contains(&leaf) {
                self.top(
                    format!("{key}.external"),
                    format!("external secrets are the tenant's platform parameters; `{leaf}` is none of: {}", leaves.join(", ")),
                );
            }
        }
        for k in src.other.keys() {
            let rule = match k.as_str() {
                "name" if external => continue,
                "name" => "only an external secret has a name (the platform parameter it reads)"
                    .to_owned(),
                "driver" | "driver_opts" | "template_driver" => {
                    "secret and config drivers are swarm features; use file, content or environment"
                        .to_owned()
                }
                _ => format!(
                    "unsupported; allowed: file, content, environment{}",
                    if kind == Kind::Secret {
                        ", external, name"
                    } else {
                        ""
                    }
                ),
            };
            self.top(format!("{key}.{k}"), rule);
        }
    }

    /// A service's `secrets` and `configs`: declared, at a target the container may have,
    /// with numeric ids and a plain mode.
    fn file_refs(&mut self, s: &str, svc: &Service, file: &ComposeFile) {
        let mut targets = BTreeSet::new();
        for (kind, refs, decl) in [
            (Kind::Secret, &svc.secrets, &file.secrets),
            (Kind::Config, &svc.configs, &file.configs),
        ] {
            for (i, r) in refs.iter().flatten().enumerate() {
                let key = format!("{}[{i}]", kind.key());
                let Some(src) = decl.get(r.source()) else {
                    self.refuse(
                        s,
                        &key,
                        format!(
                            "`{}` is not declared under the top-level {}",
                            r.source(),
                            kind.key()
                        ),
                    );
                    continue;
                };
                let target = files::target(kind, r);
                if let Some(why) = bad_target(&target) {
                    self.refuse(s, format!("{key}.target"), format!("{target:?}: {why}"));
                }
                if !targets.insert(target.clone()) {
                    self.refuse(s, format!("{key}.target"), format!("{target:?} is already the target of another secret or config of this service"));
                }
                if let FileRef::Long(l) = r {
                    for (k, v) in [("uid", &l.uid), ("gid", &l.gid)] {
                        if let Some(v) = v {
                            if files::parse_id(&v.0).is_none() {
                                self.refuse(
                                    s,
                                    format!("{key}.{k}"),
                                    format!(
                                        "{:?}: a number from 0 to 65535 (ids inside the container)",
                                        v.0
                                    ),
                                );
                            }
                        }
                    }
                    if let Some(m) = l
                        .mode
                        .as_ref()
                        .filter(|m| m.mode.is_none_or(|v| v > files::MAX_FILE_MODE))
                    {
                        self.refuse(s, format!("{key}.mode"), format!("{}: a file mode like 0440 or 0o440, at most 0777 (no setuid, setgid or sticky bits)", m.written));
                    }
                    if src.external == Some(true)
                        && (l.uid.is_some() || l.gid.is_some() || l.mode.is_some())
                    {
                        self.refuse(s, &key, "platform secrets are mounted as hostd writes them (0400, the container's root); remove uid, gid and mode, or read the secret as root and hand it on");
                    }
                }
            }
        }
    }

    fn service(&mut self, name: &str, svc: &Service, file: &ComposeFile) {
        let s = name;
        let mem = i64::try_from(self.limits.memory.0).unwrap_or(i64::MAX);
        let pids = i64::from(self.limits.pids);
        match svc.image.as_deref() {
            None | Some("") => self.refuse(s, "image", "every service needs an image (pulled from a registry or loaded with `hostd ctl load`)"),
            Some(image) => {
                if let Some(why) = registry_refusal(image) {
                    self.refuse(s, "image", why);
                }
            }
        }
        if svc.privileged == Some(true) {
            self.refuse(
                s,
                "privileged",
                "privileged containers control the host kernel; never allowed",
            );
        }
        if svc.read_only == Some(false) {
            self.refuse(
                s,
                "read_only",
                "the root filesystem is always read-only; write to named volumes or tmpfs",
            );
        }
        if let Some(m) = &svc.network_mode {
            if m != "none" {
                match m.strip_prefix("service:") {
                    Some(x) if self.services.contains(x) && x != name => {}
                    Some(x) => self.refuse(s, "network_mode", format!("network_mode service:{x} names no other service of this file; name one of: {}", self.names_but(name))),
                    None => self.refuse(s, "network_mode", format!("network_mode {m:?} is not allowed; use none or service:<a service of this file> (host, bridge and container: reach outside the project)")),
                }
            }
        }
        for (key, v) in [("ipc", &svc.ipc), ("pid", &svc.pid)] {
            let Some(m) = v else { continue };
            match (key, m.as_str(), m.strip_prefix("service:")) {
                (_, _, Some(x)) if self.services.contains(x) && x != name => {}
                ("ipc", "private" | "none" | "shareable", _) => {}
                (_, _, Some(x)) => self.refuse(s, key, format!("{key} service:{x} names no other service of this file")),
                _ => self.refuse(s, key, format!("{key} {m:?} is not allowed; only private (or service:<a service of this file>) — host namespaces are other tenants'")),
            }
        }
        if let Some(c) = &svc.cgroup {
            if c != "private" {
                self.refuse(s, "cgroup", "only a private cgroup namespace is allowed");
            }
        }
        if let Some(caps) = &svc.cap_add {
            for raw in caps {
                let norm = raw.trim().to_ascii_uppercase();
                let norm = norm.strip_prefix("CAP_").unwrap_or(&norm);
                if !CAP_ADD_ALLOWED.contains(&norm) {
                    self.refuse(
                        s,
                        "cap_add",
                        format!(
                            "capability {raw:?} is not allowed; allowed: {}",
                            CAP_ADD_ALLOWED.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(opts) = &svc.security_opt {
            for raw in opts {
                let compact: String = raw
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_ascii_lowercase();
                if ![
                    "no-new-privileges",
                    "no-new-privileges:true",
                    "no-new-privileges=true",
                ]
                .contains(&compact.as_str())
                {
                    self.refuse(s, "security_opt", format!("{raw:?} is not allowed: seccomp, AppArmor and no-new-privileges are set by hostd and cannot be relaxed"));
                }
            }
        }
        if let Some(sys) = &svc.sysctls {
            for k in sys.keys() {
                if !SAFE_SYSCTLS.contains(&k) {
                    self.refuse(
                        s,
                        format!("sysctls.{k}"),
                        format!(
                            "sysctl {k} is not namespaced-safe; allowed: {}",
                            SAFE_SYSCTLS.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(l) = &svc.labels {
            for k in l.keys() {
                if k.starts_with("com.docker.compose.") || k.starts_with("m8trx.") {
                    self.refuse(
                        s,
                        format!("labels.{k}"),
                        "labels under com.docker.compose.* and m8trx.* are set by hostd",
                    );
                }
            }
        }
        self.volumes(s, svc, file, mem);
        self.file_refs(s, svc, file);
        if let Some(from) = &svc.volumes_from {
            for f in from {
                let svc_name = f.split(':').next().unwrap_or("");
                if f.starts_with("container:") || !self.services.contains(svc_name) {
                    self.refuse(
                        s,
                        "volumes_from",
                        format!("volumes_from {f:?}: only services of this file"),
                    );
                }
            }
        }
        if let Some(nets) = &svc.networks {
            for (n, _) in nets.entries() {
                if n != "default" && !file.networks.contains_key(&n) {
                    self.refuse(
                        s,
                        format!("networks.{n}"),
                        format!("network `{n}` is not declared under the top-level networks"),
                    );
                }
            }
            if let model::ServiceNetworks::Map(m) = nets {
                for (n, opts) in m {
                    for k in opts.iter().flat_map(|o| o.other.keys()) {
                        self.refuse(s, format!("networks.{n}.{k}"), "only aliases may be set per network; addresses and priorities are hostd's");
                    }
                }
            }
            if svc.network_mode.is_some() {
                self.refuse(s, "networks", "a service with network_mode joins no network of its own; remove one of the two");
            }
        }
        if let Some(deps) = &svc.depends_on {
            if let model::DependsOn::Map(m) = deps {
                for (d, dep) in m {
                    if dep.restart.is_some() {
                        self.refuse(s, format!("depends_on.{d}.restart"), "hostd does not restart dependents when a dependency is redeployed; remove `restart`");
                    }
                }
            }
            for (d, cond, required) in deps.entries() {
                if ![
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                ]
                .contains(&cond.as_str())
                {
                    self.refuse(s, format!("depends_on.{d}.condition"), format!("{cond:?} is not a condition; use service_started, service_healthy or service_completed_successfully"));
                }
                if required && !self.services.contains(&d) {
                    self.refuse(s, format!("depends_on.{d}"), format!("`{d}` is not a service of this file (mark it `required: false` if it is optional)"));
                }
                if cond == "service_healthy"
                    && file
                        .services
                        .get(&d)
                        .is_some_and(|x| x.healthcheck.is_none())
                {
                    self.refuse(s, format!("depends_on.{d}.condition"), format!("`{d}` has no healthcheck, so it can never be healthy; give it one or wait for service_started"));
                }
            }
        }
        if let Some(h) = &svc.healthcheck {
            for (k, v) in [
                ("interval", h.interval),
                ("timeout", h.timeout),
                ("start_interval", h.start_interval),
            ] {
                if let Some(d) = v {
                    if d.0 < MIN_HEALTH_INTERVAL {
                        self.refuse(s, format!("healthcheck.{k}"), format!("{:?} is below 1s: healthchecks run in the tenant's engine, outside its CPU budget", d.0));
                    }
                }
            }
            if let Some(r) = h.retries {
                if !(1..=MAX_HEALTH_RETRIES).contains(&r) {
                    self.refuse(
                        s,
                        "healthcheck.retries",
                        format!("{r} retries; between 1 and {MAX_HEALTH_RETRIES}"),
                    );
                }
            }
            if let Some(p) = h.start_period {
                if p.0 > MAX_START_PERIOD {
                    self.refuse(
                        s,
                        "healthcheck.start_period",
                        "at most 10m: a deploy waits for health within one deadline",
                    );
                }
            }
            if h.test.is_none() && h.disable != Some(true) {
                self.refuse(
                    s,
                    "healthcheck.test",
                    "a healthcheck needs a test (or disable: true)",
                );
            }
        }
        if let Some(g) = svc.stop_grace_period {
            if g.0 > MAX_STOP_GRACE {
                self.refuse(
                    s,
                    "stop_grace_period",
                    "at most 2m: a stop or redeploy of the tenant waits this long per container",
                );
            }
        }
        for (key, v) in [
            ("mem_limit", svc.mem_limit),
            ("mem_reservation", svc.mem_reservation),
            ("shm_size", svc.shm_size),
        ] {
            if let Some(b) = v {
                self.bytes(s, key, b.0, mem);
            }
        }
        if let Some(c) = svc.cpus {
            self.cpus(s, "cpus", c.0);
        }
        if let Some(p) = svc.pids_limit {
            self.pids(s, "pids_limit", p, pids);
        }
        if let Some(c) = svc.cpu_shares {
            if !(2..=262_144).contains(&c) {
                self.refuse(
                    s,
                    "cpu_shares",
                    "between 2 and 262144 (a weight among the tenant's own containers)",
                );
            }
        }
        if let Some(d) = &svc.deploy {
            if let Some(r) = &d.resources {
                if let Some(l) = &r.limits {
                    if let Some(m) = l.memory {
                        self.bytes(s, "deploy.resources.limits.memory", m.0, mem);
                    }
                    if let Some(c) = l.cpus {
                        self.cpus(s, "deploy.resources.limits.cpus", c.0);
                    }
                    if let Some(p) = l.pids {
                        self.pids(s, "deploy.resources.limits.pids", p, pids);
                    }
                }
                if let Some(r) = &r.reservations {
                    if let Some(m) = r.memory {
                        self.bytes(s, "deploy.resources.reservations.memory", m.0, mem);
                    }
                    if let Some(c) = r.cpus {
                        self.cpus(s, "deploy.resources.reservations.cpus", c.0);
                    }
                }
            }
            if let Some(n) = d.replicas {
                if n != 1 {
                    self.refuse(
                        s,
                        "deploy.replicas",
                        "one container per service on a shared host; use 1",
                    );
                }
            }
            if let Some(u) = &d.update_config {
                match u.order.as_deref() {
                    None | Some("stop-first") => {}
                    Some("start-first") if crate::compose::is_shared(file, name) => self.refuse(
                        s,
                        "deploy.update_config.order",
                        "another service joins this one's namespaces or volumes, so it keeps the old container: use stop-first",
                    ),
                    Some("start-first") => {}
                    Some(o) => self.refuse(
                        s,
                        "deploy.update_config.order",
                        format!("{o:?}: start-first or stop-first"),
                    ),
                }
                for k in u.other.keys() {
                    self.refuse(
                        s,
                        format!("deploy.update_config.{k}"),
                        "one container per service: only update_config.order is translated",
                    );
                }
            }
            for k in d.other.keys() {
                self.refuse(s, format!("deploy.{k}"), "a swarm option with no meaning on one host; only deploy.resources, deploy.replicas: 1 and deploy.update_config.order are translated");
            }
        }
        if let Some(adj) = svc.oom_score_adj {
            if !(0..=1000).contains(&adj) {
                self.refuse(s, "oom_score_adj", "between 0 and 1000: a negative score would make the host kill other tenants first");
            }
        }
        if let Some(u) = &svc.ulimits {
            for (k, v) in u {
                if k != "nofile" {
                    self.refuse(
                        s,
                        format!("ulimits.{k}"),
                        "only nofile may be set; other limits come from the tenant cgroup",
                    );
                    continue;
                }
                let (soft, hard) = match *v {
                    model::Ulimit::Single(n) => (n, n),
                    model::Ulimit::Pair(p) => (p.soft, p.hard),
                };
                if soft < 1 || hard < soft || hard > MAX_NOFILE {
                    self.refuse(
                        s,
                        "ulimits.nofile",
                        format!("soft {soft}, hard {hard}: need 1 <= soft <= hard <= {MAX_NOFILE}"),
                    );
                }
            }
        }
        if let Some(l) = &svc.logging {
            let driver = l.driver.as_deref().unwrap_or("json-file");
            if !["json-file", "local"].contains(&driver) {
                self.refuse(
                    s,
                    "logging.driver",
                    format!(
                        "log driver {driver:?} writes outside the tenant; use json-file or local"
                    ),
                );
            }
            for (k, v) in l.options.iter().flatten() {
                match k.as_str() {
                    "max-size" => match model::forms::parse_size(&v.0) {
                        Some(n) if n > 0 && n <= MAX_LOG_SIZE => {}
                        _ => self.refuse(s, "logging.options.max-size", "a size up to 100m"),
                    },
                    "max-file" => match v.0.parse::<i64>() {
                        Ok(n) if (1..=MAX_LOG_FILES).contains(&n) => {}
                        _ => self.refuse(
                            s,
                            "logging.options.max-file",
                            format!("between 1 and {MAX_LOG_FILES}"),
                        ),
                    },
                    "compress" if ["true", "false"].contains(&v.0.as_str()) => {}
                    _ => self.refuse(
                        s,
                        format!("logging.options.{k}"),
                        "allowed options: max-size, max-file, compress",
                    ),
                }
            }
        }
        if let Some(p) = &svc.pull_policy {
            if !["always", "missing", "if_not_present", "never"].contains(&p.as_str()) {
                self.refuse(s, "pull_policy", format!("{p:?}: use always, missing or never (images are not built on the shared host)"));
            }
        }
        if let Some(r) = &svc.restart {
            let ok = ["no", "always", "unless-stopped", "on-failure"].contains(&r.as_str())
                || r.strip_prefix("on-failure:")
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 100));
            if !ok {
                self.refuse(
                    s,
                    "restart",
                    format!("{r:?}: use no, always, unless-stopped or on-failure[:N] (N <= 100)"),
                );
            }
        }
        if let Some(p) = &svc.profiles {
            if p.iter().any(|x| x.is_empty()) {
                self.refuse(s, "profiles", "a profile name cannot be empty");
            }
        }
        for key in svc.other.keys() {
            self.refuse(s, key.clone(), other_rule(key));
        }
    }

    fn names_but(&self, name: &str) -> String {
        let v: Vec<&str> = self
            .services
            .iter()
            .map(String::as_str)
            .filter(|x| *x != name)
            .collect();
        if v.is_empty() {
            "(no other service)".into()
        } else {
            v.join(", ")
        }
    }

    fn bytes(&mut self, s: &str, key: &str, n: i64, max: i64) {
        if n <= 0 {
            self.refuse(s, key, "must be a positive size like 256m (0 and negative mean unlimited, which a tenant cannot have)");
        } else if n > max {
            self.refuse(
                s,
                key,
                format!("{n} bytes is above the tenant's memory limit of {max} bytes"),
            );
        }
    }

    fn cpus(&mut self, s: &str, key: &str, c: f64) {
        if c <= 0.0 || c > self.limits.cpu {
            self.refuse(
                s,
                key,
                format!(
                    "{c} CPUs: must be above 0 and at most the tenant's {} CPUs",
                    self.limits.cpu
                ),
            );
        }
    }

    fn pids(&mut self, s: &str, key: &str, p: i64, max: i64) {
        if p <= 0 || p > max {
            self.refuse(s, key, format!("{p}: must be between 1 and the tenant's pids limit {max} (0 and -1 mean unlimited)"));
        }
    }

    fn volumes(&mut self, s: &str, svc: &Service, file: &ComposeFile, mem: i64) {
        for (i, v) in svc.volumes.iter().flatten().enumerate() {
            let key = format!("volumes[{i}]");
            match v {
                ServiceVolume::Short(short) => {
                    let parts: Vec<&str> = short.split(':').collect();
                    let source = if parts.len() >= 2 { parts[0] } else { "" };
                    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
                        self.refuse(
                            s,
                            key,
                            format!("{short:?} is not name:/path[:ro|rw] or /path"),
                        );
                    } else if source.starts_with(['/', '.', '~']) {
                        let ro = parts.len() == 3 && parts[2].split(',').any(|m| m == "ro");
                        self.bind(s, &key, source, ro);
                    } else if !source.is_empty() && !file.volumes.contains_key(source) {
                        self.refuse(s, key, format!("named volume `{source}` is not declared under the top-level volumes"));
                    } else if parts.len() == 3
                        && !parts[2]
                            .split(',')
                            .all(|m| ["ro", "rw", "z", "Z", "nocopy"].contains(&m))
                    {
                        self.refuse(s, key, format!("mode {:?}: use ro or rw", parts[2]));
                    } else if !parts[parts.len().min(2) - 1].starts_with('/') {
                        self.refuse(
                            s,
                            key,
                            "the target must be an absolute path in the container",
                        );
                    }
                }
                ServiceVolume::Long(m) => {
                    let kind = m.kind.as_deref().unwrap_or("volume");
                    match kind {
                        "volume" => {
                            if let Some(src) = m.source.as_deref().filter(|x| !x.is_empty()) {
                                if !file.volumes.contains_key(src) {
                                    self.refuse(s, format!("{key}.source"), format!("named volume `{src}` is not declared under the top-level volumes"));
                                }
                            }
                            if m.tmpfs.is_some() {
                                self.refuse(
                                    s,
                                    format!("{key}.tmpfs"),
                                    "tmpfs options belong to type: tmpfs",
                                );
                            }
                        }
                        "tmpfs" => {
                            if m.source.is_some() || m.volume.is_some() {
                                self.refuse(
                                    s,
                                    key.clone(),
                                    "a tmpfs has no source or volume options",
                                );
                            }
                            if let Some(size) = m.tmpfs.as_ref().and_then(|t| t.size) {
                                self.bytes(s, &format!("{key}.tmpfs.size"), size.0, mem);
                            }
                            if let Some(mode) = m
                                .tmpfs
                                .as_ref()
                                .and_then(|t| t.mode.as_ref())
                                .filter(|m| m.mode.is_none())
                            {
                                self.refuse(
                                    s,
                                    format!("{key}.tmpfs.mode"),
                                    format!(
                                        "{}: a mode like 0o1777 or \"1777\" (octal)",
                                        mode.written
                                    ),
                                );
                            }
                        }
                        "bind" => self.bind(
                            s,
                            &key,
                            m.source.as_deref().unwrap_or(""),
                            m.read_only == Some(true),
                        ),
                        other => self.refuse(
                            s,
                            format!("{key}.type"),
                            format!("volume type {other:?} is not allowed; use volume or tmpfs"),
                        ),
                    }
                    if !m.target.as_deref().is_some_and(|t| t.starts_with('/')) {
                        self.refuse(
                            s,
                            format!("{key}.target"),
                            "every mount needs an absolute target path",
                        );
                    }
                    if let Some(sub) = m.volume.as_ref().and_then(|v| v.subpath.as_deref()) {
                        if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                            self.refuse(
                                s,
                                format!("{key}.volume.subpath"),
                                "a relative path inside the volume, without `..`",
                            );
                        }
                    }
                    for k in m.other.keys() {
                        self.refuse(
                            s,
                            format!("{key}.{k}"),
                            "allowed: type, source, target, read_only, volume, tmpfs",
                        );
                    }
                }
            }
        }
        for t in svc.tmpfs.iter().flat_map(|l| l.0.iter()) {
            let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
            if !path.starts_with('/') {
                self.refuse(
                    s,
                    "tmpfs",
                    format!("{t:?}: the target must be an absolute path"),
                );
            }
            for o in opts.split(',').filter(|o| !o.is_empty()) {
                match o.split_once('=') {
                    Some(("size", v)) => match model::forms::parse_size(v) {
                        Some(n) => self.bytes(s, "tmpfs", n, mem),
                        None => self.refuse(s, "tmpfs", format!("size {v:?} is not a size like 64m")),
                    },
                    Some(("mode", v)) if u32::from_str_radix(v, 8).is_ok_and(|x| x <= 0o7777) => {}
                    Some(("uid" | "gid", v)) if v.parse::<u32>().is_ok() => {}
                    None if ["rw", "ro", "noexec", "nosuid", "nodev"].contains(&o) => {}
                    _ => self.refuse(s, "tmpfs", format!("option {o:?}: tmpfs mounts are always noexec,nosuid,nodev; allowed: size, mode, uid, gid, ro, rw")),
                }
            }
        }
    }

    /// A bind mount: only of the deploy's own files (`./conf:/etc/app:ro`), read-only.
    fn bind(&mut self, s: &str, key: &str, source: &str, read_only: bool) {
        if source.contains("docker.sock") || source.contains("containerd.sock") {
            self.refuse(
                s,
                key,
                format!("mounting the engine socket {source:?} gives root on the host"),
            );
            return;
        }
        let relative = source.starts_with('.') && !source.starts_with("..");
        match normalize_path(source).filter(|_| relative) {
            None => self.refuse(s, key, format!("bind mount of host path {source:?} is not allowed; send the file with the deploy (`hostd ctl deploy … --include FILE`) and mount it as ./FILE:/target:ro, use configs/secrets, or a named volume")),
            Some(p) => {
                let dir = format!("{p}/");
                if !self.bundle.files.contains_key(&p) && !self.bundle.files.keys().any(|f| f.starts_with(&dir)) {
                    self.refuse(s, key, format!("{source:?} is not among the deploy's files: send it with `hostd ctl deploy … --include {p}`"));
                } else if !read_only {
                    self.refuse(s, key, format!("the deploy's files are mounted read-only: add :ro (or read_only: true) to {source:?}; write to a named volume"));
                }
            }
        }
    }
}

/// Why a container path may not receive a secret or config, if it may not.
fn bad_target(target: &str) -> Option<&'static str> {
    if !target.starts_with('/') {
        return Some("an absolute path in the container");
    }
    if target.split('/').any(|c| c == ".." || c == ".")
        || target.contains("//")
        || target.ends_with('/')
    {
        return Some("a plain absolute file path, without `.`, `..` or a trailing /");
    }
    for reserved in ["/proc", "/sys", "/dev", crate::host::TOKEN_MOUNT] {
        if target == reserved || target.starts_with(&format!("{reserved}/")) {
            return Some("a path the kernel or hostd owns in every container");
        }
    }
    None
}

/// Why a key outside the model is refused.
fn other_rule(key: &str) -> String {
    match key {
        "pid" | "uts" => "host namespaces are shared with other tenants; never allowed",
        "userns_mode" => "the user namespace is set by the tenant engine; userns_mode would undo the remapping",
        "cgroup_parent" => "containers stay inside the tenant's cgroup; cgroup_parent would escape its limits",
        "devices" | "device_cgroup_rules" | "gpus" => "host devices are not available to tenants",
        "ports" => "no host ports: public traffic reaches the tenant through sni-proxy; use expose",
        "oom_kill_disable" => "a container that cannot be OOM-killed can starve the host; the tenant limit must be able to kill",
        "build" => "images are not built on the shared host; push to a registry or load a tarball (`hostd ctl load`)",
        "env_file" => "env_file reads files from the host; send the variables with the deploy (`--env-file`) or put them in `environment`",
        "runtime" | "isolation" => "the container runtime is fixed by hostd",
        "storage_opt" | "blkio_config" => "storage options reference host devices; the tenant volume sets the disk quota",
        "external_links" => "links to containers outside this project are not allowed",
        "links" => "services reach each other by name on the project network; use the service name or networks.<net>.aliases",
        "extends" => "extends reads other files from the host; send one self-contained compose file",
        "credential_spec" => "not supported on Linux tenants",
        "mac_address" | "link_local_ips" => "addresses are allocated by hostd",
        "container_name" => "hostd names containers m8trx-<tenant>-<service>-1; refer to the service by its name",
        "scale" => "one container per service on a shared host; remove scale",
        "platform" => "images run on the host's platform; remove platform",
        "memswap_limit" | "memswap" => "tenants have no swap: the memory limit is the limit; remove memswap_limit",
        "cpu_quota" | "cpu_period" | "cpu_rt_runtime" | "cpu_rt_period" | "cpu_count" | "cpu_percent" => "use cpus (or deploy.resources.limits.cpus)",
        "cpuset" => "pinning CPUs of a shared host is not allowed; use cpus",
        "attach" | "develop" => "a compose CLI option with no meaning for a deploy by hostd; remove it",
        "annotations" => "OCI annotations configure the runtime, which hostd fixes",
        "post_start" | "pre_stop" => "lifecycle hooks are not supported yet; run the command from the entrypoint",
        "stop_timeout" => "use stop_grace_period",
        "label_file" => "reads files from the host; put the labels in `labels`",
        _ => "unsupported key; hostd accepts only compose keys it translates (see hostd/README.md)",
    }
    .to_owned()
}

/// The registry host an image reference names (`ghcr.io` of `ghcr.io/org/app:1`), lower-case
/// and without its port; `None` for Docker Hub references (`nginx`, `library/nginx:1`).
pub fn registry_host(image: &str) -> Option<String> {
    let first = image.split('/').next().unwrap_or("");
    if !image.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost")
    {
        return None;
    }
    let host = if let Some(rest) = first.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        first.rsplit_once(':').map_or(first, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                first
            }
        })
    };
    Some(host.to_ascii_lowercase())
}

/// Addresses a tenant engine (in the host's network namespace) must never pull from: the host
/// itself, link-local (the metadata service), private and unspecified ones.
pub fn forbidden_registry_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| forbidden_registry_ip(IpAddr::V4(v4)))
        }
    }
}

/// Why an image reference names a registry tenants may not pull from (by name or address; the
/// deploy also checks what a registry name resolves to before it pulls).
pub fn registry_refusal(image: &str) -> Option<String> {
    let host = registry_host(image)?;
    let bad = host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(forbidden_registry_ip);
    bad.then(|| format!("registry {host:?} is on the host itself or a private/link-local address, which tenant engines (in the host's network namespace) must not reach; push the image to a public registry or load it with `hostd ctl load`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m8trx_spec::tenant::ByteSize;

    fn limits() -> Limits {
        Limits {
            cpu: 1.0,
            memory: ByteSize(1 << 30),
            pids: 512,
            disk: ByteSize(1 << 30),
            io_read: m8trx_spec::tenant::DEFAULT_IO_READ,
            io_write: m8trx_spec::tenant::DEFAULT_IO_WRITE,
            egress: m8trx_spec::tenant::DEFAULT_EGRESS,
            ingress: m8trx_spec::tenant::DEFAULT_INGRESS,
        }
    }

    fn violations(text: &str) -> Vec<Violation> {
        match check_compose(&Bundle::of(text), &limits()) {
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
    deploy: { resources: { limits: { cpus: "0.5", memory: 256m, pids: 100 } } }
volumes:
  caddy-data: {}
networks:
  default: { driver: bridge }
"#;
        check_compose(&Bundle::of(ok), &limits()).unwrap();
    }

    #[test]
    fn open_files_above_what_the_host_can_grant_are_named() {
        let file = check_compose(
            &Bundle::of(
                "services:\n  es:\n    image: x\n    ulimits: { nofile: { soft: 1024, hard: 65536 } }\n  \
                 ok:\n    image: x\n    ulimits: { nofile: 4096 }\n",
            ),
            &limits(),
        )
        .unwrap();
        assert!(host_violations(&file, crate::engine::ENGINE_NOFILE).is_empty());
        let v = host_violations(&file, 20_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].service.as_deref(), v[0].key.as_str()),
            (Some("es"), "ulimits.nofile")
        );
        assert!(v[0].rule.contains("at most 20000"), "{}", v[0].rule);
    }

    #[test]
    fn reports_every_violation_with_service_key_and_rule() {
        let v = violations("services:\n  web:\n    image: x\n    privileged: true\n    pid: host\n    cap_add: ALL\n");
        let keys: Vec<&str> = v.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["cap_add", "privileged", "pid"], "{v:#?}");
        assert!(
            v[1].to_string().contains("service `web`, key `privileged`"),
            "{}",
            v[1]
        );
    }

    #[test]
    fn service_namespaces_name_a_service_of_the_file() {
        let v =
            violations("services:\n  web:\n    image: x\n    network_mode: service:tailscale\n");
        assert_eq!(v[0].key, "network_mode");
        assert!(v[0].rule.contains("names no other service"), "{}", v[0]);
        check_compose(&Bundle::of("services:\n  web:\n    image: x\n  side:\n    image: y\n    network_mode: service:web\n    ipc: service:web\n"), &limits()).unwrap();
    }

    #[test]
    fn unlimited_and_oversized_values_are_refused() {
        let v = violations("services:\n  web:\n    image: x\n    mem_limit: 0\n    pids_limit: -1\n    cpus: 4\n    tmpfs: ['/cache:size=500g,exec']\n");
        let keys: Vec<&str> = v.iter().map(|x| x.key.as_str()).collect();
        assert!(
            keys.contains(&"mem_limit") && keys.contains(&"pids_limit") && keys.contains(&"cpus"),
            "{v:#?}"
        );
        assert_eq!(
            keys.iter().filter(|k| **k == "tmpfs").count(),
            2,
            "size and exec: {v:#?}"
        );
    }

    #[test]
    fn healthchecks_are_bounded() {
        let v = violations("services:\n  web:\n    image: x\n    healthcheck: {test: [CMD, 'true'], interval: 1ms, timeout: 1ms, retries: 1000}\n");
        let keys: Vec<&str> = v.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "healthcheck.interval",
                "healthcheck.timeout",
                "healthcheck.retries"
            ]
        );
    }

    #[test]
    fn loopback_and_private_registries_are_refused() {
        for image in [
            "localhost:5000/x",
            "127.0.0.1:5000/x",
            "[::1]:5000/x",
            "169.254.169.254/x",
            "10.0.0.5/x:1",
            "0.0.0.0:80/x",
        ] {
            assert!(registry_refusal(image).is_some(), "{image}");
        }
        for image in [
            "nginx",
            "library/nginx:1",
            "ghcr.io/org/app:1",
            "registry.example.com:5000/x",
            "public.ecr.aws/a/b",
        ] {
            assert!(registry_refusal(image).is_none(), "{image}");
        }
    }

    #[test]
    fn not_yaml_is_a_syntax_error() {
        let l = limits();
        assert!(matches!(
            check_compose(&Bundle::of("services: [unclosed"), &l),
            Err(PolicyError::Syntax(_))
        ));
        assert!(matches!(
            check_compose(&Bundle::of("- a list"), &l),
            Err(PolicyError::Syntax(_))
        ));
    }
}
