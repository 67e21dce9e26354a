//! A service of the typed file as the container hostd creates for it: every field of
//! [`Service`] is translated here (the struct is destructured without `..`, so a new field
//! does not compile until it is), with hostd's hardening forced on top whatever the file says.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, HostConfigLogConfig, Mount,
    MountType, MountVolumeOptions, NetworkingConfig, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::model::forms::{shell_words, Command, Pairs};
use super::model::{ComposeFile, Deploy, Healthcheck, Service, ServiceVolume, Ulimit, VolumeMount};
use super::{invalid, labels, ComposeError, Hardening};

/// Options every tmpfs gets, whatever the file says.
pub const TMPFS_FORCED: &str = "noexec,nosuid,nodev";
/// A tmpfs's size when the file names none.
pub const TMPFS_DEFAULT_SIZE: &str = "64m";

/// What a project's containers will look like, independent of any engine (testable alone).
pub struct Plan {
    pub(super) name: String,
    pub(super) hardening: Hardening,
}

/// Compose's value for a key of `environment` written without one: the tenant's variable of
/// that name, or unset (left out) when there is none.
fn env_value(k: &str, v: &Option<String>, vars: &HashMap<String, String>) -> Option<String> {
    v.clone().or_else(|| vars.get(k).cloned())
}

fn command(c: &Option<Command>) -> Option<Vec<String>> {
    match c.as_ref()? {
        Command::Shell(s) => Some(shell_words(s)),
        Command::Exec(v) => Some(v.clone()),
    }
}

fn pairs(p: &Option<Pairs>) -> Vec<(String, String)> {
    p.iter()
        .flat_map(|p| p.0.iter())
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect()
}

fn nanos(d: Option<super::model::forms::Dur>) -> Option<i64> {
    d.map(|d| i64::try_from(d.0.as_nanos()).unwrap_or(i64::MAX))
}

