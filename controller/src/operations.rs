//! Operator actions: plans, wave controls, and the read-only views behind
//! `fleetmig status` and `fleetmig machines list`.

use crate::controller::{Controller, job_event};
use crate::error::{Error, Result};
use crate::keys;
use crate::lifecycle::{self, AbortStep, WaveGate};
use crate::liveness::Liveness;
use crate::model::{
    Association, AuditEvent, CaptureOptions, Destination, Job, Machine, Phase, Plan, RuleFile,
    Scenario, Selector, Wave, WaveState, now_ms,
};
use crate::nodes::{Capacity, StorageNode};
use crate::plan::{self, Problem};
use crate::policy::facts::retry_restarts_from;
use crate::registry::{Progress, Registry, Versioned};
use crate::store::Txn;
use std::collections::BTreeMap;

/// Jobs created per transaction at wave start (etcd allows 128 ops a txn).
const JOBS_PER_TXN: usize = 50;

/// How many times an operator's wave change is retried against concurrent
/// writers (the scheduler) before giving up.
const WAVE_CAS_ATTEMPTS: usize = 16;

/// A wave with its live counts.
#[derive(Debug, Clone)]
pub struct WaveView {
    /// The wave record.
    pub wave: Wave,
    /// Jobs per phase name.
    pub phase_counts: BTreeMap<&'static str, u32>,
    /// Batches the wave has in all (`None`: not known before it started).
    pub batch_count: Option<u32>,
    /// Failures its error budget tolerates (`None`: no budget).
    pub budget_tolerated: Option<u32>,
    /// Failures counted against the budget, as the scheduler counts them:
    /// jobs failed for good (no automatic retry coming, not superseded by
    /// a retry wave) plus jobs in flight whose machine lost contact.
    pub budget_used: u32,
    /// Milliseconds spent paused, a pause in progress included.
    pub paused_ms: u64,
}

impl WaveView {
    fn of(registry: &Registry, liveness: &Liveness, wave: &Wave, now: i64) -> WaveView {
        let phase_counts = registry.phase_counts(&wave.spec.name);
        let jobs: u32 = phase_counts.values().sum();
        let budget_used = registry
            .jobs_of_wave(&wave.spec.name)
            .filter(|job| {
                let job = &job.value;
                counts_as_failure(registry, wave, job)
                    || (job.phase.is_in_flight()
                        && !job.session.is_empty()
                        && job.owner().is_some_and(|owner| liveness.is_lost(owner)))
            })
            .count() as u32;
        WaveView {
            wave: wave.clone(),
            batch_count: batch_count(wave, jobs),
            budget_tolerated: (jobs > 0)
                .then_some(wave.spec.policy.error_budget)
                .flatten()
                .map(|budget| budget.tolerated(jobs)),
            budget_used,
            paused_ms: wave.paused.paused_ms(now),
            phase_counts,
        }
    }
}

/// Whether the scheduler puts the failed `job` back to pending by itself
/// (see `policy::facts::will_retry`): its wave runs or is paused, the
/// failure is retryable and came before anything was sealed, and attempts
/// remain.
fn retried_automatically(wave: &Wave, job: &Job) -> bool {
    job.phase == Phase::Failed
        && matches!(wave.state, WaveState::Running | WaveState::Paused)
        && job
            .failure
            .as_ref()
            .is_some_and(|f| f.retryable && retry_restarts_from(f.phase))
        && job.attempt < wave.spec.policy.retries.max_attempts
}

/// Whether the failed `job` counts against budgets (see
/// `policy::facts::counts_as_failure`): failed for good and not superseded
/// by a later job of its machine.
fn counts_as_failure(registry: &Registry, wave: &Wave, job: &Job) -> bool {
    job.phase == Phase::Failed
        && registry
            .latest_job(&job.machine_id)
            .is_none_or(|latest| latest.value.id == job.id)
        && !retried_automatically(wave, job)
}

