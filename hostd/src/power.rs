//! Sleep and wake. An idle tenant is first frozen — its whole cgroup (engine and containers)
//! stops being scheduled while every process and byte of memory stays, so a thaw resumes it
//! in milliseconds — and later put to sleep: containers and engine stopped, their memory
//! released, volume, secrets, broker registration and state kept. It wakes on the first
//! connection sni-proxy holds for it, on a `wake_at` schedule, on `hostd ctl wake`, and
//! before any change that needs its engine (a deploy).
//!
//! Each transition records where the tenant is going before it acts, and every step it
//! runs is one of the idempotent provisioning steps, so `kill -9` at any point is resumed
//! by reconcile in the recorded direction. A wake that fails puts the tenant back to sleep
//! (never half up) and records why.

use std::time::Duration;

use crate::error::HostError;
use crate::executor::Progress;
use crate::host::Host;
use crate::record::{now_secs, Desired, Power, Record};
use crate::steps::StepKind;

/// How long a waking tenant's ingress may take to accept connections once its containers
/// run (held connections wait for it; sni-proxy gives up on them sooner).
pub const WAKE_READY: Duration = Duration::from_secs(30);

/// The word for a power state, as `hostd ctl` prints it.
pub fn word(p: Power) -> &'static str {
    match p {
        Power::Active => "active",
        Power::Frozen => "frozen",
        Power::Asleep => "asleep",
    }
}

/// How a freeze or sleep the idle policy asked for ended.
#[derive(Debug)]
pub enum Idled {
    /// Frozen or asleep as asked (or it already was).
    Done(Record),
    /// A connection was open once its routes held new ones: left as it was.
    Busy(Record),
}

impl Idled {
    fn record(self) -> Record {
        match self {
            Idled::Done(r) | Idled::Busy(r) => r,
        }
    }
}

fn must_serve(rec: &Record, what: &str) -> Result<(), HostError> {
    let name = rec.name();
    match (rec.desired, rec.quarantined) {
        (Desired::Stopped, _) => Err(HostError::conflict(
            name,
            format!("is stopped, not idle; nothing to {what} (`hostd ctl start {name}`)"),
        )),
        (_, true) => Err(HostError::conflict(
            name,
            format!("is quarantined; it is kept as it is, nothing to {what}"),
        )),
        _ => Ok(()),
    }
}

impl Host {
    /// Records where the tenant is going, before any step acts.
    fn set_power(&self, rec: &mut Record, p: Power) -> Result<(), HostError> {
        rec.power = p;
        rec.power_since = now_secs();
        rec.power_settled = false;
        if p == Power::Active {
            rec.wake_error = None;
        }
        Ok(self.save(rec)?)
    }

    /// Records that every step of the power change is done.
    pub(crate) fn settle_power(&self, rec: &mut Record) -> Result<(), HostError> {
        if !rec.power_settled {
            rec.power_settled = true;
            self.save(rec)?;
        }
        Ok(())
    }

    /// Freezes a tenant now (`hostd ctl freeze`): its routes hold new connections (and ask
    /// for a wake), then its whole cgroup is frozen. Already frozen or asleep: nothing to do.
    /// Connections open at that moment stall until the next wake: the operator's call.
    pub async fn freeze(&self, name: &str, progress: Progress<'_>) -> Result<Record, HostError> {
        self.go_idle(name, Power::Frozen, false, progress)
            .await
            .map(Idled::record)
    }

    /// Puts a tenant to sleep now (`hostd ctl sleep`): routes hold new connections, the
    /// cgroup is thawed (a frozen process cannot stop), then containers (recorded first) and
    /// engine are stopped and the tenant's page cache reclaimed.
    pub async fn sleep(&self, name: &str, progress: Progress<'_>) -> Result<Record, HostError> {
        self.go_idle(name, Power::Asleep, false, progress)
            .await
            .map(Idled::record)
    }

    /// What the idle policy runs: like [`Host::freeze`] and [`Host::sleep`], but a tenant
    /// that has a connection open once its routes hold new ones (one that opened after the
    /// idle sample) is left as it was: [`Idled::Busy`].
    pub async fn idle_to(
        &self,
        name: &str,
        target: Power,
        progress: Progress<'_>,
    ) -> Result<Idled, HostError> {
        self.go_idle(name, target, true, progress).await
    }

