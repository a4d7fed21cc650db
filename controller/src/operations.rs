//! Operator actions: plans, wave controls, and the read-only views behind
//! `fleetmig status` and `fleetmig machines list`.

use crate::controller::{Controller, job_event};
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{
    AuditEvent, Destination, Job, Machine, Phase, Plan, Scenario, Wave, WaveState, now_ms,
};
use crate::plan::{self, Problem};
use crate::registry::{Progress, Versioned};
use crate::store::Txn;
use std::collections::BTreeMap;

/// Jobs created per transaction at wave start (etcd allows 128 ops a txn).
const JOBS_PER_TXN: usize = 50;

/// A wave with its live counts.
#[derive(Debug, Clone)]
pub struct WaveView {
    /// The wave record.
    pub wave: Wave,
    /// Jobs per phase name.
    pub phase_counts: BTreeMap<&'static str, u32>,
}

/// A job with its machine's hostname and live progress.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The job.
    pub job: Job,
    /// Hostname of its machine.
    pub hostname: String,
    /// Latest progress, while running.
    pub progress: Option<Progress>,
    /// Why it has not started yet, if it waits.
    pub waiting: Option<String>,
}

/// A machine with its contact and latest job.
#[derive(Debug, Clone)]
pub struct MachineView {
    /// The machine.
    pub machine: Machine,
    /// Last contact in ms since the epoch (0: not since this controller started).
    pub last_seen_ms: i64,
    /// Latest job, if any.
    pub job: Option<Job>,
}

/// Everything `fleetmig status` shows.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// Waves (all, or the one asked for).
    pub waves: Vec<WaveView>,
    /// Their jobs, ordered by wave then hostname.
    pub jobs: Vec<JobView>,
    /// Enrolled machines.
    pub machines: usize,
    /// Registered storage nodes.
    pub storage_nodes: usize,
}

fn operator_event(actor: &str, kind: &str, wave: &str, detail: String) -> AuditEvent {
    AuditEvent {
        seq: 0,
        unix_ms: now_ms(),
        actor: actor.to_string(),
        kind: kind.to_string(),
        wave: wave.to_string(),
        job_id: String::new(),
        machine_id: String::new(),
        detail,
    }
}

impl Controller {
    fn machines_snapshot(&self) -> Vec<Machine> {
        self.registry()
            .machines
            .values()
            .map(|m| m.value.clone())
            .collect()
    }

    /// Parses and validates a plan against the current inventory.
    pub fn validate_plan(&self, source: &str) -> std::result::Result<Plan, Vec<Problem>> {
        plan::parse(source, &self.machines_snapshot())
    }

    /// Validates and stores a plan, creating its waves.
    ///
    /// Re-applying a plan replaces waves that have not started; a started
    /// wave cannot be redefined.
    pub async fn apply_plan(&self, source: &str, file: &str, actor: &str) -> Result<Plan> {
        let plan = self
            .validate_plan(source)
            .map_err(|problems| Error::InvalidPlan {
                file: file.to_string(),
                problems: problems.iter().map(|p| p.display(file)).collect(),
            })?;
        let mut txn = Txn::new();
        let mut waves = Vec::new();
        {
            let registry = self.registry();
            let plan_key = keys::key(keys::PLANS, &plan.name);
            let plan_revision = registry.plans.get(&plan.name).map_or(0, |p| p.revision);
            txn = txn
                .when_revision(plan_key.clone(), plan_revision)
                .put(plan_key, keys::encode(&plan));
            for spec in &plan.waves {
                let existing = registry.waves.get(&spec.name);
                if let Some(existing) = existing {
                    if existing.value.plan != plan.name {
                        return Err(Error::InvalidPlan {
                            file: file.to_string(),
                            problems: vec![format!(
                                "wave {} already belongs to plan {}",
                                spec.name, existing.value.plan
                            )],
                        });
                    }
                    if existing.value.state != WaveState::Created {
                        return Err(Error::WaveState {
                            wave: spec.name.clone(),
                            state: existing.value.state.name(),
                            action: "redefine it",
                        });
                    }
                }
                let wave = Wave {
                    spec: spec.clone(),
                    plan: plan.name.clone(),
                    state: WaveState::Created,
                    machines: 0,
                    started_ms: None,
                    finished_ms: None,
                    batch: Default::default(),
                    halt_reason: None,
                    paused: Default::default(),
                    retry_of: None,
                };
                let key = keys::key(keys::WAVES, &spec.name);
                txn = txn
                    .when_revision(key.clone(), existing.map_or(0, |w| w.revision))
                    .put(key, keys::encode(&wave));
                waves.push(wave);
            }
        }
        let event = operator_event(
            actor,
            "plan.apply",
            "",
            format!("plan {} with {} waves from {file}", plan.name, waves.len()),
        );
        let revision = self.commit(txn, vec![event]).await?;
        let mut registry = self.registry();
        registry.plans.insert(
            plan.name.clone(),
            Versioned {
                value: plan.clone(),
                revision,
            },
        );
        for wave in waves {
            registry.waves.insert(
                wave.spec.name.clone(),
                Versioned {
                    value: wave,
                    revision,
                },
            );
        }
        Ok(plan)
    }

