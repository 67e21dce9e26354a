//! The start order of a project: which services start (profiles), what each waits for
//! (`depends_on` with its conditions), and an order where every dependency comes first.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::model::ComposeFile;
use super::{invalid, ComposeError};

/// A dependency and the condition a service waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dep {
    pub(super) service: String,
    pub(super) condition: String,
}

/// The variable naming the active profiles, as in docker compose (comma-separated).
pub const PROFILES_VAR: &str = "COMPOSE_PROFILES";

/// Profiles the deploy activates: `COMPOSE_PROFILES` of the tenant's variables.
pub fn active_profiles(vars: &std::collections::HashMap<String, String>) -> BTreeSet<String> {
    vars.get(PROFILES_VAR)
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The services that start: those without `profiles`, and those with an active profile
/// (`*` activates all), as docker compose decides.
pub fn active_services(file: &ComposeFile, profiles: &BTreeSet<String>) -> BTreeSet<String> {
    file.services
        .iter()
        .filter(|(_, s)| match &s.profiles {
            None => true,
            Some(p) if p.is_empty() => true,
            Some(p) => profiles.contains("*") || p.iter().any(|x| profiles.contains(x)),
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// What each active service waits for. A required dependency that does not start (it is in
/// an inactive profile) is an error naming the profile to activate; an optional one
/// (`required: false`) that does not start is skipped.
pub(super) fn dependencies(
    file: &ComposeFile,
    active: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<Dep>>, ComposeError> {
    let mut out = BTreeMap::new();
    for name in active {
        let mut deps = Vec::new();
        let entries = file.services[name]
            .depends_on
            .as_ref()
            .map(|d| d.entries())
            .unwrap_or_default();
        // Joining another service's namespaces or volumes needs its container first, as
        // docker compose orders them: an implicit `service_started` dependency.
        let svc = &file.services[name];
        let implicit = [&svc.network_mode, &svc.ipc, &svc.pid]
            .into_iter()
            .flatten()
            .filter_map(|m| m.strip_prefix("service:"))
            .chain(
                svc.volumes_from
                    .iter()
                    .flatten()
                    .map(|v| v.split(':').next().unwrap_or(v)),
            )
            .map(|s| (s.to_owned(), "service_started".to_owned(), true));
        let mut seen = BTreeSet::new();
        let entries: Vec<_> = entries
            .into_iter()
            .chain(implicit)
            .filter(|(s, _, _)| seen.insert(s.clone()))
            .collect();
        for (service, condition, required) in entries {
            if active.contains(&service) {
                deps.push(Dep { service, condition });
            } else if required {
                let profiles = file
                    .services
                    .get(&service)
                    .and_then(|s| s.profiles.clone())
                    .unwrap_or_default();
                return Err(invalid(
                    name,
                    format!(
                        "depends on `{service}`, which does not start (profiles {profiles:?} are not active): add one to {PROFILES_VAR} in the env file, or mark the dependency `required: false`"
                    ),
                ));
            }
        }
        out.insert(name.clone(), deps);
    }
    Ok(out)
}

/// Services in an order where every dependency comes first; names a cycle or an unknown service.
pub(super) fn start_order(
    services: &BTreeMap<String, Vec<Dep>>,
) -> Result<Vec<String>, ComposeError> {
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

/// Whether another service of the file joins `service`'s namespaces (`network_mode`, `ipc`,
/// `pid` as `service:<it>`) or mounts its volumes (`volumes_from`): such a service cannot be
/// replaced start-first, since its dependents hold on to the old container.
pub fn is_shared(file: &ComposeFile, service: &str) -> bool {
    let target = format!("service:{service}");
    file.services.iter().any(|(name, s)| {
        name != service
            && ([&s.network_mode, &s.ipc, &s.pid]
                .into_iter()
                .any(|m| m.as_deref() == Some(target.as_str()))
                || s.volumes_from
                    .iter()
                    .flatten()
                    .any(|v| v.split(':').next() == Some(service)))
    })
}
