//! The scheduler: each pass reads the registry, lets
//! [`policy::decide`](crate::policy::decide()) decide every started wave
//! (admissions, batches, budgets, windows, deadlines, retries, completion),
//! then writes the decisions with compare-and-swap. It also flags machines
//! whose lease expired.
//!
//! It is one task per controller (the leader's, once there are several), so
//! admissions never race each other; workers' reports and operators may
//! race it, which the compare-and-swap in every write settles: an admission
//! also compares its wave's revision, so nothing is admitted into a wave an
//! operator paused or aborted meanwhile. Every count the decisions rest on
//! comes from persisted job phases and the persisted wave record (its batch
//! included), so a restarted controller resumes exactly where it was and
//! never exceeds a cap.

mod gather;

use crate::controller::{Controller, job_event};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{AuditEvent, Job, Phase, Scenario, now_ms};
use crate::policy::Load;
use crate::store::Txn;
use gather::WaveWork;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Jobs written per transaction (etcd allows 128 operations in one; each
/// job is a put plus its audit event).
const JOBS_PER_TXN: usize = 50;

/// Shortest time between two scheduling passes: a pass costs the jobs in
/// flight, so back-to-back passes on every report would starve the rest.
pub const MIN_PASS_INTERVAL: Duration = Duration::from_millis(10);

/// What one scheduling pass did, for callers that measure it.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Jobs moved to `Assigned`.
    pub admitted: usize,
    /// How long each wave's decision took (the pure part, under the lock).
    pub decisions: Vec<Duration>,
    /// The whole pass, writes included.
    pub elapsed: Duration,
}

impl Controller {
    /// Runs the scheduler until `shutdown` is cancelled: a pass whenever a
    /// job or wave changed (at most one per [`MIN_PASS_INTERVAL`], so a
    /// busy fleet's reports coalesce) or every scheduler tick, and a lease
    /// check every tick.
    pub async fn run_scheduler(self, shutdown: CancellationToken) {
        let tick = self.settings().scheduler_tick;
        let mut leases_checked: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            // Only the leader schedules; its pass carries its term's guard.
            match self.as_leader(self.schedule_pass()).await {
                None => {}
                Some(Ok(report)) => tracing::trace!(
                    admitted = report.admitted,
                    elapsed_us = report.elapsed.as_micros() as u64,
                    "scheduling pass"
                ),
                Some(Err(err)) => tracing::warn!(error = %err, "scheduling pass failed; retrying"),
            }
            if leases_checked.is_none_or(|at| at.elapsed() >= tick) {
                self.as_leader(self.expire_leases()).await;
                leases_checked = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.schedule.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
            tokio::time::sleep_until(started + MIN_PASS_INTERVAL).await;
        }
    }

    /// One pass over the started waves; returns the jobs admitted.
    pub async fn schedule_once(&self) -> Result<usize> {
        Ok(self.schedule_pass().await?.admitted)
    }

    /// One pass over the started waves, with its timings.
    pub async fn schedule_pass(&self) -> Result<PassReport> {
        self.schedule_pass_at(now_ms()).await
    }

    /// One pass as if the time were `now` (tests drive the clock).
    pub(crate) async fn schedule_pass_at(&self, now: i64) -> Result<PassReport> {
        let started = Instant::now();
        let pass = {
            let mut registry = self.registry();
            gather::plan_pass(&mut registry, &self.inner.liveness, now)
        };
        let mut load = pass.load;
        let mut admitted = 0;
        for work in pass.work {
            admitted += self.apply(work, &mut load, now).await?;
        }
        Ok(PassReport {
            admitted,
            decisions: pass.decisions,
            elapsed: started.elapsed(),
        })
    }

    /// Writes one wave's decisions: its record first (a halt or completion
    /// stops there), then job records, then admissions.
    async fn apply(&self, work: WaveWork, load: &mut Load, now: i64) -> Result<usize> {
        let WaveWork {
            wave,
            next_wave,
            writes,
            notes,
            admit,
            node_cap,
        } = work;
        let name = wave.value.spec.name.clone();
        let mut wave_revision = Some(wave.revision);
        if let Some((next, event)) = next_wave {
            let kind = event.kind.clone();
            match self.put_wave(&wave, next, event).await {
                Ok(_) => {
                    tracing::info!(wave = %name, %kind, "wave updated by the scheduler");
                    wave_revision = self.registry().waves.get(&name).map(|w| w.revision);
                }
                // An operator changed the wave meantime: decide again next pass.
                Err(Error::Conflict { .. }) => wave_revision = None,
                Err(err) => return Err(err),
            }
        }
        if !notes.is_empty() {
            let events = notes.into_iter().map(|(_, _, event)| event).collect();
            if let Err(err) = self.commit(Txn::new(), events).await {
                tracing::warn!(error = %err, "could not record a deadline flag");
            }
        }
        for chunk in writes.chunks(JOBS_PER_TXN) {
            self.write_jobs(chunk).await?;
        }
        let Some(wave_revision) = wave_revision else {
            return Ok(0);
        };
        if admit.is_empty() {
            return Ok(0);
        }
        let ready = self.with_placements(admit, node_cap, load).await;
        let wave_key = keys::key(keys::WAVES, &name);
        let commits = ready
            .chunks(JOBS_PER_TXN)
            .map(|chunk| self.admit(chunk, &wave_key, wave_revision, now));
        // Chunks commit concurrently so the store's group commit batches them.
        let mut admitted = 0;
        for result in futures::future::join_all(commits).await {
            admitted += result?;
        }
        Ok(admitted)
    }