    async fn go_idle(
        &self,
        name: &str,
        target: Power,
        unless_busy: bool,
        progress: Progress<'_>,
    ) -> Result<Idled, HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        let what = if target == Power::Frozen {
            "freeze"
        } else {
            "put to sleep"
        };
        must_serve(&rec, what)?;
        if rec.power == target || (target == Power::Frozen && rec.power == Power::Asleep) {
            return Ok(Idled::Done(rec));
        }
        let before = rec.power;
        if before == Power::Active {
            // What runs now: what a wake starts again if a freeze does not survive a reboot.
            let docker = self.docker(&rec).await?;
            rec.stopped_containers = crate::containers::running(&docker)
                .await
                .map_err(HostError::step(name, StepKind::Deploy))?;
        }
        self.set_power(&mut rec, target)?;
        progress(format!(
            "{name}: {}",
            if target == Power::Frozen {
                "freezing"
            } else {
                "going to sleep"
            }
        ));
        // New connections are held from here on; one that got in before stays open.
        let mut result = self.run_up(&mut rec, StepKind::Routes, progress).await;
        let busy = result.is_ok() && unless_busy && self.busy(&rec).await;
        if busy {
            progress(format!(
                "{name}: a connection is open; staying {}",
                word(before)
            ));
            result = Err(HostError::conflict(name, "a connection is open"));
        } else if result.is_ok() {
            let steps: &[StepKind] = match target {
                Power::Frozen => &[StepKind::Cgroup],
                _ => &[StepKind::Cgroup, StepKind::Engine],
            };
            for kind in steps {
                result = result.and(self.run_up(&mut rec, *kind, progress).await);
            }
        }
        if let Err(e) = result {
            // Busy, or it could not be done (no freezer here): back to where it was.
            self.set_power(&mut rec, before)?;
            if before == Power::Active {
                rec.stopped_containers.clear();
                self.save(&rec)?;
            }
            for kind in [StepKind::Cgroup, StepKind::Routes] {
                self.run_up(&mut rec, kind, progress).await?;
            }
            self.settle_power(&mut rec)?;
            return if busy { Ok(Idled::Busy(rec)) } else { Err(e) };
        }
        if target == Power::Asleep {
            // Nothing runs in it any more: its page cache goes back to the host too.
            let cg = self.cgroups.tenant(name);
            match tokio::task::spawn_blocking(move || cg.reclaim()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(tenant = %name, "reclaiming a sleeping tenant's memory: {e}")
                }
                Err(e) => {
                    tracing::warn!(tenant = %name, "reclaiming a sleeping tenant's memory: {e}")
                }
            }
        }
        self.settle_power(&mut rec)?;
        self.metrics.power_changed(name, target);
        progress(format!("{name}: {}", word(target)));
        Ok(Idled::Done(rec))
    }

    /// Whether sni-proxy has a connection of the tenant open that it is not holding.
    async fn busy(&self, rec: &Record) -> bool {
        let Some(sock) = &self.cfg.proxy_admin else {
            return false;
        };
        match crate::proxy_routes::ProxyAdmin::new(sock).activity().await {
            Ok(a) => a.get(rec.name()).is_some_and(|a| a.open > a.held),
            // Unknown: do not risk stalling a live connection.
            Err(_) => true,
        }
    }

    /// Wakes a frozen or sleeping tenant and points its routes at it again; an awake
    /// tenant only has its routes checked (the proxy may hold stale sleeping routes).
    pub async fn wake(&self, name: &str, progress: Progress<'_>) -> Result<Record, HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        must_serve(&rec, "wake")?;
        self.wake_locked(&mut rec, progress).await?;
        Ok(rec)
    }

    /// [`Host::wake`] for a caller that holds the tenant's lock.
    pub(crate) async fn wake_locked(
        &self,
        rec: &mut Record,
        progress: Progress<'_>,
    ) -> Result<(), HostError> {
        let name = rec.name().to_owned();
        let from = rec.power;
        if from == Power::Active && rec.power_settled {
            return self.run_up(rec, StepKind::Routes, progress).await;
        }
        self.set_power(rec, Power::Active)?;
        progress(format!("{name}: waking ({} before)", word(from)));
        let woke = match from {
            Power::Frozen => self.thaw(rec, progress).await,
            // Asleep, or a wake a crash interrupted: the whole way.
            _ => self.start_again(rec, progress).await,
        };
        self.metrics.woke(&name, from, woke.is_ok());
        if let Err(e) = woke {
            tracing::error!(tenant = %name, error = %e, "wake failed; the tenant goes back to sleep");
            rec.wake_error = Some(e.to_string());
            rec.power = Power::Asleep;
            rec.power_since = now_secs();
            self.save(rec)?;
            let mut back = Ok(());
            for kind in [StepKind::Routes, StepKind::Cgroup, StepKind::Engine] {
                back = back.and(self.run_up(rec, kind, progress).await);
            }
            match back {
                Ok(()) => self.settle_power(rec)?,
                Err(undo) => {
                    tracing::error!(tenant = %name, error = %undo, "putting a failed wake back to sleep; reconcile goes on")
                }
            }
            return Err(e);
        }
        self.settle_power(rec)?;
        self.metrics.power_changed(&name, Power::Active);
        progress(format!("{name}: awake"));
        Ok(())
    }

    /// Frozen → active: thaw, then the routes. Nothing stopped, so nothing to start.
    async fn thaw(&self, rec: &mut Record, progress: Progress<'_>) -> Result<(), HostError> {
        self.run_up(rec, StepKind::Cgroup, progress).await?;
        if !rec.stopped_containers.is_empty() {
            rec.stopped_containers.clear();
            self.save(rec)?;
        }
        self.run_up(rec, StepKind::Routes, progress).await
    }

    /// Asleep → active: engine, the containers that ran, the ingress accepting, routes.
    async fn start_again(&self, rec: &mut Record, progress: Progress<'_>) -> Result<(), HostError> {
        let name = rec.name().to_owned();
        self.run_up(rec, StepKind::Cgroup, progress).await?;
        self.run_up(rec, StepKind::Engine, progress).await?;
        let docker = self.docker(rec).await?;
        {
            let mut run = crate::steps::Run {
                host: self,
                rec,
                progress,
            };
            crate::containers::resume(&mut run, &docker)
                .await
                .map_err(HostError::step(&name, StepKind::Deploy))?;
        }
        let ingress = rec.spec.ingress();
        let project = rec.spec.name.compose_project();
        // A tenant whose file has no ingress service has nothing to wait for (and no route).
        if crate::containers::names(&docker, &project)
            .await
            .map_err(HostError::step(&name, StepKind::Deploy))?
            .contains(&format!("{project}-{}-1", ingress.service))
        {
            crate::containers::wait_serving(
                &docker,
                &project,
                &ingress.service,
                ingress.port,
                WAKE_READY,
            )
            .await
            .map_err(|e| HostError::Unavailable {
                tenant: name.clone(),
                message: format!("its ingress after the wake: {e}"),
            })?;
        }
        self.run_up(rec, StepKind::Routes, progress).await
    }
}
