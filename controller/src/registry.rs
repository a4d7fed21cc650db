//! The controller's in-memory view of the store, with the indexes the hot
//! paths need. It is a cache: the store is the truth, every entry carries
//! the store revision it was read or written at, and writes go to the store
//! first (compare-and-swap on that revision) and only then here.

use crate::model::{Job, Machine, Phase, Plan, Wave};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A cached value and the store revision it corresponds to.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its `mod_revision` in the store.
    pub revision: u64,
}

/// Latest live progress of a running job (never persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files processed.
    pub files_done: u64,
    /// Files to process.
    pub files_total: u64,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes to process.
    pub bytes_total: u64,
    /// Profile being processed.
    pub current_user: String,
}

/// Indexed in-memory state.
#[derive(Debug, Default)]
pub struct Registry {
    /// Machines by id.
    pub machines: HashMap<String, Versioned<Machine>>,
    /// Machine id by lowercase hostname.
    pub hostnames: HashMap<String, String>,
    /// Plans by name.
    pub plans: BTreeMap<String, Versioned<Plan>>,
    /// Waves by name.
    pub waves: BTreeMap<String, Versioned<Wave>>,
    /// Jobs by id.
    pub jobs: HashMap<String, Versioned<Job>>,
    /// Job ids per wave, in admission order (by hostname).
    pub wave_jobs: HashMap<String, Vec<String>>,
    /// Job ids per machine, oldest first.
    pub machine_jobs: HashMap<String, Vec<String>>,
    /// Live progress by job id.
    pub progress: HashMap<String, Progress>,
    /// Replace job ids by the destination's lowercase hostname.
    pub destination_jobs: HashMap<String, Vec<String>>,
    /// Migration keys of replace jobs, by job id.
    pub migration_keys: HashMap<String, [u8; 32]>,
    /// Why a pending job cannot start yet (e.g. no storage node has room).
    pub waiting: HashMap<String, String>,
    /// Why a wave's pending jobs wait, wave-wide (its batch, its window of
    /// jobs in flight, its budget), as the scheduler last decided.
    pub wave_waiting: HashMap<String, String>,
    /// Per wave, the pending jobs the scheduler gave a reason in `waiting`
    /// (so it can take back the reasons that no longer hold).
    pub waiting_by_wave: HashMap<String, HashSet<String>>,
    /// Per wave, positions in `wave_jobs` of its queued jobs: pending and
    /// never admitted. A scheduling pass reads them only as far as it admits.
    pub queued: HashMap<String, BTreeSet<u32>>,
    /// Per wave, positions in `wave_jobs` of its other jobs that are neither
    /// done nor skipped: in flight, failed, or pending again for a retry.
    /// With `queued`, what a pass walks, so finished jobs cost nothing.
    pub active: HashMap<String, BTreeSet<u32>>,
    /// Each job's position in its wave's `wave_jobs`.
    pub positions: HashMap<String, u32>,
}

impl Registry {
    /// Inserts or replaces a machine.
    pub fn put_machine(&mut self, machine: Machine, revision: u64) {
        self.hostnames.insert(
            machine.inventory.hostname.to_ascii_lowercase(),
            machine.id.clone(),
        );
        self.machines.insert(
            machine.id.clone(),
            Versioned {
                value: machine,
                revision,
            },
        );
    }

    /// Inserts or replaces a job, maintaining the indexes.
    pub fn put_job(&mut self, job: Job, revision: u64) {
        if !self.jobs.contains_key(&job.id) {
            let ids = self.wave_jobs.entry(job.wave.clone()).or_default();
            self.positions.insert(job.id.clone(), ids.len() as u32);
            ids.push(job.id.clone());
            self.machine_jobs
                .entry(job.machine_id.clone())
                .or_default()
                .push(job.id.clone());
            if let Some(destination) = &job.destination {
                self.destination_jobs
                    .entry(destination.hostname.to_ascii_lowercase())
                    .or_default()
                    .push(job.id.clone());
            }
        }
        if job.phase != Phase::Pending {
            self.waiting.remove(&job.id);
        }
        self.track_live(&job);
        if job.phase.is_terminal() {
            self.progress.remove(&job.id);
        }
        self.jobs.insert(
            job.id.clone(),
            Versioned {
                value: job,
                revision,
            },
        );
    }

    /// Keeps [`Registry::queued`] and [`Registry::active`] in step with the
    /// job's phase.
    fn track_live(&mut self, job: &Job) {
        let Some(&position) = self.positions.get(&job.id) else {
            return;
        };
        let queued = job.phase == Phase::Pending && job.batch.is_none();
        let active = !queued && !matches!(job.phase, Phase::Done | Phase::Skipped);
        set_member(&mut self.queued, &job.wave, position, queued);
        set_member(&mut self.active, &job.wave, position, active);
    }