/// The healthcheck as the engine takes it.
fn healthcheck(h: &Option<Healthcheck>) -> Option<HealthConfig> {
    let Healthcheck {
        test,
        interval,
        timeout,
        retries,
        start_period,
        start_interval,
        disable,
    } = h.as_ref()?;
    if *disable == Some(true) {
        return Some(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
    }
    let test = match test {
        Some(Command::Shell(s)) => Some(vec!["CMD-SHELL".into(), s.clone()]),
        Some(Command::Exec(v)) => Some(v.clone()),
        None => None,
    };
    Some(HealthConfig {
        test,
        interval: nanos(*interval),
        timeout: nanos(*timeout),
        start_period: nanos(*start_period),
        start_interval: nanos(*start_interval),
        retries: *retries,
    })
}

impl Plan {
    /// A plan for the project `name` (see `CustomerName::compose_project`).
    pub fn new(name: impl Into<String>, hardening: Hardening) -> Self {
        Self {
            name: name.into(),
            hardening,
        }
    }

    /// A read-only bind of one of the deploy's files or directories (the policy admits
    /// only these, and only read-only).
    fn bundle_bind(
        &self,
        service: &str,
        source: &str,
        target: &str,
    ) -> Result<Mount, ComposeError> {
        let host = self
            .hardening
            .files
            .bundle_path(source)
            .map_err(|e| invalid(service, e))?;
        Ok(Mount {
            typ: Some(MountType::BIND),
            source: Some(host.display().to_string()),
            target: Some(target.to_owned()),
            read_only: Some(true),
            ..Default::default()
        })
    }

    pub(super) fn labels(&self, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut l = self.hardening.labels.clone();
        l.insert(labels::PROJECT.into(), self.name.clone());
        for (k, v) in extra {
            l.insert((*k).into(), v.clone());
        }
        l
    }

    /// The engine request for `service`; `nets` are the project's networks, `vars` the tenant's
    /// variables (for `environment` keys written without a value).
    pub(super) fn container_body(
        &self,
        file: &ComposeFile,
        service: &str,
        nets: &BTreeMap<String, bool>,
        vars: &HashMap<String, String>,
    ) -> Result<ContainerCreateBody, ComposeError> {
        let svc = file
            .services
            .get(service)
            .ok_or_else(|| invalid(service, "not a service of the file"))?;
        let h = &self.hardening;
        let Service {
            image,
            command: cmd,
            entrypoint,
            environment,
            working_dir,
            user,
            restart,
            depends_on: _, // the start order (super::deploy)
            healthcheck: hc,
            expose,
            stop_signal,
            stop_grace_period,
            init,
            tty,
            stdin_open,
            hostname,
            domainname,
            extra_hosts,
            dns,
            dns_search,
            dns_opt,
            mem_limit,
            mem_reservation,
            cpus,
            cpu_shares,
            pids_limit,
            shm_size,
            deploy,
            profiles: _,    // which services start (super::deploy)
            pull_policy: _, // how the image is fetched (super::deploy)
            group_add,
            cap_add,
            cap_drop,
            tmpfs,
            volumes,
            networks,
            network_mode,
            ipc,
            pid,
            sysctls,
            ulimits,
            logging,
            oom_score_adj,
            labels: file_labels,
            read_only: _,    // always true (the policy refuses false)
            privileged: _,   // always false (the policy refuses true)
            security_opt: _, // hostd's profiles; the policy allows only no-new-privileges
            cgroup: _,       // always private (the policy refuses anything else)
            volumes_from,
            secrets: _, // each a read-only bind (super::files::mounts, below)
            configs: _, // likewise
            other: _,   // refused by the policy
        } = svc;
        let image = image.clone().ok_or_else(|| invalid(service, "no image"))?;

        // hostd's variables (the broker's) replace any the file sets under the same name.
        let forced: Vec<&str> = h.env.iter().filter_map(|e| e.split('=').next()).collect();
        let mut env: Vec<String> = environment
            .iter()
            .flat_map(|p| p.0.iter())
            .filter(|(k, _)| !forced.contains(&k.as_str()))
            .filter_map(|(k, v)| env_value(k, v, vars).map(|v| format!("{k}={v}")))
            .collect();
        env.extend(h.env.iter().cloned());

        let Deploy {
            resources,
            replicas: _,      // always 1 (the policy refuses anything else)
            update_config: _, // how a changed container is replaced (super::Project::deploy)
            other: _,
        } = deploy.clone().unwrap_or_default();
        let (limits, reservations) = resources
            .map(|r| {
                (
                    r.limits.unwrap_or_default(),
                    r.reservations.unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        // The lower of the two ways to write a limit, bounded by the tenant's aggregate.
        let memory = [mem_limit.map(|b| b.0), limits.memory.map(|b| b.0)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(h.default_memory)
            .min(h.max_memory);
        let pids = [*pids_limit, limits.pids]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(h.pids_limit)
            .min(h.pids_limit);
        let cpus = [cpus.map(|c| c.0), limits.cpus.map(|c| c.0)]
            .into_iter()
            .flatten()
            .reduce(f64::min);
        let memory_reservation = [
            mem_reservation.map(|b| b.0),
            reservations.memory.map(|b| b.0),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|r| r.min(memory));
        // A CPU reservation is a weight among the tenant's containers (1024 per CPU), which is
        // what guarantees a share under contention inside the tenant's own CPU limit.
        let cpu_shares = cpu_shares.or(reservations
            .cpus
            .map(|c| ((c.0 * 1024.0) as i64).clamp(2, 262_144)));

        let mut tmpfs_mounts: HashMap<String, String> = HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,{TMPFS_FORCED},size={TMPFS_DEFAULT_SIZE}"),
        )]);
        for t in tmpfs.iter().flat_map(|l| l.0.iter()) {
            let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
            tmpfs_mounts.insert(path.to_owned(), tmpfs_options(opts, None, None));
        }

        let mut mounts = Vec::new();
        for (i, v) in volumes.iter().flatten().enumerate() {
            match v {
                ServiceVolume::Short(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [t] => ("", *t, ""),
                        [s, t] => (*s, *t, ""),
                        [s, t, m] => (*s, *t, *m),
                        _ => {
                            return Err(invalid(
                                service,
                                format!("volumes[{i}] {s:?} is not name:/path[:ro]"),
                            ))
                        }
                    };
                    let modes: Vec<&str> = mode.split(',').collect();
                    if source.starts_with('.') {
                        mounts.push(self.bundle_bind(service, source, target)?);
                        continue;
                    }
                    mounts.push(Mount {
                        typ: Some(MountType::VOLUME),
                        source: (!source.is_empty()).then(|| format!("{}_{source}", self.name)),
                        target: Some(target.to_owned()),
                        read_only: Some(modes.contains(&"ro")),
                        volume_options: modes.contains(&"nocopy").then(|| MountVolumeOptions {
                            no_copy: Some(true),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
                ServiceVolume::Long(m) => {
                    let VolumeMount {
                        kind,
                        source,
                        target,
                        read_only,
                        volume,
                        tmpfs,
                        other: _,
                    } = m;
                    let target = target
                        .clone()
                        .ok_or_else(|| invalid(service, format!("volumes[{i}] has no target")))?;
                    if kind.as_deref() == Some("tmpfs") {
                        let t = tmpfs.clone().unwrap_or_default();
                        let mut opts = tmpfs_options(
                            "",
                            t.size.map(|b| b.0),
                            t.mode.and_then(|m| m.mode).map(|m| format!("{m:o}")),
                        );
                        if read_only == &Some(true) {
                            opts = opts.replacen("rw,", "ro,", 1);
                        }
                        tmpfs_mounts.insert(target, opts);
                        continue;
                    }
                    if kind.as_deref() == Some("bind") {
                        let source = source.as_deref().unwrap_or("");
                        mounts.push(self.bundle_bind(service, source, &target)?);
                        continue;
                    }
                    let vo = volume.clone().unwrap_or_default();
                    mounts.push(Mount {
                        typ: Some(MountType::VOLUME),
                        source: source
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .map(|s| format!("{}_{s}", self.name)),
                        target: Some(target),
                        read_only: Some(read_only.unwrap_or(false)),
                        volume_options: (vo.nocopy.is_some() || vo.subpath.is_some()).then(|| {
                            MountVolumeOptions {
                                no_copy: vo.nocopy,
                                subpath: vo.subpath.clone(),
                                ..Default::default()
                            }
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        for (n, m) in super::files::mounts(file, svc, vars).iter().enumerate() {
            let host = h
                .files
                .host_path(service, n, m)
                .map_err(|e| invalid(service, e))?;
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(host.display().to_string()),
                target: Some(m.target.clone()),
                read_only: Some(true),
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

        let service_nets: Vec<(String, Vec<String>)> = match networks {
            Some(n) => n.entries(),
            None => vec![("default".into(), Vec::new())],
        };
        for (n, _) in &service_nets {
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
                let first = format!(
                    "{}_{}",
                    self.name,
                    service_nets.first().map_or("default", |(n, _)| n.as_str())
                );
                let endpoints = service_nets
                    .iter()
                    .map(|(n, aliases)| {
                        let mut all = vec![service.to_owned()];
                        all.extend(aliases.iter().cloned());
                        let ep = EndpointSettings {
                            aliases: Some(all),
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
        let sibling = |m: &Option<String>| -> Option<String> {
            let m = m.as_deref()?;
            Some(match m.strip_prefix("service:") {
                Some(x) => format!("container:{}-{x}-1", self.name),
                None => m.to_owned(),
            })
        };

        // cap_drop ALL is forced; what the file drops is also taken out of what it adds.
        let dropped: Vec<String> = cap_drop
            .iter()
            .flatten()
            .map(|c| c.trim().to_ascii_uppercase())
            .collect();
        let mut cap_add: Vec<String> = cap_add
            .iter()
            .flatten()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !dropped.contains(c) && !dropped.iter().any(|d| d == "ALL"))
            .collect();
        cap_add.sort();
        cap_add.dedup();
        let mut security_opt = h.security_opt.clone();
        if !security_opt
            .iter()
            .any(|s| s.starts_with("no-new-privileges"))
        {
            security_opt.push("no-new-privileges:true".into());
        }
        let restart = restart.as_deref().map(|r| {
            let (name, count) = match r {
                "always" => (RestartPolicyNameEnum::ALWAYS, None),
                "unless-stopped" => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
                r if r.starts_with("on-failure") => (
                    RestartPolicyNameEnum::ON_FAILURE,
                    r.strip_prefix("on-failure:").and_then(|n| n.parse().ok()),
                ),
                _ => (RestartPolicyNameEnum::NO, None),
            };
            RestartPolicy {
                name: Some(name),
                maximum_retry_count: count,
            }
        });
        let sysctls: HashMap<String, String> = pairs(sysctls).into_iter().collect();
        let ulimits = ulimits.as_ref().and_then(|u| u.get("nofile")).map(|n| {
            let (soft, hard) = match *n {
                Ulimit::Single(v) => (v, v),
                Ulimit::Pair(p) => (p.soft, p.hard),
            };
            vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(soft),
                hard: Some(hard),
            }]
        });
        let log_config = logging.as_ref().map(|l| HostConfigLogConfig {
            typ: Some(l.driver.clone().unwrap_or_else(|| "json-file".into())),
            config: l.options.as_ref().map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect::<HashMap<_, _>>()
            }),
        });
        let list = |l: &Option<super::model::forms::List>| {
            l.as_ref().map(|l| l.0.clone()).filter(|v| !v.is_empty())
        };
        let host_config = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!cap_add.is_empty()).then_some(cap_add),
            security_opt: Some(security_opt),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs_mounts),
            memory: Some(memory),
            memory_swap: Some(memory),
            memory_reservation,
            pids_limit: Some(pids),
            nano_cpus: cpus.map(|c| (c * 1e9) as i64),
            cpu_shares,
            shm_size: shm_size.map(|b| b.0.min(memory)),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: Some(mode),
            ipc_mode: sibling(ipc),
            pid_mode: sibling(pid),
            restart_policy: restart,
            sysctls: (!sysctls.is_empty()).then_some(sysctls),
            ulimits,
            init: *init,
            extra_hosts: extra_hosts
                .as_ref()
                .map(|e| e.0.iter().map(|(h, ip)| format!("{h}:{ip}")).collect()),
            dns: list(dns),
            dns_search: list(dns_search),
            dns_options: dns_opt.clone(),
            group_add: group_add
                .as_ref()
                .map(|g| g.iter().map(|t| t.0.clone()).collect()),
            oom_score_adj: *oom_score_adj,
            log_config,
            volumes_from: volumes_from.as_ref().map(|v| {
                v.iter()
                    .map(|f| {
                        let (s, mode) = f.split_once(':').unwrap_or((f.as_str(), "rw"));
                        format!("{}-{s}-1:{mode}", self.name)
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let mut lbl = self.labels(&[
            (labels::SERVICE, service.to_owned()),
            (labels::NUMBER, "1".into()),
            (labels::ONEOFF, "False".into()),
        ]);
        for (k, v) in pairs(file_labels) {
            lbl.entry(k).or_insert(v);
        }
        let exposed: Vec<String> = expose
            .iter()
            .flatten()
            .map(|p| {
                if p.0.contains('/') {
                    p.0.clone()
                } else {
                    format!("{}/tcp", p.0)
                }
            })
            .collect();
        Ok(ContainerCreateBody {
            image: Some(image),
            cmd: command(cmd),
            entrypoint: command(entrypoint),
            env: Some(env),
            working_dir: working_dir.clone(),
            user: user.as_ref().map(|u| u.0.clone()),
            hostname: hostname.clone(),
            domainname: domainname.clone(),
            stop_signal: stop_signal.clone(),
            stop_timeout: stop_grace_period.map(|d| d.0.as_secs().max(1) as i64),
            tty: *tty,
            open_stdin: *stdin_open,
            labels: Some(lbl),
            healthcheck: healthcheck(hc),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            networking_config: networking,
            ..Default::default()
        })
    }
}

/// A tmpfs's options: the file's `size`, `mode`, `uid`, `gid` and `ro`, always
/// `noexec,nosuid,nodev` and a size (64m when none is given).
fn tmpfs_options(opts: &str, size: Option<i64>, mode: Option<String>) -> String {
    let mut ro = false;
    let mut out: Vec<String> = Vec::new();
    let mut has_size = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", _)) => {
                has_size = true;
                out.push(o.to_owned());
            }
            Some(("mode" | "uid" | "gid", _)) => out.push(o.to_owned()),
            None if o == "ro" => ro = true,
            _ => {} // rw, noexec, nosuid, nodev: implied below
        }
    }
    if let Some(n) = size {
        has_size = true;
        out.push(format!("size={n}"));
    }
    if let Some(m) = mode {
        out.push(format!("mode={m}"));
    }
    if !has_size {
        out.push(format!("size={TMPFS_DEFAULT_SIZE}"));
    }
    format!(
        "{},{TMPFS_FORCED},{}",
        if ro { "ro" } else { "rw" },
        out.join(",")
    )
}