/// The batches a started wave of `total` jobs has in all, from its policy
/// (`None` before it has jobs).
pub fn batch_count(wave: &Wave, total: u32) -> Option<u32> {
    if total == 0 {
        return None;
    }
    let batches = &wave.spec.policy.batches;
    let mut admitted: u64 = 0;
    let mut count = 0;
    // Every batch admits at least one machine, so this ends within `total`.
    while admitted < u64::from(total) {
        admitted += u64::from(batches.size_of(count, total).max(1));
        count += 1;
    }
    Some(count)
}

/// Ends a pause in progress at `now`, adding its span to the paused total.
/// Returns the span.
fn close_pause(wave: &mut Wave, now: i64) -> u64 {
    let Some(since) = wave.paused.since_ms.take() else {
        return 0;
    };
    let span = now.saturating_sub(since).max(0) as u64;
    wave.paused.total_ms = wave.paused.total_ms.saturating_add(span);
    span
}

/// A failed machine `retry-failed` left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryExclusion {
    /// The machine.
    pub machine_id: String,
    /// Its hostname.
    pub hostname: String,
    /// Why it was left out.
    pub reason: String,
}

/// What `retry-failed` created.
#[derive(Debug, Clone)]
pub struct RetryView {
    /// The new wave (created, or running when started at once).
    pub wave: Wave,
    /// Hostnames of its machines.
    pub hostnames: Vec<String>,
    /// Failed machines left out.
    pub excluded: Vec<RetryExclusion>,
}

/// A storage node with its latest capacity and the jobs placed on it.
#[derive(Debug, Clone)]
pub struct StorageNodeView {
    /// The registration.
    pub node: StorageNode,
    /// Its latest capacity report (`None`: none since this controller started).
    pub capacity: Option<Capacity>,
    /// Age of that report, by this controller's clock.
    pub report_age_ms: Option<u64>,
    /// Replace jobs not yet over that are placed on it.
    pub placed_jobs: u32,
    /// Whether its latest report is recent enough for it to count as live
    /// (it takes captures and counts as a replica).
    pub live: bool,
}

