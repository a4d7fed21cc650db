//! The job state machine: which transitions a worker may report, and the
//! safety invariants that guard them. Every phase change of a job goes
//! through [`apply_report`]; nothing else in the controller edits `phase`
//! from a worker's word.
//!
//! Invariants enforced here:
//! - no reimage without a verified capture (`Captured` with a summary);
//! - no `Done` (which lets the worker delete its store) without a verified
//!   restore (zero mismatched files);
//! - only the current owner (matching fence) moves a job;
//! - a replace capture counts as verified only once it is copied to every
//!   replica node chosen at admission (`replica_node_ids` of the CAPTURED
//!   report); the primary and those replicas become the job's holders;
//! - an aborted wave starts nothing new: a job not started is skipped, a
//!   running capture may finish but the job then stops with its state kept
//!   (never into `Reimaging`), and a job past its capture (reimaging,
//!   restoring, verifying) runs to its end, never cut mid-reimage
//!   ([`abort_step`], and [`WaveGate::Aborted`] in [`apply_report_in`]).

use crate::error::{Error, Result};
use crate::model::{
    CaptureSummary, Failure, Job, Phase, Placement, RestoreSummary, Scenario, now_ms,
};

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
    /// The job's wave was aborted and the job reached a safe point: persist
    /// this value (the job `Skipped`, with its reason and any capture kept),
    /// then refuse the report so the worker goes no further.
    Stopped(Box<Job>),
}

/// What the job's wave allows, as the report path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveGate {
    /// Created, running, paused, halted or completed: a started job goes on.
    Open,
    /// Aborted: the job goes no further than its next safe point.
    Aborted,
}

/// What aborting its wave does to a job right away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortStep {
    /// The job is at a safe point (not started, or its capture sealed and
    /// nothing destructive begun): persist this value, the job `Skipped`.
    Skip(Box<Job>),
    /// A capture is running: it may finish; the job stops when it reports
    /// the sealed capture (see [`apply_report_in`]).
    FinishCapture,
    /// Past the point of no return (reimaging, restoring, verifying): the
    /// job runs to its end.
    RunToEnd,
    /// The job is already over.
    Over,
}

/// The job, skipped for `reason` (terminal; a capture it holds is kept).
fn skipped(job: &Job, reason: String) -> Job {
    let mut next = job.clone();
    next.phase = Phase::Skipped;
    next.skip_reason = Some(reason);
    next.finished_ms = Some(now_ms());
    next.phase_since_ms = now_ms();
    next
}

/// Why a job with a sealed capture stops there, naming where the state is.
fn kept_after_capture(job: &Job) -> String {
    let location = job
        .captured
        .as_ref()
        .map(|c| c.store_location.as_str())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .or_else(|| {
            job.placement
                .as_ref()
                .map(|p| format!("storage node {}", p.node_id))
        })
        .unwrap_or_else(|| "the source machine".to_string());
    format!("aborted after capture; state kept at {location}")
}