    /// Writes job records decided by the scheduler, each compared against
    /// the revision it was decided on; a lost race is decided again.
    async fn write_jobs(&self, chunk: &[(Job, u64, AuditEvent)]) -> Result<()> {
        let mut txn = Txn::new();
        let mut events = Vec::with_capacity(chunk.len());
        for (job, revision, event) in chunk {
            let key = keys::key(keys::JOBS, &job.id);
            txn = txn
                .when_revision(key.clone(), *revision)
                .put(key, keys::encode(job));
            events.push(event.clone());
        }
        match self.commit(txn, events).await {
            Ok(revision) => {
                let mut registry = self.registry();
                for (job, _, _) in chunk {
                    registry.put_job(job.clone(), revision);
                }
                drop(registry);
                self.inner.schedule.notify_one();
                Ok(())
            }
            Err(Error::Conflict { key }) => {
                tracing::debug!(%key, "scheduler write raced another write");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Places the replace jobs among `candidates` on storage nodes below
    /// `node_cap` jobs in flight; a job no node can take stays pending, with
    /// the reason recorded (once per change) in the audit log and shown by
    /// status.
    async fn with_placements(
        &self,
        candidates: Vec<(Job, u64)>,
        node_cap: Option<u32>,
        load: &mut Load,
    ) -> Vec<(Job, u64)> {
        let mut ready = Vec::with_capacity(candidates.len());
        for (mut job, revision) in candidates {
            if job.scenario != Scenario::Replace || job.placement.is_some() {
                ready.push((job, revision));
                continue;
            }
            let full: HashSet<String> = node_cap.map_or_else(HashSet::new, |cap| {
                load.nodes
                    .iter()
                    .filter(|(_, in_flight)| **in_flight >= cap)
                    .map(|(node, _)| node.clone())
                    .collect()
            });
            match self.place(&job, &full, node_cap.unwrap_or(0)).await {
                Ok(placement) => {
                    load.place(&placement.node_id);
                    job.placement = Some(placement);
                    ready.push((job, revision));
                }
                Err(reason) => {
                    let changed = {
                        let mut registry = self.registry();
                        registry
                            .waiting_by_wave
                            .entry(job.wave.clone())
                            .or_default()
                            .insert(job.id.clone());
                        registry.waiting.insert(job.id.clone(), reason.clone())
                            != Some(reason.clone())
                    };
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

    /// Moves a batch of pending jobs to `Assigned` in one transaction,
    /// provided neither the jobs nor their wave changed since the decision.
    async fn admit(
        &self,
        batch: &[(Job, u64)],
        wave_key: &str,
        wave_revision: u64,
        now: i64,
    ) -> Result<usize> {
        let mut txn = Txn::new().when_revision(wave_key, wave_revision);
        let mut admitted = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for (job, revision) in batch {
            let mut next = job.clone();
            next.phase = Phase::Assigned;
            next.phase_since_ms = now;
            next.not_before_ms = None;
            let key = keys::key(keys::JOBS, &job.id);
            txn = txn
                .when_revision(key.clone(), *revision)
                .put(key, keys::encode(&next));
            let batch = next.batch.map_or(1, |b| b + 1);
            let detail = match &next.placement {
                Some(placement) => format!(
                    "pending -> assigned in batch {batch} (storage node {}, {} bytes reserved)",
                    placement.node_id, placement.reserved_bytes
                ),
                None => format!("pending -> assigned in batch {batch}"),
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
            // A job or the wave changed underneath (an abort, a pause); the
            // next pass sees it.
            Err(Error::Conflict { key }) => {
                tracing::debug!(%key, "admission raced another write");
                Ok(0)
            }
            Err(err) => Err(err),
        }
    }

    /// Flags machines with a job in flight that have gone silent.
    async fn expire_leases(&self) {
        let running: Vec<(String, String, String)> = {
            let registry = self.registry();
            registry
                .active
                .keys()
                .flat_map(|wave| registry.active_jobs_of_wave(wave))
                .filter(|job| job.value.phase.is_in_flight() && !job.value.session.is_empty())
                .filter_map(|job| {
                    Some((
                        job.value.owner()?.to_string(),
                        job.value.id.clone(),
                        job.value.wave.clone(),
                    ))
                })
                .collect()
        };
        let lost = self.inner.liveness.expire(
            running.iter().map(|(machine, _, _)| machine.as_str()),
            self.settings().lease,
        );
        if !lost.is_empty() {
            // Unreachable machines count against error budgets.
            self.inner.schedule.notify_one();
        }
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
                    "no contact for over {} ms; the job waits for the machine (it counts \
                     against the error budget until it is back)",
                    self.settings().lease.as_millis()
                ),
            };
            if let Err(err) = self.commit(Txn::new(), vec![event]).await {
                tracing::warn!(error = %err, "could not record lost contact");
            }
        }
    }
}

#[cfg(test)]
mod tests;