/// A replace migration whose copies on live nodes are fewer than its
/// replication factor asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderReplicatedView {
    /// The migration (the job id).
    pub migration_id: String,
    /// Its wave.
    pub wave: String,
    /// The copies wanted.
    pub wanted: u32,
    /// The nodes holding a committed copy.
    pub holders: Vec<String>,
    /// Those of them that are live.
    pub live_holders: Vec<String>,
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

    /// Parses and validates a plan with its attached rule files (path as the
    /// plan writes it → XML text) against the current inventory; warnings come
    /// with the parsed plan. Parsing (up to 64 rule files of 2 MiB) runs on a
    /// blocking thread. The outer error is the controller's, the inner one the
    /// plan's problems.
    pub async fn validate_plan_with(
        &self,
        source: &str,
        attachments: &BTreeMap<String, String>,
    ) -> Result<std::result::Result<plan::ParsedPlan, Vec<Problem>>> {
        let machines = self.machines_snapshot();
        let (source, attachments) = (source.to_owned(), attachments.clone());
        tokio::task::spawn_blocking(move || {
            plan::parse_with_attachments(&source, &machines, &attachments)
        })
        .await
        .map_err(|error| Error::Internal(format!("plan validation: {error}")))
    }

    /// Validates and stores a plan, creating its waves.
    ///
    /// Re-applying a plan replaces waves that have not started; a started
    /// wave cannot be redefined.
    pub async fn apply_plan(&self, source: &str, file: &str, actor: &str) -> Result<Plan> {
        self.apply_plan_with(source, file, actor, &BTreeMap::new())
            .await
            .map(|parsed| parsed.plan)
    }

    /// [`Controller::apply_plan`] with the plan's rule files attached.
    pub async fn apply_plan_with(
        &self,
        source: &str,
        file: &str,
        actor: &str,
        attachments: &BTreeMap<String, String>,
    ) -> Result<plan::ParsedPlan> {
        let parsed = self
            .validate_plan_with(source, attachments)
            .await?
            .map_err(|problems| Error::InvalidPlan {
                file: file.to_string(),
                problems: problems.iter().map(|p| p.display(file)).collect(),
            })?;
        let plan = parsed.plan.clone();
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
        Ok(parsed)
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
                let is_destination = spec.pairs.iter().any(|pair| {
                    pair.destination
                        .eq_ignore_ascii_case(&machine.inventory.hostname)
                });
                if is_destination {
                    // Takes part as its pair's destination, not with a job of its own.
                    continue;
                }
                // Auto waves decide per machine; a machine that can be neither
                // refreshed nor replaced is skipped with the reason, not dropped.
                let (scenario, skip_reason) = match plan::resolve_scenario(&spec, machine) {
                    Ok(scenario) => (scenario, None),
                    Err(reason) => (Scenario::Refresh, Some(reason)),
                };
                let destination = spec
                    .pairs
                    .iter()
                    .find(|pair| {
                        pair.source
                            .eq_ignore_ascii_case(&machine.inventory.hostname)
                    })
                    .filter(|_| scenario == Scenario::Replace)
                    .map(|pair| Destination {
                        hostname: pair.destination.clone(),
                        machine_id: String::new(),
                    });
                if scenario == Scenario::Replace && destination.is_none() {
                    continue;
                }
                let phase = if skip_reason.is_some() {
                    Phase::Skipped
                } else {
                    Phase::Pending
                };
                new_jobs.push(Job {
                    id: job_id,
                    wave: name.to_string(),
                    machine_id: machine.id.clone(),
                    scenario,
                    phase,
                    attempt: 0,
                    fence: 0,
                    session: String::new(),
                    // Rule texts stay with the wave's spec (one copy, not one per
                    // job); the assignment takes them from there.
                    capture_options: CaptureOptions {
                        rules: Vec::new(),
                        ..spec.capture.clone()
                    },
                    captured: None,
                    restored: None,
                    failure: None,
                    destination,
                    placement: None,
                    batch: None,
                    phase_since_ms: now_ms(),
                    not_before_ms: None,
                    skip_reason,
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
                    let sealed = self.settings().secrets.master().seal(&key, &secret);
                    txn = txn.when_absent(key.clone()).put(key, keys::encode(&sealed));
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

    /// The rule files `job`'s capture uses: its wave's (jobs do not carry a
    /// copy), or the job's own if its wave is gone.
    pub fn capture_rules(&self, job: &Job) -> Vec<RuleFile> {
        self.registry()
            .waves
            .get(&job.wave)
            .map(|wave| wave.value.spec.capture.rules.clone())
            .unwrap_or_else(|| job.capture_options.rules.clone())
    }

    /// Re-reads a wave from the store into the cache after a lost CAS.
    async fn reload_wave(&self, name: &str) -> Result<()> {
        let key = keys::key(keys::WAVES, name);
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Err(Error::UnknownWave(name.to_string()));
        };
        let wave: Wave = keys::decode(&key, &kv.value)?;
        self.registry().waves.insert(
            name.to_string(),
            Versioned {
                value: wave,
                revision: kv.mod_revision,
            },
        );
        Ok(())
    }

    /// Read-modify-write of one wave with compare-and-swap and retries (the
    /// scheduler writes waves too). `change` returns the new wave and its
    /// audit event, or `None` to leave it as it is.
    async fn update_wave<F>(&self, name: &str, change: F) -> Result<Wave>
    where
        F: Fn(&Wave) -> Result<Option<(Wave, AuditEvent)>>,
    {
        for _ in 0..WAVE_CAS_ATTEMPTS {
            let current = self.wave(name)?;
            let Some((next, event)) = change(&current.value)? else {
                return Ok(current.value);
            };
            match self.put_wave(&current, next, event).await {
                Err(Error::Conflict { .. }) => self.reload_wave(name).await?,
                other => return other,
            }
        }
        Err(Error::Conflict {
            key: keys::key(keys::WAVES, name),
        })
    }

    /// Whether `wave` still lets its started jobs move on (the report path
    /// asks; see [`crate::lifecycle::apply_report_in`]).
    pub(crate) fn wave_gate(&self, wave: &str) -> WaveGate {
        match self.registry().waves.get(wave) {
            Some(w) if w.value.state == WaveState::Aborted => WaveGate::Aborted,
            _ => WaveGate::Open,
        }
    }

    /// Stops admitting new jobs and freezes the wave's deadlines; running
    /// jobs continue. Pausing a paused wave changes nothing.
    pub async fn pause_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        self.update_wave(name, |wave| match wave.state {
            WaveState::Paused => Ok(None),
            WaveState::Running => {
                let now = now_ms();
                let mut next = wave.clone();
                next.state = WaveState::Paused;
                next.paused.since_ms = Some(now);
                let event = operator_event(
                    actor,
                    "wave.paused",
                    name,
                    "no new starts; deadlines frozen; running jobs continue".into(),
                );
                Ok(Some((next, event)))
            }
            other => Err(Error::WaveState {
                wave: name.to_string(),
                state: other.name(),
                action: "pause it (only a running wave can be paused)",
            }),
        })
        .await
    }

    /// Admits jobs again after a pause (the paused span is added to the
    /// wave's paused total, so deadlines leave it out) or after a halt by
    /// an error budget (the audit event names the halt's reason).
    pub async fn resume_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        self.update_wave(name, |wave| match wave.state {
            WaveState::Running => Ok(None),
            WaveState::Paused | WaveState::Halted => {
                let now = now_ms();
                let mut next = wave.clone();
                next.state = WaveState::Running;
                let paused_for = close_pause(&mut next, now);
                let detail = if wave.state == WaveState::Halted {
                    format!(
                        "resumed after a halt: {}",
                        wave.halt_reason.as_deref().unwrap_or("no reason recorded")
                    )
                } else {
                    format!("resumed after {paused_for} ms paused")
                };
                Ok(Some((
                    next,
                    operator_event(actor, "wave.resumed", name, detail),
                )))
            }
            other => Err(Error::WaveState {
                wave: name.to_string(),
                state: other.name(),
                action: "resume it (only a paused or halted wave can be resumed)",
            }),
        })
        .await
    }

    /// Lets a running wave's next batch open: a manual advance, or past
    /// success criteria its current batch did not meet. Promoting a
    /// promoted batch changes nothing.
    pub async fn promote_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        let batches = self.batch_count_of(name)?;
        self.update_wave(name, |wave| {
            if wave.state != WaveState::Running {
                return Err(Error::WaveState {
                    wave: name.to_string(),
                    state: wave.state.name(),
                    action: "promote its batch (only a running wave has a batch to promote)",
                });
            }
            if wave.batch.promoted {
                return Ok(None);
            }
            let mut next = wave.clone();
            next.batch.promoted = true;
            let of = batches.map(|n| format!(" of {n}")).unwrap_or_default();
            let detail = format!(
                "batch {}{of} promoted: the next batch may open",
                wave.batch.index + 1
            );
            Ok(Some((
                next,
                operator_event(actor, "wave.promoted", name, detail),
            )))
        })
        .await
    }

    fn batch_count_of(&self, name: &str) -> Result<Option<u32>> {
        let wave = self.wave(name)?;
        let jobs = self.registry().jobs_of_wave(name).count() as u32;
        Ok(batch_count(&wave.value, jobs))
    }

    /// Aborts a wave. Nothing new starts: jobs not started are skipped
    /// (`wave aborted by <actor>`), a running capture may finish and then
    /// stops with its state kept (never into the reimage), and jobs past
    /// their capture run to their end. Safe to repeat: a second abort
    /// sweeps the jobs again.
    pub async fn abort_wave(&self, name: &str, actor: &str) -> Result<Wave> {
        let summary = {
            let registry = self.registry();
            let mut skip = 0;
            let mut finish_capture = 0;
            let mut run_to_end = 0;
            for job in registry.jobs_of_wave(name) {
                match lifecycle::abort_step(&job.value, actor) {
                    AbortStep::Skip(_) => skip += 1,
                    AbortStep::FinishCapture => finish_capture += 1,
                    AbortStep::RunToEnd => run_to_end += 1,
                    AbortStep::Over => {}
                }
            }
            format!(
                "{skip} jobs skipped, {finish_capture} captures finish and stop with their \
                 state kept, {run_to_end} jobs past their capture run to their end"
            )
        };
        let wave = self
            .update_wave(name, |wave| match wave.state {
                WaveState::Aborted => Ok(None),
                WaveState::Created | WaveState::Running | WaveState::Paused | WaveState::Halted => {
                    let now = now_ms();
                    let mut next = wave.clone();
                    next.state = WaveState::Aborted;
                    next.finished_ms = Some(now);
                    close_pause(&mut next, now);
                    Ok(Some((
                        next,
                        operator_event(actor, "wave.aborted", name, summary.clone()),
                    )))
                }
                WaveState::Completed => Err(Error::WaveState {
                    wave: name.to_string(),
                    state: WaveState::Completed.name(),
                    action: "abort it (every job is over)",
                }),
            })
            .await?;
        let to_skip: Vec<String> = self
            .registry()
            .jobs_of_wave(name)
            .filter(|job| matches!(lifecycle::abort_step(&job.value, actor), AbortStep::Skip(_)))
            .map(|job| job.value.id.clone())
            .collect();
        for job_id in to_skip {
            self.update_job(&job_id, |job| match lifecycle::abort_step(job, actor) {
                AbortStep::Skip(next) => {
                    let detail = format!(
                        "{} -> skipped: {}",
                        job.phase.name(),
                        next.skip_reason.as_deref().unwrap_or_default()
                    );
                    let event = job_event(&next, actor, "job.phase", detail);
                    Ok(Some((*next, vec![event])))
                }
                _ => Ok(None),
            })
            .await?;
        }
        Ok(wave)
    }

    /// Creates a wave `<name>-retry-<n>` holding the failed machines of
    /// wave `name` (for a replace wave, with the same pairs), with the same
    /// spec and policy and `retry_of = name`; starts it when `start`.
    ///
    /// Left out, with the reason: machines that moved on to another job or
    /// sit in another retry wave not started yet, and refresh machines that
    /// failed after their reimage began (their state waits in their store
    /// for a restore; a new capture would take the fresh system instead).
    pub async fn retry_failed(&self, name: &str, actor: &str, start: bool) -> Result<RetryView> {
        let (wave, machines, excluded) = {
            let registry = self.registry();
            let source = registry
                .waves
                .get(name)
                .ok_or_else(|| Error::UnknownWave(name.to_string()))?
                .value
                .clone();
            let mut root = source.spec.name.clone();
            let mut hops = 0;
            while let Some(parent) = registry
                .waves
                .get(&root)
                .and_then(|w| w.value.retry_of.clone())
                .filter(|_| hops < registry.waves.len())
            {
                root = parent;
                hops += 1;
            }
            let retry_name = (1..)
                .map(|n| format!("{root}-retry-{n}"))
                .find(|candidate| !registry.waves.contains_key(candidate))
                .unwrap_or_default();
            if !plan::is_valid_name(&retry_name) {
                return Err(Error::InvalidArgument(format!(
                    "the retry wave's name {retry_name:?} is not a valid wave name \
                     (letters, digits, '-', '_', at most 64 characters)"
                )));
            }
            // Machines already waiting in a retry wave not started yet.
            let mut queued: BTreeMap<String, String> = BTreeMap::new();
            for other in registry.waves.values().map(|w| &w.value) {
                if other.retry_of.as_deref() == Some(name) && other.state == WaveState::Created {
                    for id in &other.spec.select.ids {
                        queued.insert(id.clone(), other.spec.name.clone());
                    }
                }
            }
            let mut machines: Vec<(String, String, Option<Association>)> = Vec::new();
            let mut excluded = Vec::new();
            for job in registry.jobs_of_wave(name).map(|j| &j.value) {
                if job.phase != Phase::Failed {
                    continue;
                }
                let hostname = registry
                    .machines
                    .get(&job.machine_id)
                    .map(|m| m.value.inventory.hostname.clone())
                    .unwrap_or_default();
                let failed_in = job.failure.as_ref().map_or(Phase::Failed, |f| f.phase);
                let reason = if let Some(latest) = registry
                    .latest_job(&job.machine_id)
                    .filter(|latest| latest.value.id != job.id)
                {
                    Some(format!(
                        "moved on to job {} ({})",
                        latest.value.id,
                        latest.value.phase.name()
                    ))
                } else if let Some(other) = queued.get(&job.machine_id) {
                    Some(format!("already in retry wave {other}"))
                } else if retried_automatically(&source, job) {
                    Some(format!(
                        "the wave's retry policy retries it (attempt {} of {})",
                        job.attempt, source.spec.policy.retries.max_attempts
                    ))
                } else if job.scenario == Scenario::Refresh
                    && matches!(
                        failed_in,
                        Phase::Reimaging | Phase::Restoring | Phase::Verifying
                    )
                {
                    let store = job
                        .captured
                        .as_ref()
                        .map(|c| c.store_location.clone())
                        .filter(|l| !l.is_empty())
                        .unwrap_or_else(|| "the machine's state store".into());
                    Some(format!(
                        "failed in {} after its reimage began; its state is kept at {store} \
                         and needs a restore (fleetmig-worker load), not a new capture",
                        failed_in.name()
                    ))
                } else if job.scenario == Scenario::Replace && job.destination.is_none() {
                    Some("replace job without a destination".into())
                } else {
                    None
                };
                match reason {
                    Some(reason) => excluded.push(RetryExclusion {
                        machine_id: job.machine_id.clone(),
                        hostname,
                        reason,
                    }),
                    None => {
                        let pair = job.destination.as_ref().map(|d| Association {
                            source: hostname.clone(),
                            destination: d.hostname.clone(),
                        });
                        machines.push((job.machine_id.clone(), hostname, pair));
                    }
                }
            }
            if machines.is_empty() {
                let detail = excluded
                    .iter()
                    .map(|e| format!("{}: {}", e.hostname, e.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Error::NothingToRetry {
                    wave: name.to_string(),
                    detail,
                });
            }
            machines.sort_by_key(|(_, hostname, _)| hostname.to_ascii_lowercase());
            let mut spec = source.spec.clone();
            spec.name = retry_name;
            spec.select = Selector {
                ids: machines.iter().map(|(id, _, _)| id.clone()).collect(),
                ..Selector::default()
            };
            spec.pairs = machines
                .iter()
                .filter_map(|(_, _, pair)| pair.clone())
                .collect();
            let wave = Wave {
                spec,
                plan: source.plan.clone(),
                state: WaveState::Created,
                machines: 0,
                started_ms: None,
                finished_ms: None,
                batch: Default::default(),
                halt_reason: None,
                paused: Default::default(),
                retry_of: Some(name.to_string()),
            };
            (wave, machines, excluded)
        };
        let retry_name = wave.spec.name.clone();
        let hostnames: Vec<String> = machines.into_iter().map(|(_, h, _)| h).collect();
        let key = keys::key(keys::WAVES, &retry_name);
        let txn = Txn::new()
            .when_absent(key.clone())
            .put(key, keys::encode(&wave));
        let mut detail = format!(
            "created wave {retry_name} with {} failed machines: {}",
            hostnames.len(),
            hostnames.join(", ")
        );
        if !excluded.is_empty() {
            detail.push_str(&format!("; {} left out", excluded.len()));
        }
        let events = vec![
            operator_event(actor, "wave.retry_failed", name, detail),
            operator_event(
                actor,
                "wave.create",
                &retry_name,
                format!("retries {} failed machines of wave {name}", hostnames.len()),
            ),
        ];
        let revision = self.commit(txn, events).await?;
        self.registry().waves.insert(
            retry_name.clone(),
            Versioned {
                value: wave.clone(),
                revision,
            },
        );
        let wave = if start {
            self.start_wave(&retry_name, actor).await?
        } else {
            wave
        };
        Ok(RetryView {
            wave,
            hostnames,
            excluded,
        })
    }

    /// Waves and their jobs.
    pub fn status(&self, wave: Option<&str>) -> Result<StatusView> {
        let registry = self.registry();
        if let Some(name) = wave
            && !registry.waves.contains_key(name)
        {
            return Err(Error::UnknownWave(name.to_string()));
        }
        let now = now_ms();
        let waves: Vec<WaveView> = registry
            .waves
            .values()
            .filter(|w| wave.is_none_or(|name| name == w.value.spec.name))
            .map(|w| WaveView::of(&registry, &self.inner.liveness, &w.value, now))
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
                    waiting: waiting_reason(&registry, &view.wave, &job.value, now),
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

    /// Registered storage nodes with their latest capacity and placed jobs.
    pub fn storage_node_views(&self) -> Vec<StorageNodeView> {
        let now = now_ms();
        let mut placed: BTreeMap<String, u32> = BTreeMap::new();
        for job in self.registry().jobs.values().map(|j| &j.value) {
            if let Some(placement) = job.placement.as_ref().filter(|_| !job.phase.is_terminal()) {
                *placed.entry(placement.node_id.clone()).or_default() += 1;
            }
        }
        let live = self.live_nodes();
        self.storage_nodes()
            .into_iter()
            .map(|(node, capacity)| StorageNodeView {
                report_age_ms: capacity
                    .as_ref()
                    .map(|c| now.saturating_sub(c.reported_ms).max(0) as u64),
                placed_jobs: placed.get(&node.id).copied().unwrap_or(0),
                live: live.contains(&node.id),
                node,
                capacity,
            })
            .collect()
    }

    /// Replace migrations not yet over whose committed copies on live
    /// nodes are fewer than their replication factor, by wave then id.
    pub fn under_replicated(&self) -> Vec<UnderReplicatedView> {
        let live = self.live_nodes();
        let mut views: Vec<UnderReplicatedView> = self
            .registry()
            .jobs
            .values()
            .filter_map(|job| {
                let job = &job.value;
                let (wanted, holders, live_holders) = job.live_copies(&live)?;
                (live_holders.len() < wanted as usize).then(|| UnderReplicatedView {
                    migration_id: job.id.clone(),
                    wave: job.wave.clone(),
                    wanted,
                    holders,
                    live_holders,
                })
            })
            .collect();
        views.sort_by(|a, b| (&a.wave, &a.migration_id).cmp(&(&b.wave, &b.migration_id)));
        views
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

/// Why a pending `job` of `wave` has not started: its wave does not admit
/// (paused, halted), the scheduler's reason for the job (storage, window,
/// caps), a retry backoff, or the scheduler's reason for the whole wave
/// (its batch, its window of jobs in flight).
fn waiting_reason(registry: &Registry, wave: &Wave, job: &Job, now: i64) -> Option<String> {
    if job.phase != Phase::Pending {
        return None;
    }
    match wave.state {
        WaveState::Paused => return Some("wave paused".into()),
        WaveState::Halted => {
            return Some(format!(
                "wave halted: {}",
                wave.halt_reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
        _ => {}
    }
    if let Some(reason) = registry.waiting.get(&job.id) {
        return Some(reason.clone());
    }
    if let Some(not_before) = job.not_before_ms.filter(|not_before| *not_before > now) {
        return Some(format!(
            "retry backoff: {}s left",
            (not_before - now).saturating_add(999) / 1000
        ));
    }
    registry.wave_waiting.get(&wave.spec.name).cloned()
}

#[cfg(test)]
mod tests;
