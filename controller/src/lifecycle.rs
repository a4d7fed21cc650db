//! The job state machine: which transitions a worker may report, and the
//! safety invariants that guard them. Every phase change of a job goes
//! through [`apply_report`]; nothing else in the controller edits `phase`
//! from a worker's word.
//!
//! Invariants enforced here:
//! - no reimage without a verified capture (`Captured` with a summary);
//! - no `Done` (which lets the worker delete its store) without a verified
//!   restore (zero mismatched files);
//! - only the current owner (matching fence) moves a job.

use crate::error::{Error, Result};
use crate::model::{CaptureSummary, Failure, Job, Phase, RestoreSummary, Scenario, now_ms};

/// What a worker reports about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The job entered a phase with no payload.
    Entered(Phase),
    /// The capture finished and was verified.
    Captured(CaptureSummary),
    /// The restore finished and was verified.
    Done(RestoreSummary),
    /// The job failed.
    Failed(Failure),
}

impl Report {
    /// The phase this report moves the job to.
    pub fn phase(&self) -> Phase {
        match self {
            Report::Entered(phase) => *phase,
            Report::Captured(_) => Phase::Captured,
            Report::Done(_) => Phase::Done,
            Report::Failed(_) => Phase::Failed,
        }
    }
}

/// The result of applying a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The job was already in the reported phase (a retried report).
    Unchanged,
    /// The job moved; persist this new value.
    Changed(Box<Job>),
}

/// Whether the state machine has an edge `from -> to` for `scenario`.
pub fn is_edge(scenario: Scenario, from: Phase, to: Phase) -> bool {
    use Phase::*;
    if to == Failed {
        return !from.is_terminal() && from != Pending;
    }
    match scenario {
        Scenario::Refresh => matches!(
            (from, to),
            (Assigned, Capturing)
                | (Capturing, Captured)
                | (Captured, Reimaging)
                | (Reimaging, Restoring)
                | (Restoring, Verifying)
                | (Verifying, Done)
        ),
        Scenario::Replace => matches!(
            (from, to),
            (Assigned, Capturing)
                | (Capturing, Captured)
                | (Captured, Restoring)
                | (Restoring, Verifying)
                | (Verifying, Done)
        ),
    }
}

