//! What hostd does to a tenant's containers outside a compose deploy: stop them all
//! (remembering which ran), start the remembered ones again, revive the ones a reboot or
//! an engine crash killed, restart the project's for new secrets, find the ingress.

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RestartContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;

use crate::error::StepError;
use crate::steps::Run;

fn first_name(names: Option<Vec<String>>) -> Option<String> {
    names.and_then(|n| n.first().map(|n| n.trim_start_matches('/').to_owned()))
}

/// Names of the project's containers (all of them with `all`, else the running ones).
async fn project_containers(
    docker: &Docker,
    project: &str,
    service: Option<&str>,
    all: bool,
) -> Result<Vec<bollard::models::ContainerSummary>, StepError> {
    let filter = crate::compose::project_filter(project, service);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(all)
                .filters(&filter)
                .build(),
        ))
        .await
        .map_err(StepError::engine_api("listing containers"))
}

/// Stops every running container of the engine (dependents first), after recording their
/// names in the record (in creation order): a crash midway must not forget which ones
/// `start` has to bring back.
pub async fn stop_all(run: &mut Run<'_>, docker: &Docker) -> Result<(), StepError> {
    // Creation order is the deploy's start order: `resume` starts them again in it.
    let names = running(docker).await?;
    let before = run.rec.stopped_containers.len();
    for n in &names {
        if !run.rec.stopped_containers.contains(n) {
            run.rec.stopped_containers.push(n.clone());
        }
    }
    if run.rec.stopped_containers.len() != before {
        run.save()?;
    }
    // Dependents first (reverse start order), as compose stops a project.
    for n in names.iter().rev() {
        run.say(format!("stopping container {n}"));
        // The container's own stop grace period (compose's `stop_grace_period`, else the
        // engine's 10 s).
        let opts = StopContainerOptionsBuilder::default().build();
        docker
            .stop_container(n, Some(opts))
            .await
            .map_err(StepError::engine_api(format!("stopping container {n}")))?;
    }
    Ok(())
}

/// Starts the containers a stop recorded, then forgets the list.
pub async fn resume(run: &mut Run<'_>, docker: &Docker) -> Result<(), StepError> {
    if run.rec.stopped_containers.is_empty() {
        return Ok(());
    }
    for n in run.rec.stopped_containers.clone() {
        run.say(format!("starting container {n}"));
        match docker
            .start_container(&n, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => {}
            // Already running (a repeated start) or removed since: nothing to do.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(StepError::engine_api(format!("starting container {n}"))(e)),
        }
    }
    run.rec.stopped_containers.clear();
    run.save()
}

/// Starts the project's containers that died with the engine or the host (a reboot, an
/// engine killed past live-restore): every one exited or dead with a non-zero code. A
/// one-shot service that completed (exit 0) stays done; the ones a stop recorded are
/// [`resume`]'s.
pub async fn revive(run: &mut Run<'_>, docker: &Docker) -> Result<(), StepError> {
    let project = run.rec.spec.name.compose_project();
    for c in project_containers(docker, &project, None, true).await? {
        let Some(id) = c.id else { continue };
        let info = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(StepError::engine_api(format!("inspecting container {id}")))?;
        let name = info
            .name
            .as_deref()
            .unwrap_or(&id)
            .trim_start_matches('/')
            .to_owned();
        let state = info.state.unwrap_or_default();
        let stopped = matches!(
            state.status,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
        );
        if !stopped || state.exit_code == Some(0) || run.rec.stopped_containers.contains(&name) {
            continue;
        }
        run.say(format!(
            "starting container {name} (it exited with {})",
            state.exit_code.unwrap_or(-1)
        ));
        match docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => {
                return Err(StepError::engine_api(format!("starting container {name}"))(
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Restarts the project's running containers (so they read new secrets); returns their names.
pub async fn restart_running(run: &mut Run<'_>, docker: &Docker) -> Result<Vec<String>, StepError> {
    let project = run.rec.spec.name.compose_project();
    let mut restarted = Vec::new();
    for c in project_containers(docker, &project, None, false).await? {
        let Some(n) = first_name(c.names) else {
            continue;
        };
        run.say(format!("restarting {n}"));
        // With the container's own stop grace period, as a stop.
        docker
            .restart_container(&n, Some(RestartContainerOptionsBuilder::default().build()))
            .await
            .map_err(StepError::engine_api(format!("restarting {n}")))?;
        restarted.push(n);
    }
    Ok(restarted)
}

/// The address of the tenant's running ingress container, if there is one.
pub async fn ingress_ip(docker: &Docker, project: &str, service: &str) -> Option<String> {
    let list = project_containers(docker, project, Some(service), false)
        .await
        .ok()?;
    list.into_iter().find_map(|c| {
        c.network_settings?
            .networks?
            .into_values()
            .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
    })
}

/// Waits until something accepts TCP connections on `addr` (`ip:port`), for at most `within`:
/// a container that runs is not yet a server that answers.
pub async fn accepting(addr: &str, within: std::time::Duration) -> Result<(), String> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "nothing accepted a connection on {addr} within {}s",
                within.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the project's `service` container accepts connections on `port`, for at most
/// `within`; fails at once when that container stops running (it crashed on start).
pub async fn wait_serving(
    docker: &Docker,
    project: &str,
    service: &str,
    port: u16,
    within: std::time::Duration,
) -> Result<(), String> {
    let until = tokio::time::Instant::now() + within;
    let name = format!("{project}-{service}-1");
    loop {
        let info = docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| format!("inspecting {name}: {e}"))?;
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(format!(
                "{name} is not running (exit code {})",
                state.exit_code.unwrap_or(-1)
            ));
        }
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| {
                n.into_values()
                    .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
            });
        if let Some(ip) = ip {
            let attempt = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(format!("{ip}:{port}")),
            )
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "{name} accepted no connection on port {port} within {}s",
                within.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Names of the running containers, in creation order (the deploy's start order).
pub async fn running(docker: &Docker) -> Result<Vec<String>, StepError> {
    let mut running = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().build()))
        .await
        .map_err(StepError::engine_api("listing containers"))?;
    running.sort_by_key(|c| c.created);
    Ok(running
        .into_iter()
        .filter_map(|c| first_name(c.names))
        .collect())
}

/// Names of the containers of the project, running or not.
pub async fn names(docker: &Docker, project: &str) -> Result<Vec<String>, StepError> {
    Ok(project_containers(docker, project, None, true)
        .await?
        .into_iter()
        .filter_map(|c| first_name(c.names))
        .collect())
}
