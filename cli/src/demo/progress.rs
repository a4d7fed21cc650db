//! Following the demo's waves: a line per job change until every job of
//! every wave is over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use fleetmig_proto::v1::{JobPhase, JobStatus, StatusRequest, StatusResponse};

use super::processes::Fleet;
use crate::client::{OperatorClient, rpc_error};
use crate::output::{self, is_terminal, phase_of};

/// How often the controller is asked for the waves' status.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Consecutive failed polls tolerated before giving up.
const MAX_FAILED_POLLS: u32 = 40;

/// A wave being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowedWave<'a> {
    /// Its name.
    pub name: &'a str,
    /// Jobs it will have once started (one a machine or pair).
    pub expected_jobs: usize,
}

/// What was last shown for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    phase: JobPhase,
    attempt: u32,
    waiting: String,
}

/// Polls `GetStatus` every 250 ms, printing each job's changes, until every
/// wave of `waves` is over: all its expected jobs done, failed or skipped, or
/// the wave stopped with nothing running. Returns the final status, holding
/// only those waves and their jobs.
pub async fn follow(
    client: &mut OperatorClient,
    controller_url: &str,
    fleet: &mut Fleet,
    waves: &[FollowedWave<'_>],
    timeout: Duration,
) -> anyhow::Result<StatusResponse> {
    let started = Instant::now();
    let mut shown: HashMap<String, Shown> = HashMap::new();
    let mut failed_polls = 0;
    loop {
        fleet.check_alive()?;
        // An empty wave name asks for every wave; the others are filtered out.
        let status = match client.get_status(StatusRequest::default()).await {
            Ok(response) => {
                failed_polls = 0;
                only_waves(response.into_inner(), waves)
            }
            Err(status) => {
                failed_polls += 1;
                if failed_polls >= MAX_FAILED_POLLS {
                    return Err(rpc_error(controller_url, "get status", &status));
                }
                tracing::warn!(error = %status.message(), "status poll failed; retrying");
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        for line in changes(&status.jobs, &mut shown, started.elapsed()) {
            output::emit(&line)?;
        }
        if waves.iter().all(|wave| is_finished(&status, wave)) {
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            let waiting: Vec<String> = status
                .jobs
                .iter()
                .filter(|job| !is_terminal(phase_of(job.phase)))
                .take(10)
                .map(|job| format!("{} ({})", job_label(job), output::phase_label(job.phase)))
                .collect();
            let names: Vec<&str> = waves.iter().map(|wave| wave.name).collect();
            bail!(
                "wave{} {} did not finish within {}s; still running: {}",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `status` with only the followed waves and their jobs.
fn only_waves(mut status: StatusResponse, waves: &[FollowedWave<'_>]) -> StatusResponse {
    let followed = |name: &str| waves.iter().any(|wave| wave.name == name);
    status.waves.retain(|summary| followed(&summary.name));
    status.jobs.retain(|job| followed(&job.wave));
    status
}

/// The machine a job is about: the hostname, and for a replace job the
/// destination too (`XP-R01 -> W7-R01`).
pub fn job_label(job: &JobStatus) -> String {
    if job.destination_hostname.is_empty() {
        job.hostname.clone()
    } else {
        format!("{} -> {}", job.hostname, job.destination_hostname)
    }
}

/// Lines for the jobs whose phase, attempt or reason for waiting changed
/// since last shown.
fn changes(
    jobs: &[JobStatus],
    shown: &mut HashMap<String, Shown>,
    elapsed: Duration,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut changed = false;
    for job in jobs {
        let now = Shown {
            phase: phase_of(job.phase),
            attempt: job.attempt,
            waiting: job.waiting.clone(),
        };
        if shown.get(&job.job_id) == Some(&now) {
            continue;
        }
        let retry = shown
            .get(&job.job_id)
            .is_some_and(|before| before.attempt != 0 && before.attempt < now.attempt);
        shown.insert(job.job_id.clone(), now.clone());
        changed = true;
        let mut line = format!(
            "  +{:<7} {:<10} {}",
            output::format_duration(elapsed),
            job_label(job),
            fleetmig_proto::phase_name(now.phase)
        );
        if retry {
            line.push_str(&format!(" (attempt {})", now.attempt));
        }
        if now.phase == JobPhase::Pending && !now.waiting.is_empty() {
            line.push_str(&format!(" (waiting: {})", now.waiting));
        }
        if let Some(failure) = job
            .failure
            .as_ref()
            .filter(|_| now.phase == JobPhase::Failed)
        {
            line.push_str(&format!(": {}", failure.reason));
        }
        lines.push(line);
    }
    if changed {
        let finished = jobs
            .iter()
            .filter(|job| is_terminal(phase_of(job.phase)))
            .count();
        if let Some(last) = lines.last_mut() {
            last.push_str(&format!("   [{finished}/{} finished]", jobs.len()));
        }
    }
    lines
}

/// Whether `wave` is over: every one of its expected jobs is terminal, or the
/// wave was halted or aborted and none of its jobs is running any more.
fn is_finished(status: &StatusResponse, wave: &FollowedWave<'_>) -> bool {
    let jobs: Vec<&JobStatus> = status
        .jobs
        .iter()
        .filter(|job| job.wave == wave.name)
        .collect();
    let all_terminal = jobs.iter().all(|job| is_terminal(phase_of(job.phase)));
    if jobs.len() >= wave.expected_jobs && all_terminal {
        return true;
    }
    let stopped = status.waves.iter().any(|summary| {
        summary.name == wave.name && matches!(summary.state.as_str(), "halted" | "aborted")
    });
    let none_running = jobs.iter().all(|job| {
        let phase = phase_of(job.phase);
        is_terminal(phase) || phase == JobPhase::Pending
    });
    stopped && none_running
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_proto::v1::{Failure, WaveSummary};

    fn job(id: &str, phase: JobPhase, attempt: u32) -> JobStatus {
        JobStatus {
            job_id: id.into(),
            wave: "w".into(),
            hostname: format!("PC-{id}"),
            phase: phase as i32,
            attempt,
            failure: (phase == JobPhase::Failed).then(|| Failure {
                reason: "capture store full".into(),
                ..Failure::default()
            }),
            ..JobStatus::default()
        }
    }

    fn replace_job(id: &str, phase: JobPhase) -> JobStatus {
        JobStatus {
            wave: "r".into(),
            hostname: format!("XP-{id}"),
            destination_hostname: format!("W7-{id}"),
            ..job(id, phase, 0)
        }
    }

    fn wave(name: &str, state: &str) -> WaveSummary {
        WaveSummary {
            name: name.into(),
            state: state.into(),
            ..WaveSummary::default()
        }
    }

    fn followed(name: &str, expected_jobs: usize) -> FollowedWave<'_> {
        FollowedWave {
            name,
            expected_jobs,
        }
    }

    #[test]
    fn prints_only_changes() {
        let mut shown = HashMap::new();
        let elapsed = Duration::from_millis(1500);
        let jobs = vec![
            job("1", JobPhase::Pending, 0),
            job("2", JobPhase::Capturing, 1),
        ];
        let lines = changes(&jobs, &mut shown, elapsed);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains("PC-1") && lines[0].contains("pending"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("[0/2 finished]"), "{lines:?}");
        assert!(changes(&jobs, &mut shown, elapsed).is_empty());

        let jobs = vec![
            job("1", JobPhase::Failed, 1),
            job("2", JobPhase::Capturing, 2),
        ];
        let lines = changes(&jobs, &mut shown, elapsed);
        assert!(lines[0].contains("failed: capture store full"), "{lines:?}");
        assert!(lines[1].contains("capturing (attempt 2)"), "{lines:?}");
        assert!(lines[1].ends_with("[1/2 finished]"), "{lines:?}");
    }

    #[test]
    fn replace_jobs_show_their_destination_and_why_they_wait() {
        let mut shown = HashMap::new();
        let elapsed = Duration::from_millis(1500);
        let mut pending = replace_job("R01", JobPhase::Pending);
        let lines = changes(std::slice::from_ref(&pending), &mut shown, elapsed);
        assert!(lines[0].contains("XP-R01 -> W7-R01 pending"), "{lines:?}");
        assert!(!lines[0].contains("waiting"), "{lines:?}");

        pending.waiting = "no storage node has room".into();
        let lines = changes(std::slice::from_ref(&pending), &mut shown, elapsed);
        assert!(
            lines[0].contains("pending (waiting: no storage node has room)"),
            "{lines:?}"
        );
        assert!(changes(&[pending], &mut shown, elapsed).is_empty());
        assert_eq!(job_label(&job("1", JobPhase::Done, 1)), "PC-1");
    }

    #[test]
    fn finished_when_all_jobs_are_over_or_the_wave_stopped() {
        let mut status = StatusResponse {
            jobs: vec![job("1", JobPhase::Done, 1), job("2", JobPhase::Pending, 0)],
            waves: vec![wave("w", "running")],
            ..StatusResponse::default()
        };
        assert!(!is_finished(&status, &followed("w", 2)));
        status.waves[0].state = "halted".into();
        assert!(is_finished(&status, &followed("w", 2)));
        status.jobs[1] = job("2", JobPhase::Skipped, 0);
        status.waves[0].state = "running".into();
        assert!(is_finished(&status, &followed("w", 2)));
        assert!(
            !is_finished(&status, &followed("w", 3)),
            "a job is still to be created"
        );
    }

    #[test]
    fn each_wave_is_judged_by_its_own_jobs() {
        let status = StatusResponse {
            jobs: vec![
                job("1", JobPhase::Done, 1),
                replace_job("R01", JobPhase::Restoring),
            ],
            waves: vec![wave("w", "completed"), wave("r", "running")],
            ..StatusResponse::default()
        };
        assert!(is_finished(&status, &followed("w", 1)));
        assert!(!is_finished(&status, &followed("r", 1)));
        assert!(
            !is_finished(&status, &followed("w", 2)),
            "the replace job is not one of the refresh wave's"
        );
    }

    #[test]
    fn status_keeps_only_the_followed_waves() {
        let mut other = job("9", JobPhase::Capturing, 1);
        other.wave = "someone-elses".into();
        let status = StatusResponse {
            jobs: vec![
                job("1", JobPhase::Done, 1),
                other,
                replace_job("R01", JobPhase::Done),
            ],
            waves: vec![
                wave("w", "completed"),
                wave("someone-elses", "running"),
                wave("r", "completed"),
            ],
            machines: 4,
            ..StatusResponse::default()
        };
        let kept = only_waves(status, &[followed("w", 1), followed("r", 1)]);
        let names: Vec<&str> = kept.waves.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["w", "r"]);
        let hosts: Vec<&str> = kept.jobs.iter().map(|j| j.hostname.as_str()).collect();
        assert_eq!(hosts, ["PC-1", "XP-R01"]);
        assert_eq!(kept.machines, 4);
    }
}