    fn jobs_at<'a>(
        &'a self,
        wave: &str,
        positions: Option<&'a BTreeSet<u32>>,
    ) -> impl Iterator<Item = &'a Versioned<Job>> + 'a {
        let ids = self.wave_jobs.get(wave);
        positions
            .into_iter()
            .flatten()
            .filter_map(move |position| ids?.get(*position as usize))
            .filter_map(|id| self.jobs.get(id))
    }

    /// The wave's queued jobs (pending, never admitted), in admission order.
    pub fn queued_jobs_of_wave<'a>(
        &'a self,
        wave: &str,
    ) -> impl Iterator<Item = &'a Versioned<Job>> + 'a {
        self.jobs_at(wave, self.queued.get(wave))
    }

    /// How many queued jobs the wave has.
    pub fn queued_count(&self, wave: &str) -> u32 {
        self.queued.get(wave).map_or(0, |set| set.len() as u32)
    }

    /// The wave's jobs in flight, failed, or pending again for a retry, in
    /// admission order.
    pub fn active_jobs_of_wave<'a>(
        &'a self,
        wave: &str,
    ) -> impl Iterator<Item = &'a Versioned<Job>> + 'a {
        self.jobs_at(wave, self.active.get(wave))
    }

    /// The machine's job that is not terminal, if any.
    pub fn active_job(&self, machine_id: &str) -> Option<&Versioned<Job>> {
        self.machine_jobs
            .get(machine_id)?
            .iter()
            .rev()
            .filter_map(|id| self.jobs.get(id))
            .find(|job| !job.value.phase.is_terminal())
    }

    /// The job `machine_id` should be running now, if any: its own job
    /// (a refresh, or the capture part of a replace), or a replace job
    /// whose capture is sealed and whose destination is this machine.
    pub fn assignable_job(&self, machine_id: &str) -> Option<&Versioned<Job>> {
        if let Some(job) = self
            .active_job(machine_id)
            .filter(|job| !job.value.with_destination())
        {
            return Some(job);
        }
        let hostname = self
            .machines
            .get(machine_id)?
            .value
            .inventory
            .hostname
            .to_ascii_lowercase();
        self.destination_jobs
            .get(&hostname)?
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .find(|job| {
                job.value.with_destination()
                    && !job.value.phase.is_terminal()
                    && job
                        .value
                        .destination
                        .as_ref()
                        .is_some_and(|d| d.machine_id.is_empty() || d.machine_id == machine_id)
            })
    }

    /// The machine's most recent job, if any.
    pub fn latest_job(&self, machine_id: &str) -> Option<&Versioned<Job>> {
        self.machine_jobs
            .get(machine_id)?
            .last()
            .and_then(|id| self.jobs.get(id))
    }

    /// The jobs of a wave.
    pub fn jobs_of_wave<'a>(&'a self, wave: &str) -> impl Iterator<Item = &'a Versioned<Job>> {
        self.wave_jobs
            .get(wave)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
    }

    /// Jobs per phase name for a wave.
    pub fn phase_counts(&self, wave: &str) -> BTreeMap<&'static str, u32> {
        let mut counts = BTreeMap::new();
        for job in self.jobs_of_wave(wave) {
            *counts.entry(job.value.phase.name()).or_insert(0) += 1;
        }
        counts
    }

    /// Number of the wave's jobs occupying its window.
    pub fn in_flight(&self, wave: &str) -> usize {
        self.jobs_of_wave(wave)
            .filter(|job| job.value.phase.is_in_flight())
            .count()
    }

    /// Whether every job of the wave is terminal.
    pub fn wave_finished(&self, wave: &str) -> bool {
        self.jobs_of_wave(wave)
            .all(|job| job.value.phase.is_terminal())
    }

    /// Pending jobs of the wave, in admission order.
    pub fn pending<'a>(&'a self, wave: &str) -> impl Iterator<Item = &'a Versioned<Job>> {
        self.jobs_of_wave(wave)
            .filter(|job| job.value.phase == Phase::Pending)
    }
}

/// Adds `position` to (or removes it from) `wave`'s set in `map`.
fn set_member(map: &mut HashMap<String, BTreeSet<u32>>, wave: &str, position: u32, member: bool) {
    match map.get_mut(wave) {
        Some(set) if member => {
            set.insert(position);
        }
        Some(set) => {
            set.remove(&position);
        }
        None if member => {
            map.insert(wave.to_string(), BTreeSet::from([position]));
        }
        None => {}
    }
}