/// What an abort of its wave by `actor` does to `job` now.
pub fn abort_step(job: &Job, actor: &str) -> AbortStep {
    match job.phase {
        Phase::Pending | Phase::Assigned => {
            AbortStep::Skip(Box::new(skipped(job, format!("wave aborted by {actor}"))))
        }
        Phase::Capturing => AbortStep::FinishCapture,
        Phase::Captured => AbortStep::Skip(Box::new(skipped(job, kept_after_capture(job)))),
        Phase::Reimaging | Phase::Restoring | Phase::Verifying => AbortStep::RunToEnd,
        Phase::Done | Phase::Failed | Phase::Skipped => AbortStep::Over,
    }
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

/// Applies a worker's report to a job whose wave is not aborted.
///
/// The report path uses [`apply_report_in`] with the wave's gate; this is
/// the same with [`WaveGate::Open`].
pub fn apply_report(job: &Job, fence: u64, report: &Report) -> Result<Applied> {
    apply_report_in(job, fence, report, WaveGate::Open)
}

/// Applies a worker's report to `job`, checking the fence and the
/// invariants, in a wave that `gate` describes.
///
/// In an aborted wave a report that would move the job on from a safe point
/// stops it instead ([`Applied::Stopped`]): a job not started yet, a sealed
/// capture (`Captured`, reported now or earlier) which then never goes on
/// to `Reimaging` (or, for replace, to the destination's restore).
/// Failures are recorded as usual, and jobs past their capture run on.
pub fn apply_report_in(job: &Job, fence: u64, report: &Report, gate: WaveGate) -> Result<Applied> {
    let next = match advance(job, fence, report)? {
        Applied::Changed(next) => next,
        other => return Ok(other),
    };
    if gate == WaveGate::Aborted && next.phase != Phase::Failed {
        let reason = match job.phase {
            Phase::Pending | Phase::Assigned => Some("wave aborted before the job started".into()),
            // The capture just sealed, or sealed earlier and the job was not
            // swept yet: either way nothing destructive has begun.
            Phase::Capturing if next.phase == Phase::Captured => Some(kept_after_capture(&next)),
            Phase::Captured => Some(kept_after_capture(&next)),
            _ => None,
        };
        if let Some(reason) = reason {
            return Ok(Applied::Stopped(Box::new(skipped(&next, reason))));
        }
    }
    Ok(Applied::Changed(next))
}

/// The nodes holding a replace capture that `summary` reports sealed:
/// the primary, then the replicas. Every replica node chosen at admission
/// must be among `summary.replica_node_ids`, and nothing else may be.
fn holders_after_capture(
    job: &Job,
    placement: &Placement,
    summary: &CaptureSummary,
) -> Result<Vec<String>> {
    let unknown: Vec<&str> = summary
        .replica_node_ids
        .iter()
        .filter(|id| !placement.is_replica(id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "job {}: the capture names replicas on nodes {} that were not chosen for it (its \
             replica nodes: {})",
            job.id,
            unknown.join(", "),
            replica_list(placement)
        )));
    }
    let missing: Vec<&str> = placement
        .replicas
        .iter()
        .map(|r| r.node_id.as_str())
        .filter(|id| !summary.replica_node_ids.iter().any(|r| r == id))
        .collect();
    if !missing.is_empty() {
        return Err(replicas_missing(job, placement, &missing));
    }
    let mut holders = vec![placement.node_id.clone()];
    holders.extend(placement.replicas.iter().map(|r| r.node_id.clone()));
    Ok(holders)
}

/// The planned replica nodes, for messages.
fn replica_list(placement: &Placement) -> String {
    if placement.replicas.is_empty() {
        "none".into()
    } else {
        let ids: Vec<&str> = placement
            .replicas
            .iter()
            .map(|r| r.node_id.as_str())
            .collect();
        ids.join(", ")
    }
}

/// The refusal of a CAPTURED report whose copies on the replica nodes
/// `missing` are not reported (FAILED_PRECONDITION: the capture is not
/// verified until every copy is committed). The missing nodes are logged;
/// the error names the rule.
fn replicas_missing(job: &Job, placement: &Placement, missing: &[&str]) -> Error {
    tracing::warn!(
        job_id = %job.id,
        missing = %missing.join(", "),
        factor = placement.wanted(),
        "refused a capture not copied to every replica node"
    );
    Error::InvalidTransition {
        job_id: job.id.clone(),
        from: "a capture missing on a replica node",
        to: "captured (copy it to every replica node of the assignment first)",
    }
}

