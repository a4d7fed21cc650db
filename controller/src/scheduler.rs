//! The scheduler: admits pending jobs into each running wave's window,
//! completes finished waves, and flags machines whose lease expired.
//!
//! It is one task per controller (the leader's, once there are several), so
//! admissions never race each other; workers' reports may race it, which
//! the compare-and-swap in every write settles.

use crate::controller::{Controller, job_event};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{AuditEvent, Job, Phase, Scenario, WaveState, now_ms};
use crate::store::Txn;
use tokio_util::sync::CancellationToken;

/// Jobs admitted per transaction.
const ADMISSIONS_PER_TXN: usize = 50;

impl Controller {
    /// Runs the scheduler until `shutdown` is cancelled.
    pub async fn run_scheduler(self, shutdown: CancellationToken) {
        let tick = self.settings().scheduler_tick;
        loop {
            if let Err(err) = self.schedule_once().await {
                tracing::warn!(error = %err, "scheduling pass failed; retrying");
            }
            self.expire_leases().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.schedule.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One pass over the running waves: admit what fits, complete what is done.
    pub async fn schedule_once(&self) -> Result<usize> {
        let waves: Vec<_> = self
            .registry()
            .waves
            .values()
            .filter(|w| matches!(w.value.state, WaveState::Running | WaveState::Paused))
            .cloned()
            .collect();
        let mut admitted = 0;
        for wave in waves {
            let name = wave.value.spec.name.clone();
            if self.registry().wave_finished(&name) {
                let mut next = wave.value.clone();
                next.state = WaveState::Completed;
                next.finished_ms = Some(now_ms());
                let counts = self.registry().phase_counts(&name);
                let event = AuditEvent {
                    seq: 0,
                    unix_ms: now_ms(),
                    actor: "controller".into(),
                    kind: "wave.completed".into(),
                    wave: name.clone(),
                    job_id: String::new(),
                    machine_id: String::new(),
                    detail: format!("{counts:?}"),
                };
                match self.put_wave(&wave, next, event).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(err) => return Err(err),
                }
                continue;
            }
            if wave.value.state != WaveState::Running {
                continue;
            }
            let candidates: Vec<(Job, u64)> = {
                let registry = self.registry();
                let window = wave.value.spec.max_in_flight as usize;
                let slots = window.saturating_sub(registry.in_flight(&name));
                registry
                    .pending(&name)
                    .take(slots)
                    .map(|job| (job.value.clone(), job.revision))
                    .collect()
            };
            let candidates = self.with_placements(candidates).await;
            for chunk in candidates.chunks(ADMISSIONS_PER_TXN) {
                admitted += self.admit(chunk).await?;
            }
        }
        Ok(admitted)
    }

    /// Places the replace jobs among `candidates` on storage nodes; a job no
    /// node can take stays pending, with the reason recorded (once per
    /// change) in the audit log and shown by status.
    async fn with_placements(&self, candidates: Vec<(Job, u64)>) -> Vec<(Job, u64)> {
        let mut ready = Vec::with_capacity(candidates.len());
        for (mut job, revision) in candidates {
            if job.scenario != Scenario::Replace || job.placement.is_some() {
                ready.push((job, revision));
                continue;
            }
            match self.place(&job).await {
                Ok(placement) => {
                    job.placement = Some(placement);
                    ready.push((job, revision));
                }
                Err(reason) => {
                    let changed = self
                        .registry()
                        .waiting
                        .insert(job.id.clone(), reason.clone())
                        != Some(reason.clone());
                    if changed {
                        tracing::warn!(job_id = %job.id, %reason, "replace job waits for storage");
                        let event = job_event(&job, "controller", "job.waiting", reason);
                        if let Err(err) = self.commit(Txn::new(), vec![event]).await {
                            tracing::warn!(error = %err, "could not record a waiting job");
                        }
                    }
                }
            }
        }
        ready
    }

    /// Moves a batch of pending jobs to `Assigned` in one transaction.
    async fn admit(&self, batch: &[(Job, u64)]) -> Result<usize> {
        let mut txn = Txn::new();
        let mut admitted = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for (job, revision) in batch {
            let mut next = job.clone();
            next.phase = Phase::Assigned;
            let key = keys::key(keys::JOBS, &job.id);
            txn = txn
                .when_revision(key.clone(), *revision)
                .put(key, keys::encode(&next));
            let detail = match &next.placement {
                Some(placement) => format!(
                    "pending -> assigned (storage node {}, {} bytes reserved)",
                    placement.node_id, placement.reserved_bytes
                ),
                None => "pending -> assigned".into(),
            };
            events.push(job_event(&next, "controller", "job.phase", detail));
            admitted.push(next);
        }
        match self.commit(txn, events).await {
            Ok(revision) => {
                let count = admitted.len();
                let mut registry = self.registry();
                for job in admitted {
                    registry.put_job(job, revision);
                }
                Ok(count)
            }
            // A job changed underneath (an abort); the next pass sees it.
            Err(Error::Conflict { key }) => {
                tracing::debug!(%key, "admission raced another write");
                Ok(0)
            }
            Err(err) => Err(err),
        }
    }

    /// Flags machines with a job in flight that have gone silent.
    async fn expire_leases(&self) {
        let running: Vec<(String, String, String)> = self
            .registry()
            .jobs
            .values()
            .filter(|job| job.value.phase.is_in_flight() && !job.value.session.is_empty())
            .filter_map(|job| {
                Some((
                    job.value.owner()?.to_string(),
                    job.value.id.clone(),
                    job.value.wave.clone(),
                ))
            })
            .collect();
        let lost = self.inner.liveness.expire(
            running.iter().map(|(machine, _, _)| machine.as_str()),
            self.settings().lease,
        );
        for machine in lost {
            let Some((_, job_id, wave)) = running.iter().find(|(m, _, _)| *m == machine) else {
                continue;
            };
            tracing::warn!(machine_id = %machine, %job_id, "lease expired: machine lost contact");
            let event = AuditEvent {
                seq: 0,
                unix_ms: now_ms(),
                actor: "controller".into(),
                kind: "machine.lost".into(),
                wave: wave.clone(),
                job_id: job_id.clone(),
                machine_id: machine.clone(),
                detail: format!(
                    "no contact for over {} ms; the job waits for the machine",
                    self.settings().lease.as_millis()
                ),
            };
            if let Err(err) = self.commit(Txn::new(), vec![event]).await {
                tracing::warn!(error = %err, "could not record lost contact");
            }
        }
    }
}
