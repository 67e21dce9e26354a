//! The tenant's containers. A deploy writes its bundle on the tenant volume and records it
//! in the tenant's record (revision, digest, time) before running it, so this step — run on every reconcile — brings the
//! project back after a host reboot or a lost engine data root: containers a crash killed
//! are started again, the ones a stop recorded are resumed, and when a service of the
//! recorded file has no container at all the whole file is deployed again. A quarantined
//! tenant is left exactly as it is, for forensics.

use async_trait::async_trait;
use bollard::Docker;

use crate::compose::{Bundle, ComposeFile};

use super::{Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::{now_secs, Record};

/// Brings the project to the recorded deployment.
pub struct Deploy;

/// The file a bundle deploys as on this host: read with its variables and checked by the
/// policy within the tenant's limits, with the tailscale sidecar of an agent tenant added.
/// The error is the refusal's message (every violation).
pub fn prepared(host: &Host, rec: &Record, bundle: &Bundle) -> Result<ComposeFile, String> {
    let mut file =
        crate::policy::check_compose(bundle, &rec.spec.limits).map_err(|e| e.to_string())?;
    let beyond = crate::policy::host_violations(&file, host.nofile_ceiling);
    if !beyond.is_empty() {
        return Err(crate::policy::PolicyError::Refused(beyond).to_string());
    }
    if rec.spec.template == crate::spec::Template::Agent {
        if let Some(ts) = &host.tailscale {
            crate::tailscale::add_sidecar(&mut file, ts, rec.name()).map_err(|e| e.to_string())?;
        }
    }
    Ok(file)
}

/// The recorded deployment as a bundle, read back from the tenant volume and checked to be
/// the one recorded.
fn recorded(host: &Host, rec: &Record) -> Result<Option<Bundle>, StepError> {
    let Some(d) = rec.deployment.as_ref() else {
        return Ok(None);
    };
    let unreadable = |e: String| StepError::RecordedComposeRefused {
        revision: d.revision,
        message: format!("its bundle on the tenant volume: {e}; deploy it again"),
    };
    let dir = d.bundle.as_ref().map(|b| host.bundles_dir(rec).join(b));
    if d.compose.is_empty() {
        let dir = dir.ok_or_else(|| unreadable("none recorded".into()))?;
        return crate::compose::files::read_tree(&dir, d.files.keys())
            .map(Some)
            .map_err(unreadable);
    }
    // A record from before bundles moved onto the volume: its files were there already.
    let files = match dir {
        Some(dir) if !d.files.is_empty() => {
            crate::compose::files::read_files(&dir, d.files.keys()).map_err(unreadable)?
        }
        _ => Default::default(),
    };
    Ok(Some(Bundle {
        compose: d.compose.clone(),
        env: d.env.clone(),
        files,
    }))
}

/// Writes the bundle — compose file, variables, files and every copied file mount of `file`
/// — on the tenant volume (once per bundle) and returns its directory.
pub async fn store(
    host: &Host,
    rec: &Record,
    file: &ComposeFile,
    bundle: &Bundle,
) -> Result<std::path::PathBuf, StepError> {
    let (base, _) = Host::remapped_root(rec);
    let (bundles, bundle, file) = (host.bundles_dir(rec), bundle.clone(), file.clone());
    tokio::task::spawn_blocking(move || {
        crate::compose::files::write_tree(&bundles, &bundle, &file, base)
    })
    .await
    .map_err(|e| StepError::Precondition(format!("writing the deploy's bundle: {e}")))?
    .map_err(|e| {
        StepError::Precondition(format!(
            "writing the deploy's bundle on the tenant volume: {e}"
        ))
    })
}

/// Writes the bundle (see [`store`]) and records its directory on the current revision; a
/// record that still held the compose file itself (written before bundles moved onto the
/// volume) drops it now that the volume has it.
async fn write_files(
    run: &mut Run<'_>,
    file: &ComposeFile,
    bundle: &Bundle,
) -> Result<std::path::PathBuf, StepError> {
    let dir = store(run.host, run.rec, file, bundle).await?;
    if let Some(dep) = run.rec.deployment.as_mut() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        if dep.bundle != name || !dep.compose.is_empty() || !dep.env.is_empty() {
            dep.bundle = name;
            dep.compose.clear();
            dep.env.clear();
            run.save()?;
        }
    }
    Ok(dir)
}

