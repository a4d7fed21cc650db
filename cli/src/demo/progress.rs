//! Following the demo wave: a line per job change until every job is over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use fleetmig_proto::v1::{JobPhase, JobStatus, StatusRequest, StatusResponse};

use super::processes::Fleet;
use crate::client::{OperatorClient, rpc_error};
use crate::output::{self, is_terminal, phase_of};

/// How often the controller is asked for the wave's status.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Consecutive failed polls tolerated before giving up.
const MAX_FAILED_POLLS: u32 = 40;

/// What was last shown for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    phase: JobPhase,
    attempt: u32,
}

/// Polls `GetStatus` for `wave` every 250 ms, printing each job's changes,
/// until every one of its `expected_jobs` jobs is done, failed or skipped.
/// Returns the final status.
pub async fn follow(
    client: &mut OperatorClient,
    controller_url: &str,
    fleet: &mut Fleet,
    wave: &str,
    expected_jobs: usize,
    timeout: Duration,
) -> anyhow::Result<StatusResponse> {
    let started = Instant::now();
    let mut shown: HashMap<String, Shown> = HashMap::new();
    let mut failed_polls = 0;
    loop {
        fleet.check_alive()?;
        let status = match client
            .get_status(StatusRequest {
                wave: wave.to_owned(),
            })
            .await
        {
            Ok(response) => {
                failed_polls = 0;
                response.into_inner()
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
        if is_finished(&status, wave, expected_jobs) {
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            let waiting: Vec<String> = status
                .jobs
                .iter()
                .filter(|job| !is_terminal(phase_of(job.phase)))
                .take(10)
                .map(|job| format!("{} ({})", job.hostname, output::phase_label(job.phase)))
                .collect();
            bail!(
                "wave {wave} did not finish within {}s; still running: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Lines for the jobs whose phase or attempt changed since last shown.
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
            job.hostname,
            fleetmig_proto::phase_name(now.phase)
        );
        if retry {
            line.push_str(&format!(" (attempt {})", now.attempt));
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

/// Whether the wave is over: every expected job is terminal, or the wave was
/// halted or aborted and nothing is running any more.
fn is_finished(status: &StatusResponse, wave: &str, expected_jobs: usize) -> bool {
    let all_terminal = status
        .jobs
        .iter()
        .all(|job| is_terminal(phase_of(job.phase)));
    if status.jobs.len() >= expected_jobs && all_terminal {
        return true;
    }
    let stopped = status.waves.iter().any(|summary| {
        summary.name == wave && matches!(summary.state.as_str(), "halted" | "aborted")
    });
    let none_running = status.jobs.iter().all(|job| {
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
    fn finished_when_all_jobs_are_over_or_the_wave_stopped() {
        let mut status = StatusResponse {
            jobs: vec![job("1", JobPhase::Done, 1), job("2", JobPhase::Pending, 0)],
            waves: vec![WaveSummary {
                name: "w".into(),
                state: "running".into(),
                ..WaveSummary::default()
            }],
            ..StatusResponse::default()
        };
        assert!(!is_finished(&status, "w", 2));
        status.waves[0].state = "halted".into();
        assert!(is_finished(&status, "w", 2));
        status.jobs[1] = job("2", JobPhase::Skipped, 0);
        status.waves[0].state = "running".into();
        assert!(is_finished(&status, "w", 2));
        assert!(
            !is_finished(&status, "w", 3),
            "a job is still to be created"
        );
    }
}