    fn wave(&self, name: &str) -> Result<Versioned<Wave>> {
        self.registry()
            .waves
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownWave(name.to_string()))
    }

    /// Writes a new wave record with compare-and-swap, plus an audit event.
    pub(crate) async fn put_wave(
        &self,
        current: &Versioned<Wave>,
        next: Wave,
        event: AuditEvent,
    ) -> Result<Wave> {
        let key = keys::key(keys::WAVES, &next.spec.name);
        let txn = Txn::new()
            .when_revision(key.clone(), current.revision)
            .put(key, keys::encode(&next));
        let revision = self.commit(txn, vec![event]).await?;
        self.registry().waves.insert(
            next.spec.name.clone(),
            Versioned {
                value: next.clone(),
                revision,
            },
        );
        self.inner.schedule.notify_one();
        Ok(next)
    }

    /// Starts a wave: creates a pending job per selected machine, then
    /// marks the wave running. Safe to repeat after a crash half-way.
    pub async fn start_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        let current = self.wave(name)?;
        match current.value.state {
            WaveState::Created => {}
            WaveState::Running => return Ok(current.value),
            other => {
                return Err(Error::WaveState {
                    wave: name.to_string(),
                    state: other.name(),
                    action: "start it",
                });
            }
        }
        let spec = current.value.spec.clone();
        let (new_jobs, selected) = {
            let registry = self.registry();
            let mut machines: Vec<&Machine> = registry
                .machines
                .values()
                .map(|m| &m.value)
                .filter(|m| spec.select.matches(m))
                .collect();
            machines.sort_by_key(|m| m.inventory.hostname.to_ascii_lowercase());
            let mut busy = Vec::new();
            let mut new_jobs = Vec::new();
            for machine in &machines {
                let job_id = Job::id_for(name, &machine.id);
                if registry.jobs.contains_key(&job_id) {
                    continue;
                }
                if let Some(other) = registry.active_job(&machine.id) {
                    busy.push(format!(
                        "{} is in job {} ({})",
                        machine.inventory.hostname,
                        other.value.id,
                        other.value.phase.name()
                    ));
                    continue;
                }
                let destination = spec
                    .pairs
                    .iter()
                    .find(|pair| {
                        pair.source
                            .eq_ignore_ascii_case(&machine.inventory.hostname)
                    })
                    .map(|pair| Destination {
                        hostname: pair.destination.clone(),
                        machine_id: String::new(),
                    });
                if spec.scenario == Scenario::Replace && destination.is_none() {
                    continue;
                }
                new_jobs.push(Job {
                    id: job_id,
                    wave: name.to_string(),
                    machine_id: machine.id.clone(),
                    scenario: spec.scenario,
                    phase: Phase::Pending,
                    attempt: 0,
                    fence: 0,
                    session: String::new(),
                    capture_options: spec.capture.clone(),
                    captured: None,
                    restored: None,
                    failure: None,
                    destination,
                    placement: None,
                    batch: None,
                    phase_since_ms: now_ms(),
                    not_before_ms: None,
                    skip_reason: None,
                    created_ms: now_ms(),
                    started_ms: None,
                    finished_ms: None,
                });
            }
            if !busy.is_empty() {
                return Err(Error::MachinesBusy {
                    wave: name.to_string(),
                    machines: busy,
                });
            }
            (new_jobs, machines.len())
        };
        if selected == 0 {
            return Err(Error::InvalidArgument(format!(
                "wave {name} selects no enrolled machine"
            )));
        }
        for chunk in new_jobs.chunks(JOBS_PER_TXN) {
            let mut txn = Txn::new();
            let mut migration_keys = Vec::new();
            for job in chunk {
                let key = keys::key(keys::JOBS, &job.id);
                txn = txn.when_absent(key.clone()).put(key, keys::encode(job));
                if job.scenario == Scenario::Replace {
                    let secret = fleetmig_format::keys::generate_key_bytes();
                    let key = keys::key(keys::MIGRATION_KEYS, &job.id);
                    txn = txn
                        .when_absent(key.clone())
                        .put(key, keys::encode(&hex::encode(secret)));
                    migration_keys.push((job.id.clone(), secret));
                }
            }
            let events = chunk
                .iter()
                .map(|job| job_event(job, actor, "job.create", "pending".into()))
                .collect();
            let revision = self.commit(txn, events).await?;
            let mut registry = self.registry();
            registry.migration_keys.extend(migration_keys);
            for job in chunk {
                registry.put_job(job.clone(), revision);
            }
        }
        let mut next = current.value.clone();
        next.state = WaveState::Running;
        next.machines = selected as u32;
        next.started_ms = Some(now_ms());
        let event = operator_event(
            actor,
            "wave.start",
            name,
            format!(
                "{selected} machines, at most {} in flight",
                spec.max_in_flight
            ),
        );
        self.put_wave(&current, next, event).await
    }

    async fn change_wave_state(
        &self,
        name: &str,
        actor: &str,
        from: &[WaveState],
        to: WaveState,
        action: &'static str,
    ) -> Result<Wave> {
        let current = self.wave(name)?;
        if current.value.state == to {
            return Ok(current.value);
        }
        if !from.contains(&current.value.state) {
            return Err(Error::WaveState {
                wave: name.to_string(),
                state: current.value.state.name(),
                action,
            });
        }
        let mut next = current.value.clone();
        next.state = to;
        if to == WaveState::Aborted {
            next.finished_ms = Some(now_ms());
        }
        let event = operator_event(actor, &format!("wave.{}", to.name()), name, action.into());
        self.put_wave(&current, next, event).await
    }

    /// Stops admitting new jobs; running ones continue.
    pub async fn pause_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        self.change_wave_state(
            name,
            actor,
            &[WaveState::Running],
            WaveState::Paused,
            "pause it",
        )
        .await
    }

    /// Resumes admitting jobs.
    pub async fn resume_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        self.change_wave_state(
            name,
            actor,
            &[WaveState::Paused],
            WaveState::Running,
            "resume it",
        )
        .await
    }

    /// Aborts a wave: jobs not yet started are skipped; jobs already past
    /// their first report run on to a safe end (never cut mid-reimage).
    pub async fn abort_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        let wave = self
            .change_wave_state(
                name,
                actor,
                &[WaveState::Created, WaveState::Running, WaveState::Paused],
                WaveState::Aborted,
                "abort it",
            )
            .await?;
        let unstarted: Vec<String> = self
            .registry()
            .jobs_of_wave(name)
            .filter(|job| matches!(job.value.phase, Phase::Pending | Phase::Assigned))
            .filter(|job| job.value.session.is_empty())
            .map(|job| job.value.id.clone())
            .collect();
        for job_id in unstarted {
            let actor = actor.to_string();
            self.update_job(&job_id, |job| {
                if !(matches!(job.phase, Phase::Pending | Phase::Assigned)
                    && job.session.is_empty())
                {
                    return Ok(None);
                }
                let mut next = job.clone();
                next.phase = Phase::Skipped;
                next.finished_ms = Some(now_ms());
                let event = job_event(&next, &actor, "job.phase", "skipped: wave aborted".into());
                Ok(Some((next, vec![event])))
            })
            .await?;
        }
        Ok(wave)
    }

    /// Waves and their jobs.
    pub fn status(&self, wave: Option<&str>) -> Result<StatusView> {
        let registry = self.registry();
        if let Some(name) = wave
            && !registry.waves.contains_key(name)
        {
            return Err(Error::UnknownWave(name.to_string()));
        }
        let waves: Vec<WaveView> = registry
            .waves
            .values()
            .filter(|w| wave.is_none_or(|name| name == w.value.spec.name))
            .map(|w| WaveView {
                wave: w.value.clone(),
                phase_counts: registry.phase_counts(&w.value.spec.name),
            })
            .collect();
        let mut jobs = Vec::new();
        for view in &waves {
            for job in registry.jobs_of_wave(&view.wave.spec.name) {
                let hostname = registry
                    .machines
                    .get(&job.value.machine_id)
                    .map(|m| m.value.inventory.hostname.clone())
                    .unwrap_or_default();
                jobs.push(JobView {
                    job: job.value.clone(),
                    hostname,
                    progress: registry.progress.get(&job.value.id).cloned(),
                    waiting: registry.waiting.get(&job.value.id).cloned(),
                });
            }
        }
        let storage_nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .len();
        Ok(StatusView {
            waves,
            jobs,
            machines: registry.machines.len(),
            storage_nodes,
        })
    }

    /// Machines, optionally only those in `wave` or whose latest job is in `phase`.
    pub fn machines(&self, wave: Option<&str>, phase: Option<Phase>) -> Result<Vec<MachineView>> {
        let registry = self.registry();
        let mut views: Vec<MachineView> = registry
            .machines
            .values()
            .filter_map(|m| {
                let job = match wave {
                    Some(wave) => {
                        let id = Job::id_for(wave, &m.value.id);
                        Some(registry.jobs.get(&id)?.value.clone())
                    }
                    None => registry.latest_job(&m.value.id).map(|j| j.value.clone()),
                };
                if phase.is_some() && job.as_ref().map(|j| j.phase) != phase {
                    return None;
                }
                Some(MachineView {
                    machine: m.value.clone(),
                    last_seen_ms: self.inner.liveness.last_seen_unix_ms(&m.value.id),
                    job,
                })
            })
            .collect();
        views.sort_by_key(|v| v.machine.inventory.hostname.to_ascii_lowercase());
        Ok(views)
    }

    /// The stored audit log, oldest first (optionally one wave's).
    pub async fn audit_log(&self, wave: Option<&str>) -> Result<Vec<AuditEvent>> {
        let mut events = Vec::new();
        for kv in self.inner.store.range(keys::AUDIT).await? {
            let mut event: AuditEvent = keys::decode(&kv.key, &kv.value)?;
            event.seq = kv.mod_revision;
            if wave.is_none_or(|w| w == event.wave) {
                events.push(event);
            }
        }
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }
}