/// Deploys `file` (read from `bundle`) into the tenant's engine and records the outcome on
/// the current revision; a success removes the files of earlier bundles.
pub async fn deploy_compose(
    run: &mut Run<'_>,
    docker: &Docker,
    file: &ComposeFile,
    bundle: &Bundle,
) -> Result<Vec<String>, StepError> {
    let mut hardening = run.host.hardening(run.rec)?;
    let tree = write_files(run, file, bundle).await?;
    hardening.files.tree = Some(tree.clone());
    let vars = bundle.vars();
    let handover = RouteHandover {
        host: run.host,
        rec: run.rec.clone(),
    };
    let ingress = run.rec.spec.ingress().service;
    let project =
        crate::compose::Project::new(docker, run.rec.spec.name.compose_project(), hardening)
            .with_handover(&ingress, &handover);
    let name = run.rec.name().to_owned();
    let result = {
        let progress = &mut *run.progress;
        let mut say = |l: String| progress(format!("{name}: {l}"));
        project.deploy(file, &vars, &mut say).await
    };
    if result.is_ok() {
        match crate::compose::files::remove_others(&run.host.bundles_dir(run.rec), &tree) {
            Ok(old) if !old.is_empty() => run.say(format!(
                "removed the files of {} earlier deploy(s)",
                old.len()
            )),
            Ok(_) => {}
            Err(e) => run.say(format!(
                "could not remove the files of earlier deploys: {e}"
            )),
        }
    }
    if let Some(dep) = run.rec.deployment.as_mut() {
        match &result {
            Ok(_) => {
                dep.deployed_at = Some(now_secs());
                dep.error = None;
            }
            Err(e) => dep.error = Some(e.to_string()),
        }
        run.save()?;
        // The volume carries the deployment too, for a host that takes the tenant over.
        super::volume::record(run.host, run.rec).await?;
    }
    Ok(result?)
}

/// How long the old ingress keeps serving after the routes point at its replacement: a
/// connection sni-proxy routed just before the switch is still being connected.
pub const HANDOVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a new ingress container may take to accept connections on its port.
pub const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The start-first handover of the tenant's ingress: once the new container accepts
/// connections on the ingress port, the routes point at it; the old one then drains.
struct RouteHandover<'a> {
    host: &'a Host,
    rec: Record,
}

#[async_trait]
impl crate::compose::Handover for RouteHandover<'_> {
    async fn ready(&self, service: &str, ip: &str) -> Result<(), String> {
        let ingress = self.rec.spec.ingress();
        if service != ingress.service || !self.rec.serving() {
            return Ok(());
        }
        let addr = format!("{ip}:{}", ingress.port);
        crate::containers::accepting(&addr, HANDOVER_WAIT)
            .await
            .map_err(|e| format!("the new container: {e}"))?;
        if let Some(sock) = &self.host.cfg.proxy_admin {
            let admin = crate::proxy_routes::ProxyAdmin::new(sock);
            for route in super::routes::routes_to(&self.rec, ip, false) {
                admin
                    .set(&route)
                    .await
                    .map_err(|e| format!("pointing {} at the new container: {e}", route.sni))?;
            }
        }
        tokio::time::sleep(HANDOVER_DRAIN).await;
        Ok(())
    }
}

/// Services of the recorded deployment that start (their profile is active) but have no
/// container in the engine.
async fn missing(
    host: &Host,
    rec: &Record,
    docker: &Docker,
) -> Result<Option<(ComposeFile, Bundle, Vec<String>)>, StepError> {
    let (Some(bundle), Some(dep)) = (recorded(host, rec)?, rec.deployment.as_ref()) else {
        return Ok(None);
    };
    let file =
        prepared(host, rec, &bundle).map_err(|message| StepError::RecordedComposeRefused {
            revision: dep.revision,
            message,
        })?;
    let project = rec.spec.name.compose_project();
    let have = crate::containers::names(docker, &project).await?;
    let active =
        crate::compose::active_services(&file, &crate::compose::active_profiles(&bundle.vars()));
    let lost: Vec<String> = active
        .into_iter()
        .filter(|s| !have.contains(&format!("{project}-{s}-1")))
        .collect();
    Ok(Some((file, bundle, lost)))
}

#[async_trait]
impl Step for Deploy {
    fn kind(&self) -> StepKind {
        StepKind::Deploy
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        if !run.rec.awake() {
            return Ok(());
        }
        let docker = super::engine::docker(run.host, run.rec).await?;
        crate::containers::revive(run, &docker).await?;
        crate::containers::resume(run, &docker).await?;
        if let Some((file, bundle, lost)) = missing(run.host, run.rec, &docker).await? {
            if !lost.is_empty() {
                let revision = run.rec.deployment.as_ref().map_or(0, |d| d.revision);
                run.say(format!(
                    "redeploying revision {revision}: no container for {}",
                    lost.join(", ")
                ));
                deploy_compose(run, &docker, &file, &bundle).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, _run: &mut Run<'_>) -> Result<(), StepError> {
        // The engine's purge (the next step down) removes the containers with their engine.
        Ok(())
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        if !rec.awake() || rec.deployment.is_none() {
            return Ok(true);
        }
        let Ok(docker) = host.docker_to_read(rec).await else {
            return Ok(false);
        };
        Ok(missing(host, rec, &docker)
            .await?
            .is_none_or(|(_, _, lost)| lost.is_empty()))
    }
}