/// The state machine proper: fence, edges and their invariants.
fn advance(job: &Job, fence: u64, report: &Report) -> Result<Applied> {
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
    next.phase_since_ms = now_ms();
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
                if let Some(placement) = next.placement.as_mut() {
                    placement.holders = holders_after_capture(job, placement, summary)?;
                }
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
                other => panic!("{report:?} did not move the job: {other:?}"),
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

    fn report_step(job: &Job, report: &Report, gate: WaveGate) -> Applied {
        apply_report_in(job, job.fence, report, gate).unwrap()
    }

    #[test]
    fn abort_skips_unstarted_jobs_and_sealed_captures_only() {
        for phase in [Phase::Pending, Phase::Assigned] {
            let AbortStep::Skip(next) = abort_step(&job(phase), "operator:alice") else {
                panic!("{phase:?} is not started and must be skipped");
            };
            assert_eq!(next.phase, Phase::Skipped);
            assert_eq!(
                next.skip_reason.as_deref(),
                Some("wave aborted by operator:alice")
            );
            assert!(next.finished_ms.is_some());
        }
        assert_eq!(
            abort_step(&job(Phase::Capturing), "operator:alice"),
            AbortStep::FinishCapture
        );
        let mut sealed = job(Phase::Captured);
        sealed.captured = Some(CaptureSummary {
            store_location: "C:/StateStore/w.m".into(),
            ..captured()
        });
        let AbortStep::Skip(next) = abort_step(&sealed, "operator:alice") else {
            panic!("a sealed capture is a safe point");
        };
        assert_eq!(
            next.skip_reason.as_deref(),
            Some("aborted after capture; state kept at C:/StateStore/w.m")
        );
        assert_eq!(next.captured, sealed.captured, "the capture is kept");
        for phase in [Phase::Reimaging, Phase::Restoring, Phase::Verifying] {
            assert_eq!(abort_step(&job(phase), "x"), AbortStep::RunToEnd);
        }
        for phase in [Phase::Done, Phase::Failed, Phase::Skipped] {
            assert_eq!(abort_step(&job(phase), "x"), AbortStep::Over);
        }
    }

    #[test]
    fn an_aborted_wave_stops_a_capture_at_its_seal_never_at_reimaging() {
        let capturing = job(Phase::Capturing);
        let sealed = Report::Captured(CaptureSummary {
            store_location: "C:/StateStore/w.m".into(),
            ..captured()
        });
        let Applied::Stopped(stopped) = report_step(&capturing, &sealed, WaveGate::Aborted) else {
            panic!("the sealed capture must stop the job");
        };
        assert_eq!(stopped.phase, Phase::Skipped);
        assert_eq!(stopped.captured.as_ref().unwrap().manifest_digest, "abc");
        assert_eq!(
            stopped.skip_reason.as_deref(),
            Some("aborted after capture; state kept at C:/StateStore/w.m")
        );
        // A stopped job refuses the worker's next step.
        assert!(matches!(
            apply_report_in(
                &stopped,
                7,
                &Report::Entered(Phase::Reimaging),
                WaveGate::Aborted
            ),
            Err(Error::InvalidTransition { .. })
        ));
        // A capture sealed before the abort is stopped when it asks to reimage.
        let mut sealed_job = job(Phase::Captured);
        sealed_job.captured = Some(captured());
        let Applied::Stopped(stopped) = report_step(
            &sealed_job,
            &Report::Entered(Phase::Reimaging),
            WaveGate::Aborted,
        ) else {
            panic!("no reimage in an aborted wave");
        };
        assert_eq!(stopped.phase, Phase::Skipped);
        // An unverified capture is still refused outright.
        assert!(
            apply_report_in(
                &capturing,
                7,
                &Report::Captured(CaptureSummary::default()),
                WaveGate::Aborted
            )
            .is_err()
        );
        // Not started: the first report stops it.
        assert!(matches!(
            report_step(
                &job(Phase::Assigned),
                &Report::Entered(Phase::Capturing),
                WaveGate::Aborted
            ),
            Applied::Stopped(_)
        ));
    }

    #[test]
    fn an_aborted_wave_lets_jobs_past_their_capture_finish_and_failures_land() {
        let steps = [
            (Phase::Reimaging, Report::Entered(Phase::Restoring)),
            (Phase::Restoring, Report::Entered(Phase::Verifying)),
            (Phase::Verifying, Report::Done(RestoreSummary::default())),
        ];
        for (phase, report) in &steps {
            let Applied::Changed(next) = report_step(&job(*phase), report, WaveGate::Aborted)
            else {
                panic!("{phase:?} must run on in an aborted wave");
            };
            assert_eq!(next.phase, report.phase());
        }
        let failure = Report::Failed(Failure {
            phase: Phase::Capturing,
            reason: "disk error".into(),
            retryable: true,
        });
        let Applied::Changed(next) =
            report_step(&job(Phase::Capturing), &failure, WaveGate::Aborted)
        else {
            panic!("a failure is recorded as usual");
        };
        assert_eq!(next.phase, Phase::Failed);
        // Replace: the sealed capture stops before the destination restores.
        let mut sealed = job(Phase::Captured);
        sealed.scenario = Scenario::Replace;
        sealed.captured = Some(captured());
        sealed.placement = Some(crate::model::Placement {
            node_id: "node-a".into(),
            endpoint: "http://n".into(),
            reserved_bytes: 1,
            reserved_ms: 0,
            ..crate::model::Placement::default()
        });
        sealed.captured.as_mut().unwrap().store_location.clear();
        let Applied::Stopped(stopped) = report_step(
            &sealed,
            &Report::Entered(Phase::Restoring),
            WaveGate::Aborted,
        ) else {
            panic!("the destination starts nothing in an aborted wave");
        };
        assert_eq!(
            stopped.skip_reason.as_deref(),
            Some("aborted after capture; state kept at storage node node-a")
        );
        // Open waves are unaffected.
        assert!(matches!(
            report_step(&sealed, &Report::Entered(Phase::Restoring), WaveGate::Open),
            Applied::Changed(_)
        ));
    }
}
