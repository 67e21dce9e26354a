//! The operations on tenants, each one holding only that tenant's lock: create, converge
//! (what reconcile and start run), deploy, stop and start, quarantine, rotate secrets,
//! destroy, and the periodic supervision. They run the steps of [`crate::steps`] forward
//! or backward and record each one done, durably, so `kill -9` at any instant resumes in
//! the direction the tenant was going.

use crate::error::{HostError, StepError};
use crate::host::Host;
use crate::record::{now_secs, Deployment, Desired, Record};
use crate::spec::TenantSpec;
use crate::steps::{self, step, Run, StepKind, STEPS};

/// Where progress lines go.
pub type Progress<'a> = &'a mut (dyn FnMut(String) + Send);

impl Host {
    /// Records the tenant (allocating its slot) and provisions it; resumes a half-done create.
    pub async fn create(
        &self,
        spec: TenantSpec,
        progress: Progress<'_>,
    ) -> Result<Record, HostError> {
        let name = spec.name.to_string();
        let _tenant = self.locks.lock(&name).await;
        let mut rec = match self.record(&name)? {
            Some(r) if r.desired == Desired::Absent => {
                return Err(HostError::conflict(
                    &name,
                    "is being destroyed; finish `hostd ctl destroy` first",
                ))
            }
            Some(r) if r.spec != spec => {
                return Err(HostError::conflict(
                    &name,
                    "exists with a different spec; `hostd ctl destroy` it first (specs are not changed in place)",
                ))
            }
            Some(r) => r,
            None => self.record_new(spec, progress).await?,
        };
        self.converge(&mut rec, progress).await?;
        Ok(rec)
    }

    /// Picks the lowest free slot and records the new tenant in it, under the slot lock
    /// so two creates never pick the same one.
    async fn record_new(
        &self,
        spec: TenantSpec,
        progress: Progress<'_>,
    ) -> Result<Record, HostError> {
        let name = spec.name.to_string();
        let _slots = self.slots.lock().await;
        let taken: Vec<u16> = self.records()?.iter().map(|r| r.slot).collect();
        // A tenant whose record is unreadable still holds its ranges in these files.
        let read = |f: &str| tokio::fs::read_to_string(self.cfg.etc.join(f));
        let subuid = read("subuid").await.unwrap_or_default();
        let subgid = read("subgid").await.unwrap_or_default();
        let slot = crate::ids::free_slot(&taken, &[&subuid, &subgid])
            .map_err(|e| HostError::step(&name, StepKind::IdRanges)(e.into()))?;
        let rec = Record::new(spec, slot);
        self.save(&rec)?;
        progress(format!("{name}: recorded in slot {slot}"));
        Ok(rec)
    }

    /// Runs every step forward, towards what the record asks (present or stopped).
    async fn converge(&self, rec: &mut Record, progress: Progress<'_>) -> Result<(), HostError> {
        let name = rec.name().to_owned();
        for kind in STEPS {
            if kind == StepKind::Engine && rec.desired == Desired::Stopped {
                progress(format!("{name}: {kind:?} (stopped)"));
            } else {
                progress(format!("{name}: {kind:?}"));
            }
            self.run_up(rec, kind, progress).await?;
            if !rec.done.contains(&kind) {
                rec.done.push(kind);
                self.save(rec)?;
            }
        }
        // A power change a crash interrupted is finished now: every step ran its way.
        self.settle_power(rec)?;
        progress(format!(
            "{name}: {}",
            match rec.desired {
                Desired::Stopped => "provisioned, stopped",
                _ => "provisioned",
            }
        ));
        Ok(())
    }

    /// Runs one step forward for the tenant (its effect made to match the record).
    pub(crate) async fn run_up(
        &self,
        rec: &mut Record,
        kind: StepKind,
        progress: Progress<'_>,
    ) -> Result<(), HostError> {
        let name = rec.name().to_owned();
        let mut run = Run {
            host: self,
            rec,
            progress,
        };
        step(kind)
            .up(&mut run)
            .await
            .map_err(HostError::step(&name, kind))
    }

    /// Stops the tenant's containers (remembering which ran) and then its engine; keeps
    /// everything else. Safe to repeat.
    pub async fn stop(&self, name: &str, progress: Progress<'_>) -> Result<Record, HostError> {
        self.move_to(name, Desired::Stopped, progress).await
    }

    /// Starts a stopped tenant: engine first, then the containers that ran when it stopped.
    pub async fn start(&self, name: &str, progress: Progress<'_>) -> Result<Record, HostError> {
        self.move_to(name, Desired::Present, progress).await
    }