/// Applies a worker's report to `job`, checking the fence and the invariants.
pub fn apply_report(job: &Job, fence: u64, report: &Report) -> Result<Applied> {
    if fence != job.fence {
        return Err(Error::StaleFence {
            job_id: job.id.clone(),
            presented: fence,
            current: job.fence,
        });
    }
    let to = report.phase();
    if to == job.phase {
        return Ok(Applied::Unchanged);
    }
    if !is_edge(job.scenario, job.phase, to) {
        return Err(Error::InvalidTransition {
            job_id: job.id.clone(),
            from: job.phase.name(),
            to: to.name(),
        });
    }
    let mut next = job.clone();
    next.phase = to;
    match report {
        Report::Entered(Phase::Capturing) => {
            next.started_ms.get_or_insert_with(now_ms);
        }
        Report::Entered(Phase::Reimaging) if job.captured.is_none() => {
            return Err(Error::InvalidTransition {
                job_id: job.id.clone(),
                from: "an unverified capture",
                to: to.name(),
            });
        }
        Report::Entered(_) => {}
        Report::Captured(summary) => {
            if summary.manifest_digest.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "job {}: a verified capture must name its manifest digest",
                    job.id
                )));
            }
            next.captured = Some(summary.clone());
            if job.scenario == Scenario::Replace {
                // The source's part is over: the job waits for its
                // destination, which takes it with a fresh fence. Fence 0 is
                // never issued, so the source cannot act on it any more.
                next.session.clear();
                next.fence = 0;
            }
        }
        Report::Done(summary) => {
            if summary.mismatched_files != 0 {
                return Err(Error::InvalidArgument(format!(
                    "job {}: restore has {} mismatched files; report failed, not done",
                    job.id, summary.mismatched_files
                )));
            }
            next.restored = Some(summary.clone());
            next.finished_ms = Some(now_ms());
        }
        Report::Failed(failure) => {
            next.failure = Some(failure.clone());
            next.finished_ms = Some(now_ms());
        }
    }
    Ok(Applied::Changed(Box::new(next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CaptureOptions;

    fn job(phase: Phase) -> Job {
        Job {
            id: "w.m".into(),
            wave: "w".into(),
            machine_id: "m".into(),
            scenario: Scenario::Refresh,
            phase,
            attempt: 1,
            fence: 7,
            session: "s".into(),
            capture_options: CaptureOptions::default(),
            captured: None,
            restored: None,
            failure: None,
            destination: None,
            placement: None,
            batch: None,
            phase_since_ms: 0,
            not_before_ms: None,
            skip_reason: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
        }
    }

    fn captured() -> CaptureSummary {
        CaptureSummary {
            files: 3,
            manifest_digest: "abc".into(),
            ..CaptureSummary::default()
        }
    }

    #[test]
    fn walks_the_refresh_path() {
        let mut current = job(Phase::Assigned);
        let reports = [
            Report::Entered(Phase::Capturing),
            Report::Captured(captured()),
            Report::Entered(Phase::Reimaging),
            Report::Entered(Phase::Restoring),
            Report::Entered(Phase::Verifying),
            Report::Done(RestoreSummary::default()),
        ];
        for report in &reports {
            match apply_report(&current, 7, report).unwrap() {
                Applied::Changed(next) => current = *next,
                Applied::Unchanged => panic!("{report:?} did not move the job"),
            }
        }
        assert_eq!(current.phase, Phase::Done);
        assert!(current.finished_ms.is_some());
    }

    #[test]
    fn no_reimage_without_a_verified_capture() {
        let mut unverified = job(Phase::Captured);
        unverified.captured = None;
        let err = apply_report(&unverified, 7, &Report::Entered(Phase::Reimaging)).unwrap_err();
        assert!(matches!(err, Error::InvalidTransition { .. }));
        let err = apply_report(
            &job(Phase::Capturing),
            7,
            &Report::Entered(Phase::Reimaging),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidTransition { .. }));
    }

    #[test]
    fn a_capture_without_digest_is_not_verified() {
        let err = apply_report(
            &job(Phase::Capturing),
            7,
            &Report::Captured(CaptureSummary::default()),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }

    #[test]
    fn no_done_with_mismatches() {
        let summary = RestoreSummary {
            mismatched_files: 1,
            ..RestoreSummary::default()
        };
        assert!(apply_report(&job(Phase::Verifying), 7, &Report::Done(summary)).is_err());
    }

    #[test]
    fn stale_fences_are_refused_and_repeats_are_idempotent() {
        let current = job(Phase::Capturing);
        assert!(matches!(
            apply_report(&current, 6, &Report::Entered(Phase::Capturing)),
            Err(Error::StaleFence { .. })
        ));
        assert_eq!(
            apply_report(&current, 7, &Report::Entered(Phase::Capturing)).unwrap(),
            Applied::Unchanged
        );
    }

    #[test]
    fn terminal_jobs_do_not_move() {
        for phase in [Phase::Done, Phase::Failed, Phase::Skipped] {
            let failure = Failure {
                phase,
                reason: "x".into(),
                retryable: false,
            };
            let report = if phase == Phase::Failed {
                Report::Entered(Phase::Capturing)
            } else {
                Report::Failed(failure)
            };
            assert!(apply_report(&job(phase), 7, &report).is_err());
        }
    }

    #[test]
    fn a_sealed_replace_capture_hands_the_job_to_its_destination() {
        let mut capturing = job(Phase::Capturing);
        capturing.scenario = Scenario::Replace;
        let Applied::Changed(next) =
            apply_report(&capturing, 7, &Report::Captured(captured())).unwrap()
        else {
            panic!("expected a change");
        };
        assert_eq!(next.phase, Phase::Captured);
        assert!(next.session.is_empty(), "the source session is released");
        assert_eq!(next.fence, 0, "the source's fence is revoked");
        // The source can no longer move the job, not even to restoring.
        assert!(matches!(
            apply_report(&next, 7, &Report::Entered(Phase::Restoring)),
            Err(Error::StaleFence { .. })
        ));
        // A replace job never reimages anything.
        let mut captured_job = (*next).clone();
        captured_job.fence = 9;
        assert!(matches!(
            apply_report(&captured_job, 9, &Report::Entered(Phase::Reimaging)),
            Err(Error::InvalidTransition { .. })
        ));
    }
}
