//! The tenant's public routes in sni-proxy: each subdomain points at its ingress
//! container while the tenant serves and is awake (present, not quarantined, ingress
//! running); is marked asleep while the tenant is frozen or asleep (the proxy holds its
//! connections and asks hostd to wake it); points at nothing otherwise. Down removes them
//! first on destroy: the next tenant in the slot may get the same container address.

use async_trait::async_trait;

use super::{Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::proxy_routes::{ProxyAdmin, TenantRoute};
use crate::record::Record;

/// Points the tenant's subdomains at its ingress, or removes them.
pub struct Routes;

/// Where a sleeping tenant that was never routed "points": the proxy never connects to a
/// route marked asleep.
const NOWHERE: &str = "0.0.0.0";

/// Why the routes are computed, which decides how long the engine may take to answer.
#[derive(Clone, Copy)]
enum Purpose {
    /// To set them, under the tenant's lock: nothing freezes the engine meanwhile.
    Apply,
    /// To compare them (status, drift), without the lock: the idle policy may freeze the
    /// engine after the record was read, and a call to a frozen engine hangs until the thaw.
    Look,
}

/// The routes the tenant should have now: to its running ingress while it is awake, marked
/// asleep while it is frozen or asleep, none while it does not serve or has no ingress.
/// `None` when a look could not reach the engine in time (unknown, not "none").
async fn wanted(host: &Host, rec: &Record, purpose: Purpose) -> Option<Vec<TenantRoute>> {
    if !rec.serving() {
        return Some(Vec::new());
    }
    if !rec.awake() {
        return Some(routes_to(
            rec,
            rec.ingress_ip.as_deref().unwrap_or(NOWHERE),
            true,
        ));
    }
    let docker = match purpose {
        Purpose::Apply => super::engine::docker(host, rec).await.ok(),
        Purpose::Look => match host.docker_to_read(rec).await {
            Ok(d) => Some(d),
            Err(_) => return None,
        },
    };
    let Some(docker) = docker else {
        return Some(Vec::new());
    };
    let ingress = rec.spec.ingress();
    let project = rec.spec.name.compose_project();
    let Some(ip) = crate::containers::ingress_ip(&docker, &project, &ingress.service).await else {
        return Some(Vec::new());
    };
    Some(routes_to(rec, &ip, false))
}

/// The tenant's routes to an ingress container at `ip`, awake or asleep.
pub(crate) fn routes_to(rec: &Record, ip: &str, asleep: bool) -> Vec<TenantRoute> {
    let ingress = rec.spec.ingress();
    rec.spec
        .subdomains
        .iter()
        .map(|sni| TenantRoute {
            sni: sni.clone(),
            backend: format!("{ip}:{}", ingress.port),
            http_backend: ingress.http_port.map(|p| format!("{ip}:{p}")),
            terminate: rec.spec.tls_mode() == crate::spec::TlsMode::Terminate,
            tenant: rec.name().to_owned(),
            asleep,
        })
        .collect()
}

async fn remove_all(run: &mut Run<'_>, admin: &ProxyAdmin) -> Result<(), StepError> {
    for sni in run.rec.spec.subdomains.clone() {
        admin.remove(&sni).await?;
        run.say(format!("route {sni} removed"));
    }
    Ok(())
}

#[async_trait]
impl Step for Routes {
    fn kind(&self) -> StepKind {
        StepKind::Routes
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let Some(sock) = &run.host.cfg.proxy_admin else {
            return Ok(());
        };
        let admin = ProxyAdmin::new(sock);
        let routes = wanted(run.host, run.rec, Purpose::Apply)
            .await
            .unwrap_or_default();
        if routes.is_empty() {
            return remove_all(run, &admin).await;
        }
        for route in &routes {
            admin.set(route).await?;
            match route.asleep {
                true => run.say(format!("route {} asleep (held until a wake)", route.sni)),
                false => run.say(format!("route {} -> {}", route.sni, route.backend)),
            }
        }
        let ip = routes[0]
            .backend
            .rsplit_once(':')
            .map(|(ip, _)| ip.to_owned());
        if !routes[0].asleep && run.rec.ingress_ip != ip {
            run.rec.ingress_ip = ip;
            run.save()?;
        }
        Ok(())
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let Some(sock) = &run.host.cfg.proxy_admin else {
            return Ok(());
        };
        remove_all(run, &ProxyAdmin::new(sock)).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let Some(sock) = &host.cfg.proxy_admin else {
            return Ok(true);
        };
        let have = ProxyAdmin::new(sock).backends().await?;
        let Some(want) = wanted(host, rec, Purpose::Look).await else {
            return Ok(false);
        };
        if want.is_empty() {
            return Ok(!have
                .iter()
                .any(|(sni, _, _)| rec.spec.subdomains.contains(sni)));
        }
        Ok(want.iter().all(|r| {
            have.iter()
                .any(|(sni, b, asleep)| *sni == r.sni && *b == r.backend && *asleep == r.asleep)
        }))
    }
}