    /// Records the new desired state, then converges towards it.
    async fn move_to(
        &self,
        name: &str,
        desired: Desired,
        progress: Progress<'_>,
    ) -> Result<Record, HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        if rec.desired != desired || rec.power != crate::record::Power::Active {
            // A stop goes deeper than any sleep; a start brings the tenant fully up.
            rec.desired = desired;
            rec.power = crate::record::Power::Active;
            rec.power_since = now_secs();
            rec.power_settled = false;
            self.save(&rec)?;
        }
        self.converge(&mut rec, progress).await?;
        Ok(rec)
    }

    /// Accepts a compose file for the tenant: checks it, records it as the next revision
    /// (what reconcile redeploys after a reboot), deploys it and points the routes at it.
    pub async fn deploy(
        &self,
        name: &str,
        bundle: crate::compose::Bundle,
        progress: Progress<'_>,
    ) -> Result<(Record, Vec<String>), HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        match (rec.desired, rec.quarantined) {
            (Desired::Stopped, _) => {
                return Err(HostError::conflict(
                    name,
                    format!("is stopped; run `hostd ctl start {name}` first"),
                ))
            }
            (_, true) => {
                return Err(HostError::conflict(
                    name,
                    format!("is quarantined (kept as it is for forensics); `hostd ctl quarantine {name} --lift` first"),
                ))
            }
            _ => {}
        }
        let doc = steps::deploy::prepared(self, &rec, &bundle).map_err(|e| {
            self.metrics.deployed(name, "refused");
            HostError::Refused(e)
        })?;
        // A frozen or sleeping tenant is woken to take its new revision.
        if rec.power != crate::record::Power::Active {
            self.wake_locked(&mut rec, progress).await?;
        }
        let docker = self.docker(&rec).await?;
        let revision = rec.deployment.as_ref().map_or(0, |d| d.revision) + 1;
        // The bundle is on the tenant volume before the record names it: a crash between
        // the two leaves an unnamed directory, never a revision without its bundle.
        let dir = steps::deploy::store(self, &rec, &doc, &bundle)
            .await
            .map_err(HostError::step(name, StepKind::Deploy))?;
        rec.deployment = Some(Deployment {
            revision,
            bundle: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            files: bundle
                .files
                .iter()
                .map(|(p, d)| (p.clone(), crate::compose::file_digest(d)))
                .collect(),
            compose: String::new(),
            env: Default::default(),
            accepted_at: now_secs(),
            deployed_at: None,
            error: None,
        });
        self.save(&rec)?;
        progress(format!("{name}: deploying revision {revision}"));
        let started = {
            let mut run = Run {
                host: self,
                rec: &mut rec,
                progress,
            };
            let result = steps::deploy_compose(&mut run, &docker, &doc, &bundle).await;
            self.metrics
                .deployed(name, if result.is_ok() { "ok" } else { "failed" });
            result.map_err(HostError::step(name, StepKind::Deploy))?
        };
        // New networks of the file get the tenant's bandwidth limits before traffic.
        self.run_up(&mut rec, StepKind::Bandwidth, progress).await?;
        self.run_up(&mut rec, StepKind::Routes, progress).await?;
        Ok((rec, started))
    }

    /// Cuts (or restores) all of the tenant's networking; containers, data and engine stay
    /// as they are, and the operator keeps access through the engine socket.
    pub async fn quarantine(
        &self,
        name: &str,
        on: bool,
        progress: Progress<'_>,
    ) -> Result<Record, HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        rec.quarantined = on;
        self.save(&rec)?;
        progress(format!(
            "{name}: {}",
            if on {
                "cutting all networking"
            } else {
                "restoring networking"
            }
        ));
        for kind in [StepKind::Firewall, StepKind::Broker, StepKind::Routes] {
            self.run_up(&mut rec, kind, progress).await?;
        }
        Ok(rec)
    }

    /// Re-reads the tenant's SSM parameters, rewrites the files and restarts the running
    /// containers of its project so they read the new values.
    pub async fn rotate_secrets(
        &self,
        name: &str,
        progress: Progress<'_>,
    ) -> Result<Vec<String>, HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.live_record(name)?;
        if self.secrets.is_none() {
            return Err(HostError::conflict(
                name,
                "this hostd writes no secrets (started with --secrets none)",
            ));
        }
        progress(format!(
            "{name}: reading SSM parameters as the customer role"
        ));
        self.run_up(&mut rec, StepKind::Secrets, progress).await?;
        let Ok(docker) = self.docker(&rec).await else {
            return Ok(Vec::new());
        };
        let mut run = Run {
            host: self,
            rec: &mut rec,
            progress,
        };
        crate::containers::restart_running(&mut run, &docker)
            .await
            .map_err(HostError::step(name, StepKind::Secrets))
    }

    /// Tears the tenant down in reverse order; resumes a half-done destroy; deletes the record last.
    pub async fn destroy(
        &self,
        name: &str,
        wipe: bool,
        progress: Progress<'_>,
    ) -> Result<(), HostError> {
        let _tenant = self.locks.lock(name).await;
        let mut rec = self.existing(name)?;
        if rec.desired != Desired::Absent || (wipe && !rec.wipe) {
            rec.desired = Desired::Absent;
            rec.wipe |= wipe;
            self.save(&rec)?;
        }
        self.unwind(&mut rec, progress).await
    }

    /// Undoes every step, recorded or not (a crash between a step's effect and its record
    /// leaves an effect the record does not know about), then deletes the record.
    async fn unwind(&self, rec: &mut Record, progress: Progress<'_>) -> Result<(), HostError> {
        let name = rec.name().to_owned();
        for kind in STEPS.iter().rev().copied() {
            progress(format!("{name}: undo {kind:?}"));
            let mut run = Run {
                host: self,
                rec,
                progress,
            };
            step(kind)
                .down(&mut run)
                .await
                .map_err(HostError::step(&name, kind))?;
            if rec.done.contains(&kind) {
                rec.done.retain(|s| *s != kind);
                self.save(rec)?;
            }
        }
        self.store.delete(&name)?;
        progress(format!("{name}: destroyed"));
        Ok(())
    }

    /// Brings every tenant back to its desired state, one at a time, each under its own
    /// lock: what a restarted hostd runs first. A tenant that fails, or whose record is
    /// unreadable, does not stop the others.
    pub async fn reconcile(&self, progress: Progress<'_>) -> Vec<HostError> {
        let listed = match self.list() {
            Ok(l) => l,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for entry in listed {
            let name = match entry {
                crate::host::Listed::Tenant(r) => r.name().to_owned(),
                crate::host::Listed::Broken { name, .. } => name,
            };
            let _tenant = self.locks.lock(&name).await;
            let result = match self.record(&name) {
                Ok(Some(mut r)) if r.desired == Desired::Absent => {
                    self.unwind(&mut r, progress).await
                }
                Ok(Some(mut r)) => self.converge(&mut r, progress).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }

    /// Restarts the engines of running tenants whose dockerd died (containers survive it:
    /// live-restore) and keeps broker registrations and tokens fresh (a restarted broker
    /// knows nobody); what the daemon runs periodically. A tenant another operation is
    /// changing is skipped this round. Returns the tenants whose engine was restarted.
    pub async fn supervise(&self, progress: Progress<'_>) -> (Vec<String>, Vec<HostError>) {
        self.reap_children();
        let (mut restarted, mut errors) = (Vec::new(), Vec::new());
        let records = match self.records() {
            Ok(r) => r,
            Err(e) => return (restarted, vec![e]),
        };
        for r in records {
            let name = r.name().to_owned();
            let Some(_tenant) = self.locks.try_lock(&name) else {
                continue;
            };
            // Read again under the lock: the listing may predate a change that just finished.
            let r = match self.record(&name) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Err(e) = self.supervise_one(&r, progress, &mut restarted).await {
                errors.push(HostError::step(&name, e.0)(e.1));
            }
        }
        (restarted, errors)
    }

    async fn supervise_one(
        &self,
        r: &Record,
        progress: Progress<'_>,
        restarted: &mut Vec<String>,
    ) -> Result<(), (StepKind, StepError)> {
        let name = r.name();
        if r.serving() && r.done.contains(&StepKind::Broker) {
            if let Some(id) = steps::ensure_token(self, r)
                .await
                .map_err(|e| (StepKind::Broker, e))?
            {
                progress(format!("{name}: broker token {id} minted"));
            }
        }
        let running = r.desired == Desired::Present
            && r.power == crate::record::Power::Active
            && r.done.contains(&StepKind::Engine);
        if running && r.done.contains(&StepKind::Bandwidth) {
            // A container its engine restarted has a new, unshaped veth.
            let (fw, slot) = (self.cfg.firewall.clone(), r.slot);
            let shaped = steps::blocking(move || crate::shaping::shape_new_ports(&fw, slot))
                .await
                .map_err(|e| (StepKind::Bandwidth, e))?;
            if shaped > 0 {
                progress(format!(
                    "{name}: bandwidth: {shaped} new container port(s) shaped"
                ));
            }
        }
        if !running || crate::engine::Engine::adopt(self.engine_config(r)).is_some() {
            return Ok(());
        }
        progress(format!("{name}: engine is not running; restarting it"));
        steps::engine::start(self, r)
            .await
            .map_err(|e| (StepKind::Engine, e))?;
        restarted.push(name.to_owned());
        Ok(())
    }

    /// The steps whose effect is not in place now, for `hostd ctl status` (read-only).
    pub async fn drift(&self, rec: &Record) -> Vec<StepKind> {
        let mut out = Vec::new();
        for kind in STEPS {
            if !matches!(step(kind).check(self, rec).await, Ok(true)) {
                out.push(kind);
            }
        }
        out
    }
}
