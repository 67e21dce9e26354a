//! The tenant's dockerd: started (or adopted) and answering while the tenant is present and
//! awake, left alone while it is frozen; while it is stopped or asleep, its containers are
//! stopped (the running ones recorded first, so `start` and a wake bring back exactly those)
//! and then the engine. Down purges every trace of it.

use std::time::Duration;

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::{Desired, Power, Record};

/// Runs, stops and purges the engine.
pub struct Engine;

/// How long a starting engine may take to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping engine gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Starts the engine (or adopts the running one) and waits until it answers.
pub(crate) async fn start(host: &Host, rec: &Record) -> Result<(), StepError> {
    let cfg = host.engine_config(rec);
    let mut e = blocking(move || crate::engine::Engine::start(cfg)).await?;
    let ready = e.wait_ready(READY_TIMEOUT).await.map(|_| ());
    if let (Some(child), Ok(mut children)) = (e.into_child(), host.children.lock()) {
        children.push(child);
    }
    Ok(ready?)
}

/// Stops the containers (recording the running ones first) and then the engine.
async fn halt(run: &mut Run<'_>) -> Result<(), StepError> {
    let Some(engine) = crate::engine::Engine::adopt(run.host.engine_config(run.rec)) else {
        return Ok(());
    };
    if let Some(docker) = engine.connect().await {
        crate::containers::stop_all(run, &docker).await?;
    }
    run.say("stopping engine");
    engine.stop(STOP_GRACE).await?;
    run.host.reap_children();
    Ok(())
}

#[async_trait]
impl Step for Engine {
    fn kind(&self) -> StepKind {
        StepKind::Engine
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        match (run.rec.desired, run.rec.power) {
            (Desired::Stopped, _) | (_, Power::Asleep) => halt(run).await,
            (_, Power::Frozen) => {
                if crate::engine::Engine::adopt(run.host.engine_config(run.rec)).is_some() {
                    // Running, frozen: asking it anything would hang until the thaw.
                    return Ok(());
                }
                // The freeze did not survive (a host reboot): nothing runs any more, so
                // the tenant is asleep, with the containers the freeze recorded.
                run.say("frozen tenant found with no engine (host restarted?): asleep now");
                run.rec.power = Power::Asleep;
                run.rec.power_since = crate::record::now_secs();
                run.save()
            }
            (_, Power::Active) => start(run.host, run.rec).await,
        }
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        // A frozen engine cannot stop: thaw the tenant first.
        let cg = run.host.cgroups.tenant(run.rec.name());
        blocking(move || cg.ensure_frozen(false)).await?;
        let cfg = run.host.engine_config(run.rec);
        crate::engine::purge(&cfg, run.rec.wipe).await?;
        run.host.reap_children();
        Ok(())
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let running = crate::engine::Engine::adopt(host.engine_config(rec)).is_some();
        Ok(running == rec.engine_wanted())
    }
}

/// A client of the tenant's running engine, for the steps after this one
/// ([`Host::docker`], whose message says why there is none).
pub(crate) async fn docker(host: &Host, rec: &Record) -> Result<bollard::Docker, StepError> {
    host.docker(rec)
        .await
        .map_err(|e| StepError::Precondition(e.to_string()))
}
