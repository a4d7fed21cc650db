//! The controller's in-memory view of the store, with the indexes the hot
//! paths need. It is a cache: the store is the truth, every entry carries
//! the store revision it was read or written at, and writes go to the store
//! first (compare-and-swap on that revision) and only then here.

use crate::model::{Job, Machine, Phase, Plan, Wave};
use std::collections::{BTreeMap, HashMap};

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
            self.wave_jobs
                .entry(job.wave.clone())
                .or_default()
                .push(job.id.clone());
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
