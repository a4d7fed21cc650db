//! Everything the CLI shows: number and time formatting, tables, JSON
//! documents, and the one function that writes to stdout.
//!
//! Renderers return `String`s so tests can check them; [`emit`] prints.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use comfy_table::{CellAlignment, Table, presets};
use fleetmig_proto::v1::{
    Event, JobPhase, JobStatus, ListMachinesResponse, ListStorageNodesResponse, MachineStatus,
    PlanProblem, RetryFailedResponse, Scenario, StatusResponse, StorageNodeStatus, WaveSummary,
};
use serde_json::{Value, json};

/// Job phase names operators type, in state-machine order.
pub const PHASE_NAMES: [&str; 10] = [
    "pending",
    "assigned",
    "capturing",
    "captured",
    "reimaging",
    "restoring",
    "verifying",
    "done",
    "failed",
    "skipped",
];

/// Writes `text` to stdout and flushes. This is the CLI's output; logs go to stderr.
/// It is the only writer of stdout, and uses `Write` rather than `println!`
/// so that a closed pipe is an error instead of a panic.
///
/// A closed pipe (`fleetmig status | head`) comes back as an error that
/// [`is_broken_pipe`] recognises, so `main` can exit quietly.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// Whether `err` is stdout's reader having gone away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `err` and its causes joined with ": ", skipping a cause whose text is
/// already at the end of the message (tonic and io errors often repeat it).
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// `1536` -> `1.5 KiB` (binary units, one decimal above bytes).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let secs = duration.as_secs();
    if secs < 60 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    if secs < 3600 {
        return format!("{}m {:02}s", secs / 60, secs % 60);
    }
    format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2023-11-14T22:13:20.123Z`.
pub fn format_unix_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day % 3600) / 60,
        second_of_day % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The phase an enum field holds (unknown values read as unspecified).
pub fn phase_of(value: i32) -> JobPhase {
    JobPhase::try_from(value).unwrap_or(JobPhase::Unspecified)
}

/// Lowercase name of a phase field.
pub fn phase_label(value: i32) -> &'static str {
    fleetmig_proto::phase_name(phase_of(value))
}

/// Lowercase name of a scenario field.
pub fn scenario_label(value: i32) -> &'static str {
    fleetmig_proto::scenario_name(Scenario::try_from(value).unwrap_or(Scenario::Unspecified))
}

/// Whether a job is over.
pub fn is_terminal(phase: JobPhase) -> bool {
    matches!(phase, JobPhase::Done | JobPhase::Failed | JobPhase::Skipped)
}

/// How long a job ran (so far, if it is still running); `None` before it started.
pub fn job_duration(job: &JobStatus, now_unix_ms: i64) -> Option<Duration> {
    if job.started_unix_ms <= 0 {
        return None;
    }
    let end = if job.finished_unix_ms > 0 {
        job.finished_unix_ms
    } else if is_terminal(phase_of(job.phase)) {
        return None;
    } else {
        now_unix_ms
    };
    Some(Duration::from_millis(
        end.saturating_sub(job.started_unix_ms).max(0) as u64,
    ))
}

/// A job's phase, with live progress when there is some (`capturing 45%`).
pub fn job_phase_text(job: &JobStatus) -> String {
    let phase = phase_of(job.phase);
    let label = fleetmig_proto::phase_name(phase);
    match &job.progress {
        Some(progress) if !is_terminal(phase) && progress.files_total > 0 => {
            let percent = progress.files_done.saturating_mul(100) / progress.files_total;
            format!("{label} {}%", percent.min(100))
        }
        _ => label.to_owned(),
    }
}

/// `done 3, capturing 1, pending 2` in state-machine order.
pub fn phase_counts_text(counts: &std::collections::HashMap<String, u32>) -> String {
    let mut ordered: Vec<(&str, u32)> = PHASE_NAMES
        .iter()
        .filter_map(|name| counts.get(*name).map(|count| (*name, *count)))
        .collect();
    let mut others: Vec<(&str, u32)> = counts
        .iter()
        .filter(|(name, _)| !PHASE_NAMES.contains(&name.as_str()))
        .map(|(name, count)| (name.as_str(), *count))
        .collect();
    others.sort();
    ordered.extend(others);
    let parts: Vec<String> = ordered
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    if parts.is_empty() {
        "no jobs".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Plan problems as `FILE:LINE:COL: message`, one a line.
pub fn render_plan_problems(file: &str, problems: &[PlanProblem]) -> String {
    problems
        .iter()
        .map(|problem| {
            if problem.line == 0 {
                format!("{file}: {}\n", problem.message)
            } else {
                format!(
                    "{file}:{}:{}: {}\n",
                    problem.line, problem.column, problem.message
                )
            }
        })
        .collect()
}

/// `plan NAME: N waves` and a line a wave.
pub fn render_plan_summary(heading: &str, plan: &str, waves: &[WaveSummary]) -> String {
    let plural = if waves.len() == 1 { "" } else { "s" };
    let mut text = format!("{heading} {plan}: {} wave{plural}\n", waves.len());
    for wave in waves {
        let mut details = vec![format!("max {} in flight", wave.max_in_flight)];
        if wave.machines > 0 {
            details.insert(0, format!("{} machines", wave.machines));
        }
        if !wave.state.is_empty() && wave.state != "valid" {
            details.push(wave.state.clone());
        }
        text.push_str(&format!("  {}: {}\n", wave.name, details.join(", ")));
    }
    text
}

/// One line about a wave: `wave W (plan P): running, 5 machines, max 2 in flight: done 3, pending 2`.
pub fn render_wave_line(wave: &WaveSummary) -> String {
    let mut state = wave.state.clone();
    if wave.state == "halted" && !wave.halt_reason.is_empty() {
        state.push_str(&format!(" ({})", wave.halt_reason));
    }
    format!(
        "wave {} (plan {}): {state}, {} machines, max {} in flight: {}",
        wave.name,
        wave.plan,
        wave.machines,
        wave.max_in_flight,
        phase_counts_text(&wave.phase_counts)
    )
}

fn plain_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(header.to_vec());
    table
}

fn align_right(table: &mut Table, columns: &[usize]) {
    for index in columns {
        if let Some(column) = table.column_mut(*index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn display_name(job: &JobStatus) -> &str {
    if job.hostname.is_empty() {
        &job.machine_id
    } else {
        &job.hostname
    }
}

/// Human form of `GetStatus`: a line a wave, then the jobs table.
pub fn render_status(status: &StatusResponse, now_unix_ms: i64) -> String {
    let mut text = format!(
        "{} machines enrolled, {} storage nodes\n",
        status.machines, status.storage_nodes
    );
    if status.waves.is_empty() {
        text.push_str("no waves\n");
    }
    for wave in &status.waves {
        text.push_str(&render_wave_line(wave));
        text.push('\n');
    }
    if status.jobs.is_empty() {
        return text;
    }
    text.push('\n');
    text.push_str(&render_jobs(&status.jobs, now_unix_ms));
    text
}

/// What to say about a job besides its phase: why it failed, waits or was skipped.
pub fn job_note(job: &JobStatus) -> String {
    if let Some(failure) = &job.failure {
        return failure.reason.clone();
    }
    if !job.skip_reason.is_empty() {
        return format!("skipped: {}", job.skip_reason);
    }
    if !job.waiting.is_empty() {
        return format!("waiting: {}", job.waiting);
    }
    String::new()
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The jobs table; replace jobs add their destination and storage node.
pub fn render_jobs(jobs: &[JobStatus], now_unix_ms: i64) -> String {
    let replace = jobs
        .iter()
        .any(|job| job.scenario == Scenario::Replace as i32);
    let mut header = vec!["HOSTNAME", "WAVE", "SCENARIO", "PHASE", "ATTEMPT"];
    if replace {
        header.extend(["DESTINATION", "NODE"]);
    }
    header.extend(["USERS", "FILES", "BYTES", "DURATION", "NOTE"]);
    let mut table = plain_table(&header);
    for job in jobs {
        let captured = job.captured.as_ref();
        let mut row = vec![
            display_name(job).to_owned(),
            job.wave.clone(),
            scenario_label(job.scenario).to_owned(),
            job_phase_text(job),
            job.attempt.to_string(),
        ];
        if replace {
            row.push(dash_if_empty(&job.destination_hostname));
            row.push(dash_if_empty(&job.storage_node));
        }
        row.extend([
            captured.map_or_else(|| "-".to_owned(), |c| c.users.to_string()),
            captured.map_or_else(|| "-".to_owned(), |c| c.files.to_string()),
            captured.map_or_else(|| "-".to_owned(), |c| format_bytes(c.bytes)),
            job_duration(job, now_unix_ms).map_or_else(|| "-".to_owned(), format_duration),
            job_note(job),
        ]);
        table.add_row(row);
    }
    let first_number = if replace { 7 } else { 5 };
    let mut right = vec![4];
    right.extend(first_number..first_number + 4);
    align_right(&mut table, &right);
    let mut text = table.to_string();
    text.push('\n');
    text
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn positive(unix_ms: i64) -> Option<i64> {
    (unix_ms > 0).then_some(unix_ms)
}

/// A wave as JSON (`null` for what is not set or not known).
pub fn wave_json(wave: &WaveSummary) -> Value {
    let counts: BTreeMap<&str, u32> = wave
        .phase_counts
        .iter()
        .map(|(name, count)| (name.as_str(), *count))
        .collect();
    json!({
        "name": wave.name,
        "plan": wave.plan,
        "state": wave.state,
        "machines": wave.machines,
        "max_in_flight": wave.max_in_flight,
        "phase_counts": counts,
        "batch": {
            "index": wave.batch_index,
            "count": (wave.batch_count > 0).then_some(wave.batch_count),
            "promoted": wave.batch_promoted,
            "opened_unix_ms": positive(wave.batch_opened_unix_ms),
        },
        "error_budget": wave.budget_tolerated.map(|tolerated| json!({
            "tolerated": tolerated,
            "used": wave.budget_used,
        })),
        "halt_reason": non_empty(&wave.halt_reason),
        "paused_ms": wave.paused_ms,
        "retry_of": non_empty(&wave.retry_of),
        "started_unix_ms": positive(wave.started_unix_ms),
        "finished_unix_ms": positive(wave.finished_unix_ms),
    })
}

/// A job as JSON (`null` for absent summaries).
pub fn job_json(job: &JobStatus) -> Value {
    json!({
        "job_id": job.job_id,
        "wave": job.wave,
        "machine_id": job.machine_id,
        "hostname": job.hostname,
        "scenario": scenario_label(job.scenario),
        "phase": phase_label(job.phase),
        "attempt": job.attempt,
        "captured": job.captured.as_ref().map(|c| json!({
            "users": c.users,
            "files": c.files,
            "directories": c.directories,
            "bytes": c.bytes,
            "excluded_files": c.excluded_files,
            "manifest_digest": c.manifest_digest,
            "store_location": c.store_location,
        })),
        "restored": job.restored.as_ref().map(|r| json!({
            "files": r.files,
            "directories": r.directories,
            "bytes": r.bytes,
            "mismatched_files": r.mismatched_files,
        })),
        "failure": job.failure.as_ref().map(|f| json!({
            "phase": phase_label(f.phase),
            "reason": f.reason,
            "retryable": f.retryable,
        })),
        "progress": job.progress.as_ref().map(|p| json!({
            "files_done": p.files_done,
            "files_total": p.files_total,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "current_user": p.current_user,
        })),
        "created_unix_ms": job.created_unix_ms,
        "started_unix_ms": job.started_unix_ms,
        "finished_unix_ms": job.finished_unix_ms,
        "destination_hostname": non_empty(&job.destination_hostname),
        "storage_node": non_empty(&job.storage_node),
        "waiting": non_empty(&job.waiting),
        "skip_reason": non_empty(&job.skip_reason),
        "batch": job.batch,
        "phase_since_unix_ms": positive(job.phase_since_unix_ms),
        "not_before_unix_ms": positive(job.not_before_unix_ms),
    })
}

/// `GetStatus` as a JSON document.
pub fn status_json(status: &StatusResponse, controller: &str) -> Value {
    json!({
        "controller": controller,
        "machines": status.machines,
        "storage_nodes": status.storage_nodes,
        "waves": status.waves.iter().map(wave_json).collect::<Vec<_>>(),
        "jobs": status.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

fn last_seen_text(machine: &MachineStatus, now_unix_ms: i64) -> String {
    if machine.last_seen_unix_ms <= 0 {
        return "-".to_owned();
    }
    let ago = now_unix_ms.saturating_sub(machine.last_seen_unix_ms).max(0) as u64;
    format!("{} ago", format_duration(Duration::from_millis(ago)))
}

/// Human form of `ListMachines`.
pub fn render_machines(machines: &ListMachinesResponse, now_unix_ms: i64) -> String {
    if machines.machines.is_empty() {
        return "no machines\n".to_owned();
    }
    let mut table = plain_table(&[
        "HOSTNAME",
        "MACHINE ID",
        "OS",
        "SITE",
        "USERS",
        "FREE",
        "LAST SEEN",
        "JOB PHASE",
    ]);
    for machine in &machines.machines {
        let inventory = machine.inventory.clone().unwrap_or_default();
        let os = [inventory.os_family.as_str(), inventory.os_version.as_str()]
            .iter()
            .filter(|part| !part.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let phase = if machine.job_id.is_empty() {
            "-".to_owned()
        } else {
            phase_label(machine.job_phase).to_owned()
        };
        table.add_row(vec![
            inventory.hostname.clone(),
            machine.machine_id.clone(),
            os,
            inventory.site.clone(),
            inventory.profiles.len().to_string(),
            format_bytes(inventory.free_bytes),
            last_seen_text(machine, now_unix_ms),
            phase,
        ]);
    }
    align_right(&mut table, &[4, 5]);
    let mut text = table.to_string();
    text.push('\n');
    text
}

/// `ListMachines` as a JSON document.
pub fn machines_json(machines: &ListMachinesResponse) -> Value {
    let list: Vec<Value> = machines
        .machines
        .iter()
        .map(|machine| {
            let inventory = machine.inventory.clone().unwrap_or_default();
            let labels: BTreeMap<&str, &str> = inventory
                .labels
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            json!({
                "machine_id": machine.machine_id,
                "hostname": inventory.hostname,
                "os_family": inventory.os_family,
                "os_version": inventory.os_version,
                "site": inventory.site,
                "labels": labels,
                "free_bytes": inventory.free_bytes,
                "total_bytes": inventory.total_bytes,
                "supports_hard_links": inventory.supports_hard_links,
                "agent_version": inventory.agent_version,
                "profiles": inventory.profiles.iter().map(|p| json!({
                    "name": p.name,
                    "bytes": p.bytes,
                    "files": p.files,
                    "last_used_unix": p.last_used_unix,
                })).collect::<Vec<_>>(),
                "enrolled_unix_ms": machine.enrolled_unix_ms,
                "last_seen_unix_ms": machine.last_seen_unix_ms,
                "job_id": (!machine.job_id.is_empty()).then_some(&machine.job_id),
                "job_phase": (!machine.job_id.is_empty()).then(|| phase_label(machine.job_phase)),
            })
        })
        .collect();
    json!({ "machines": list })
}

/// Jobs grouped by a reason, largest group first, hostnames sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonGroup {
    /// The reason.
    pub reason: String,
    /// Hostnames (or machine ids) of the jobs.
    pub hostnames: Vec<String>,
}

/// Groups `jobs` by the reason `reason_of` gives (jobs without one are left out).
pub fn group_by_reason(
    jobs: &[JobStatus],
    reason_of: impl Fn(&JobStatus) -> Option<String>,
) -> Vec<ReasonGroup> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in jobs {
        if let Some(reason) = reason_of(job).filter(|r| !r.is_empty()) {
            groups
                .entry(reason)
                .or_default()
                .push(display_name(job).to_owned());
        }
    }
    let mut groups: Vec<ReasonGroup> = groups
        .into_iter()
        .map(|(reason, mut hostnames)| {
            hostnames.sort_by_key(|h| h.to_ascii_lowercase());
            ReasonGroup { reason, hostnames }
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.hostnames.len()));
    groups
}

/// Why pending jobs wait, grouped.
pub fn waiting_groups(jobs: &[JobStatus]) -> Vec<ReasonGroup> {
    group_by_reason(jobs, |job| {
        (phase_of(job.phase) == JobPhase::Pending).then(|| job.waiting.clone())
    })
}

/// Why jobs failed (`reason (in PHASE)`), grouped.
pub fn failure_groups(jobs: &[JobStatus]) -> Vec<ReasonGroup> {
    group_by_reason(jobs, |job| {
        let failure = job.failure.as_ref()?;
        (phase_of(job.phase) == JobPhase::Failed)
            .then(|| format!("{} (in {})", failure.reason, phase_label(failure.phase)))
    })
}

/// Why jobs were skipped, grouped.
pub fn skip_groups(jobs: &[JobStatus]) -> Vec<ReasonGroup> {
    group_by_reason(jobs, |job| {
        (phase_of(job.phase) == JobPhase::Skipped).then(|| job.skip_reason.clone())
    })
}

fn groups_json(groups: &[ReasonGroup]) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|group| {
                json!({
                    "reason": group.reason,
                    "count": group.hostnames.len(),
                    "hostnames": group.hostnames,
                })
            })
            .collect(),
    )
}

fn render_groups(text: &mut String, title: &str, groups: &[ReasonGroup]) {
    if groups.is_empty() {
        return;
    }
    let total: usize = groups.iter().map(|g| g.hostnames.len()).sum();
    text.push_str(&format!("\n{title} ({total}):\n"));
    for group in groups {
        const SHOWN: usize = 8;
        let mut names = group.hostnames[..group.hostnames.len().min(SHOWN)].join(", ");
        if group.hostnames.len() > SHOWN {
            names.push_str(&format!(", +{} more", group.hostnames.len() - SHOWN));
        }
        text.push_str(&format!(
            "  {:>4}  {}: {names}\n",
            group.hostnames.len(),
            group.reason
        ));
    }
}

/// The lines about a wave's batch, budget, pause, halt and origin.
fn wave_details(wave: &WaveSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if wave.batch_count > 0 || wave.batch_index > 0 || wave.batch_promoted {
        let mut batch = format!("batch {}", wave.batch_index + 1);
        if wave.batch_count > 0 {
            batch.push_str(&format!(" of {}", wave.batch_count));
        }
        if wave.batch_opened_unix_ms > 0 {
            batch.push_str(&format!(
                ", opened {}",
                format_unix_ms(wave.batch_opened_unix_ms)
            ));
        }
        if wave.batch_promoted {
            batch.push_str(" (promoted: the next batch may open)");
        }
        lines.push(batch);
    }
    match wave.budget_tolerated {
        Some(tolerated) => lines.push(format!(
            "error budget: {} of {tolerated} tolerated failures used",
            wave.budget_used
        )),
        None => lines.push("error budget: none".to_owned()),
    }
    if wave.paused_ms > 0 {
        let current = if wave.state == "paused" {
            " (paused now)"
        } else {
            ""
        };
        lines.push(format!(
            "paused: {} in all{current}",
            format_duration(Duration::from_millis(wave.paused_ms))
        ));
    }
    if !wave.halt_reason.is_empty() {
        let label = if wave.state == "halted" {
            "halted"
        } else {
            "last halt"
        };
        lines.push(format!("{label}: {}", wave.halt_reason));
    }
    if !wave.retry_of.is_empty() {
        lines.push(format!("retries the failed machines of {}", wave.retry_of));
    }
    lines
}

/// `fleetmig wave status NAME`: one wave in focus.
pub fn render_wave_status(wave: &WaveSummary, jobs: &[JobStatus]) -> String {
    let mut text = render_wave_line(wave);
    text.push('\n');
    for line in wave_details(wave) {
        text.push_str(&format!("  {line}\n"));
    }
    render_groups(&mut text, "waiting", &waiting_groups(jobs));
    render_groups(&mut text, "failed", &failure_groups(jobs));
    render_groups(&mut text, "skipped", &skip_groups(jobs));
    text
}

/// `fleetmig wave status NAME --json`.
pub fn wave_status_json(wave: &WaveSummary, jobs: &[JobStatus]) -> Value {
    json!({
        "wave": wave_json(wave),
        "waiting": groups_json(&waiting_groups(jobs)),
        "failures": groups_json(&failure_groups(jobs)),
        "skipped": groups_json(&skip_groups(jobs)),
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

/// The result of a wave control (`start`, `pause`, ...) as JSON.
pub fn wave_action_json(action: &str, wave: &str, summary: Option<&WaveSummary>) -> Value {
    json!({
        "action": action,
        "wave": wave,
        "accepted": true,
        "summary": summary.map(wave_json),
    })
}

/// `wave retry-failed`: the new wave and who is in it.
pub fn render_retry(source: &str, retry: &RetryFailedResponse) -> String {
    let mut text = String::new();
    if let Some(wave) = &retry.wave {
        text.push_str(&format!(
            "created wave {} retrying {} failed machines of {source}: {}\n",
            wave.name,
            retry.hostnames.len(),
            retry.hostnames.join(", ")
        ));
        text.push_str(&render_wave_line(wave));
        text.push('\n');
        if wave.state == "created" {
            text.push_str(&format!(
                "start it with: fleetmig wave start {}\n",
                wave.name
            ));
        }
    }
    if !retry.excluded.is_empty() {
        text.push_str(&format!("left out ({}):\n", retry.excluded.len()));
        for excluded in &retry.excluded {
            let name = if excluded.hostname.is_empty() {
                &excluded.machine_id
            } else {
                &excluded.hostname
            };
            text.push_str(&format!("  {name}: {}\n", excluded.reason));
        }
    }
    text
}

/// `wave retry-failed --json`.
pub fn retry_json(source: &str, retry: &RetryFailedResponse) -> Value {
    json!({
        "retry_of": source,
        "wave": retry.wave.as_ref().map(wave_json),
        "hostnames": retry.hostnames,
        "excluded": retry.excluded.iter().map(|e| json!({
            "machine_id": e.machine_id,
            "hostname": e.hostname,
            "reason": e.reason,
        })).collect::<Vec<_>>(),
    })
}

/// `plan validate|apply --json`.
pub fn plan_json(
    file: &str,
    valid: bool,
    applied: bool,
    plan: &str,
    problems: &[PlanProblem],
    waves: &[WaveSummary],
) -> Value {
    json!({
        "file": file,
        "valid": valid,
        "applied": applied,
        "plan": non_empty(plan),
        "problems": problems.iter().map(|p| json!({
            "line": (p.line > 0).then_some(p.line),
            "column": (p.line > 0).then_some(p.column),
            "message": p.message,
        })).collect::<Vec<_>>(),
        "waves": waves.iter().map(wave_json).collect::<Vec<_>>(),
    })
}

fn report_age_text(node: &StorageNodeStatus) -> String {
    if !node.reported {
        return "never".to_owned();
    }
    format!(
        "{} ago",
        format_duration(Duration::from_millis(node.report_age_ms))
    )
}

/// Human form of `ListStorageNodes`.
pub fn render_storage_nodes(nodes: &ListStorageNodesResponse) -> String {
    if nodes.nodes.is_empty() {
        return "no storage nodes\n".to_owned();
    }
    let mut table = plain_table(&[
        "NODE",
        "SITE",
        "ENDPOINT",
        "TOTAL",
        "FREE",
        "RESERVED",
        "AVAILABLE",
        "SESSIONS",
        "MIGRATIONS",
        "JOBS",
        "CAPTURES",
        "LAST REPORT",
    ]);
    for node in &nodes.nodes {
        let bytes = |value: u64| {
            if node.reported {
                format_bytes(value)
            } else {
                "-".to_owned()
            }
        };
        let count = |value: u32| {
            if node.reported {
                value.to_string()
            } else {
                "-".to_owned()
            }
        };
        table.add_row(vec![
            node.node_id.clone(),
            dash_if_empty(&node.site),
            node.endpoint.clone(),
            bytes(node.total_bytes),
            bytes(node.free_bytes),
            bytes(node.reserved_bytes),
            bytes(node.available_bytes),
            count(node.active_sessions),
            count(node.migrations),
            node.placed_jobs.to_string(),
            match (node.reported, node.accepting_captures) {
                (false, _) => "-".to_owned(),
                (true, true) => "accepting".to_owned(),
                (true, false) => "refusing".to_owned(),
            },
            report_age_text(node),
        ]);
    }
    align_right(&mut table, &[3, 4, 5, 6, 7, 8, 9]);
    let mut text = table.to_string();
    text.push('\n');
    text.push_str(&render_under_replicated(nodes));
    text
}

/// The under-replicated part of `fleetmig storage list`: migrations with fewer
/// live committed copies than their plan asks for.
fn render_under_replicated(nodes: &ListStorageNodesResponse) -> String {
    if nodes.under_replicated.is_empty() {
        return "every replicated migration has all its copies\n".to_owned();
    }
    let mut table = plain_table(&["MIGRATION", "WAVE", "WANTED", "LIVE", "HOLDERS"]);
    for under in &nodes.under_replicated {
        let holders = under
            .holders
            .iter()
            .map(|holder| {
                if under.live_holders.contains(holder) {
                    holder.clone()
                } else {
                    format!("{holder} (down)")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        table.add_row(vec![
            under.migration_id.clone(),
            dash_if_empty(&under.wave),
            under.wanted.to_string(),
            under.live_holders.len().to_string(),
            dash_if_empty(&holders),
        ]);
    }
    align_right(&mut table, &[2, 3]);
    format!(
        "\n{} under-replicated migration(s):\n{table}\n",
        nodes.under_replicated.len()
    )
}

/// `ListStorageNodes` as a JSON document (`null` capacity before a report).
pub fn storage_nodes_json(nodes: &ListStorageNodesResponse) -> Value {
    let list: Vec<Value> = nodes
        .nodes
        .iter()
        .map(|node| {
            json!({
                "node_id": node.node_id,
                "endpoint": node.endpoint,
                "site": node.site,
                "registered_unix_ms": node.registered_unix_ms,
                "placed_jobs": node.placed_jobs,
                "capacity": node.reported.then(|| json!({
                    "total_bytes": node.total_bytes,
                    "free_bytes": node.free_bytes,
                    "reserved_bytes": node.reserved_bytes,
                    "available_bytes": node.available_bytes,
                    "stored_bytes": node.stored_bytes,
                    "active_sessions": node.active_sessions,
                    "accepting_captures": node.accepting_captures,
                    "migrations": node.migrations,
                    "reported_unix_ms": node.reported_unix_ms,
                    "report_age_ms": node.report_age_ms,
                })),
            })
        })
        .collect();
    let under: Vec<Value> = nodes
        .under_replicated
        .iter()
        .map(|under| {
            json!({
                "migration_id": under.migration_id,
                "wave": under.wave,
                "wanted": under.wanted,
                "holders": under.holders,
                "live_holders": under.live_holders,
            })
        })
        .collect();
    json!({ "storage_nodes": list, "under_replicated": under })
}

/// An audit event as JSON (one line of `events --follow --json`).
pub fn event_json(event: &Event) -> Value {
    json!({
        "seq": event.seq,
        "unix_ms": event.unix_ms,
        "time": format_unix_ms(event.unix_ms),
        "actor": event.actor,
        "kind": event.kind,
        "wave": non_empty(&event.wave),
        "job_id": non_empty(&event.job_id),
        "machine_id": non_empty(&event.machine_id),
        "detail": event.detail,
    })
}

/// One line per event: time, sequence, kind, then whatever is set.
pub fn render_event(event: &Event) -> String {
    let mut line = format!(
        "{} #{} {}",
        format_unix_ms(event.unix_ms),
        event.seq,
        event.kind
    );
    for (key, value) in [
        ("wave", &event.wave),
        ("job", &event.job_id),
        ("machine", &event.machine_id),
        ("by", &event.actor),
    ] {
        if !value.is_empty() {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    if !event.detail.is_empty() {
        line.push_str(": ");
        line.push_str(&event.detail);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_proto::v1::{
        CaptureSummary, Failure, Inventory, ProgressSnapshot, UnderReplicated, UserProfile,
    };

    #[test]
    fn phase_names_match_the_proto() {
        for (index, name) in PHASE_NAMES.iter().enumerate() {
            assert_eq!(phase_label(index as i32 + 1), *name);
        }
        assert_eq!(phase_label(99), "unspecified");
    }

    #[test]
    fn error_text_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = anyhow::Error::new(io)
            .context("tcp connect error")
            .context("tcp connect error")
            .context("cannot reach controller at http://x");
        assert_eq!(
            error_text(&err),
            "cannot reach controller at http://x: tcp connect error: connection refused"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(io).context("i/o error on /x: no such file");
        assert_eq!(error_text(&err), "i/o error on /x: no such file");
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(5 * 1024 * 1024 + 300 * 1024), "5.3 MiB");
        assert_eq!(format_bytes(3 * 1024u64.pow(4)), "3.0 TiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_are_human_readable() {
        assert_eq!(format_duration(Duration::from_millis(0)), "0ms");
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h 03m");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn phase_counts_follow_the_state_machine() {
        let counts = [
            ("pending", 2),
            ("done", 3),
            ("capturing", 1),
            ("zzz", 1),
            ("failed", 0),
        ]
        .into_iter()
        .map(|(name, count)| (name.to_owned(), count))
        .collect();
        assert_eq!(
            phase_counts_text(&counts),
            "pending 2, capturing 1, done 3, zzz 1"
        );
        assert_eq!(phase_counts_text(&Default::default()), "no jobs");
    }

    #[test]
    fn plan_problems_carry_their_location() {
        let problems = vec![
            PlanProblem {
                message: "unknown field `foo`".into(),
                line: 3,
                column: 1,
            },
            PlanProblem {
                message: "plan is too large".into(),
                line: 0,
                column: 0,
            },
        ];
        assert_eq!(
            render_plan_problems("plan.toml", &problems),
            "plan.toml:3:1: unknown field `foo`\nplan.toml: plan is too large\n"
        );
    }

    fn sample_job(phase: JobPhase) -> JobStatus {
        JobStatus {
            job_id: "j1".into(),
            wave: "pilot".into(),
            machine_id: "m1".into(),
            hostname: "PC-0001".into(),
            scenario: Scenario::Refresh as i32,
            phase: phase as i32,
            attempt: 1,
            captured: Some(CaptureSummary {
                users: 2,
                files: 600,
                bytes: 3 * 1024 * 1024,
                ..CaptureSummary::default()
            }),
            started_unix_ms: 1_000,
            finished_unix_ms: if is_terminal(phase) { 6_000 } else { 0 },
            failure: (phase == JobPhase::Failed).then(|| Failure {
                phase: JobPhase::Capturing as i32,
                reason: "disk full on C:".into(),
                retryable: false,
            }),
            progress: Some(ProgressSnapshot {
                files_done: 150,
                files_total: 600,
                ..ProgressSnapshot::default()
            }),
            ..JobStatus::default()
        }
    }

    #[test]
    fn job_durations_and_progress() {
        assert_eq!(
            job_duration(&sample_job(JobPhase::Done), 99_000),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            job_duration(&sample_job(JobPhase::Capturing), 3_500),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(job_duration(&JobStatus::default(), 3_500), None);
        assert_eq!(
            job_phase_text(&sample_job(JobPhase::Capturing)),
            "capturing 25%"
        );
        assert_eq!(job_phase_text(&sample_job(JobPhase::Done)), "done");
    }

    #[test]
    fn status_renders_waves_and_jobs() {
        let status = StatusResponse {
            waves: vec![WaveSummary {
                name: "pilot".into(),
                plan: "p".into(),
                state: "running".into(),
                machines: 2,
                max_in_flight: 5,
                phase_counts: [("done".to_owned(), 1), ("failed".to_owned(), 1)].into(),
                ..WaveSummary::default()
            }],
            jobs: vec![sample_job(JobPhase::Done), sample_job(JobPhase::Failed)],
            machines: 2,
            storage_nodes: 1,
            ..StatusResponse::default()
        };
        let text = render_status(&status, 10_000);
        assert!(
            text.contains(
                "wave pilot (plan p): running, 2 machines, max 5 in flight: done 1, failed 1"
            ),
            "{text}"
        );
        assert!(text.contains("PC-0001"), "{text}");
        assert!(text.contains("3.0 MiB"), "{text}");
        assert!(text.contains("5.0s"), "{text}");
        assert!(text.contains("disk full on C:"), "{text}");

        let document = status_json(&status, "http://c:7400");
        assert_eq!(document["jobs"][1]["phase"], "failed");
        assert_eq!(document["jobs"][1]["failure"]["phase"], "capturing");
        assert_eq!(document["jobs"][0]["captured"]["files"], 600);
        assert_eq!(document["waves"][0]["phase_counts"]["done"], 1);
        assert_eq!(document["storage_nodes"], 1);
    }

    #[test]
    fn machines_render_as_table_and_json() {
        let machines = ListMachinesResponse {
            machines: vec![MachineStatus {
                machine_id: "m1".into(),
                inventory: Some(Inventory {
                    hostname: "PC-0001".into(),
                    os_family: "windows-xp".into(),
                    os_version: "5.1".into(),
                    free_bytes: 2048,
                    site: "hq".into(),
                    profiles: vec![UserProfile::default(), UserProfile::default()],
                    ..Inventory::default()
                }),
                last_seen_unix_ms: 8_000,
                ..MachineStatus::default()
            }],
        };
        let text = render_machines(&machines, 10_000);
        assert!(text.contains("windows-xp 5.1"), "{text}");
        assert!(text.contains("2.0s ago"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        let document = machines_json(&machines);
        assert_eq!(document["machines"][0]["hostname"], "PC-0001");
        assert_eq!(document["machines"][0]["job_phase"], Value::Null);
        assert_eq!(
            document["machines"][0]["profiles"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn events_are_one_line() {
        let event = Event {
            seq: 42,
            unix_ms: 1_700_000_000_123,
            actor: "controller".into(),
            kind: "job.phase".into(),
            wave: "pilot".into(),
            job_id: "j1".into(),
            machine_id: String::new(),
            detail: "capturing -> captured".into(),
        };
        assert_eq!(
            render_event(&event),
            "2023-11-14T22:13:20.123Z #42 job.phase wave=pilot job=j1 by=controller: capturing -> captured"
        );
    }

    fn replace_job(hostname: &str, phase: JobPhase) -> JobStatus {
        JobStatus {
            hostname: hostname.into(),
            wave: "swap".into(),
            scenario: Scenario::Replace as i32,
            phase: phase as i32,
            destination_hostname: format!("W7-{hostname}"),
            storage_node: "node-a".into(),
            ..JobStatus::default()
        }
    }

    #[test]
    fn replace_jobs_show_destination_node_and_why_they_wait() {
        let mut waiting = replace_job("XP-2", JobPhase::Pending);
        waiting.storage_node.clear();
        waiting.waiting = "no storage node at site hq has room".into();
        let mut skipped = replace_job("XP-3", JobPhase::Skipped);
        skipped.skip_reason = "wave aborted by operator:alice".into();
        let jobs = vec![replace_job("XP-1", JobPhase::Captured), waiting, skipped];
        let text = render_jobs(&jobs, 0);
        let header = text.lines().next().unwrap();
        assert!(
            header.contains("DESTINATION") && header.contains("NODE"),
            "{text}"
        );
        assert!(
            text.contains("W7-XP-1") && text.contains("node-a"),
            "{text}"
        );
        assert!(
            text.contains("waiting: no storage node at site hq has room"),
            "{text}"
        );
        assert!(
            text.contains("skipped: wave aborted by operator:alice"),
            "{text}"
        );
        // Refresh-only listings keep the narrow table.
        let text = render_jobs(&[sample_job(JobPhase::Done)], 10_000);
        assert!(!text.contains("DESTINATION"), "{text}");

        let document = job_json(&jobs[1]);
        assert_eq!(document["destination_hostname"], "W7-XP-2");
        assert_eq!(document["storage_node"], Value::Null);
        assert_eq!(document["waiting"], "no storage node at site hq has room");
        assert_eq!(
            job_json(&jobs[2])["skip_reason"],
            "wave aborted by operator:alice"
        );
    }

    fn focused_wave() -> WaveSummary {
        WaveSummary {
            name: "pilot".into(),
            plan: "p".into(),
            state: "halted".into(),
            machines: 10,
            max_in_flight: 2,
            batch_index: 1,
            batch_count: 4,
            batch_promoted: true,
            halt_reason: "3 failures exceed the error budget of 2".into(),
            budget_tolerated: Some(2),
            budget_used: 3,
            paused_ms: 65_000,
            retry_of: "pilot0".into(),
            ..WaveSummary::default()
        }
    }

    #[test]
    fn wave_status_groups_waiting_failures_and_skips() {
        let failed = |hostname: &str, reason: &str| JobStatus {
            hostname: hostname.into(),
            wave: "pilot".into(),
            phase: JobPhase::Failed as i32,
            failure: Some(Failure {
                phase: JobPhase::Capturing as i32,
                reason: reason.into(),
                retryable: true,
            }),
            ..JobStatus::default()
        };
        let pending = |hostname: &str, waiting: &str| JobStatus {
            hostname: hostname.into(),
            wave: "pilot".into(),
            phase: JobPhase::Pending as i32,
            waiting: waiting.into(),
            ..JobStatus::default()
        };
        let jobs = vec![
            failed("PC-3", "disk full"),
            failed("PC-1", "disk full"),
            failed("PC-2", "access denied"),
            pending("PC-5", "wave halted: budget"),
            pending("PC-4", "wave halted: budget"),
        ];
        let groups = failure_groups(&jobs);
        assert_eq!(groups[0].reason, "disk full (in capturing)");
        assert_eq!(groups[0].hostnames, ["PC-1", "PC-3"]);
        assert_eq!(groups[1].hostnames, ["PC-2"]);
        let wave = focused_wave();
        let text = render_wave_status(&wave, &jobs);
        assert!(
            text.contains("halted (3 failures exceed the error budget of 2)"),
            "{text}"
        );
        assert!(text.contains("batch 2 of 4"), "{text}");
        assert!(text.contains("promoted"), "{text}");
        assert!(
            text.contains("error budget: 3 of 2 tolerated failures used"),
            "{text}"
        );
        assert!(text.contains("paused: 1m 05s in all"), "{text}");
        assert!(
            text.contains("retries the failed machines of pilot0"),
            "{text}"
        );
        assert!(text.contains("waiting (2):"), "{text}");
        assert!(text.contains("wave halted: budget: PC-4, PC-5"), "{text}");
        assert!(text.contains("failed (3):"), "{text}");

        let document = wave_status_json(&wave, &jobs);
        assert_eq!(document["wave"]["batch"]["index"], 1);
        assert_eq!(document["wave"]["batch"]["count"], 4);
        assert_eq!(document["wave"]["error_budget"]["tolerated"], 2);
        assert_eq!(document["wave"]["error_budget"]["used"], 3);
        assert_eq!(document["wave"]["paused_ms"], 65_000);
        assert_eq!(document["failures"][0]["count"], 2);
        assert_eq!(document["waiting"][0]["hostnames"][1], "PC-5");
        assert_eq!(document["jobs"].as_array().map(Vec::len), Some(5));
        // No budget is null, not zero.
        let unbudgeted = WaveSummary::default();
        assert_eq!(wave_json(&unbudgeted)["error_budget"], Value::Null);
        assert_eq!(wave_json(&unbudgeted)["batch"]["count"], Value::Null);
    }

    #[test]
    fn storage_nodes_render_as_table_and_json() {
        let nodes = ListStorageNodesResponse {
            nodes: vec![
                StorageNodeStatus {
                    node_id: "node-a".into(),
                    endpoint: "http://10.0.0.5:7600".into(),
                    site: "hq".into(),
                    reported: true,
                    total_bytes: 4 * 1024 * 1024 * 1024,
                    available_bytes: 1024 * 1024 * 1024,
                    active_sessions: 3,
                    accepting_captures: true,
                    report_age_ms: 2_000,
                    placed_jobs: 2,
                    ..StorageNodeStatus::default()
                },
                StorageNodeStatus {
                    node_id: "node-b".into(),
                    endpoint: "http://10.0.0.6:7600".into(),
                    ..StorageNodeStatus::default()
                },
            ],
            ..ListStorageNodesResponse::default()
        };
        let text = render_storage_nodes(&nodes);
        assert!(
            text.contains("4.0 GiB") && text.contains("1.0 GiB"),
            "{text}"
        );
        assert!(
            text.contains("accepting") && text.contains("2.0s ago"),
            "{text}"
        );
        assert!(text.contains("never"), "{text}");
        let document = storage_nodes_json(&nodes);
        assert_eq!(
            document["storage_nodes"][0]["capacity"]["active_sessions"],
            3
        );
        assert_eq!(document["storage_nodes"][1]["capacity"], Value::Null);
        assert!(text.contains("every replicated migration"), "{text}");

        let degraded = ListStorageNodesResponse {
            under_replicated: vec![UnderReplicated {
                migration_id: "m-1".into(),
                wave: "w1".into(),
                wanted: 2,
                holders: vec!["node-a".into(), "node-b".into()],
                live_holders: vec!["node-a".into()],
            }],
            ..nodes.clone()
        };
        let text = render_storage_nodes(&degraded);
        assert!(
            text.contains("1 under-replicated") && text.contains("node-b (down)"),
            "{text}"
        );
        let document = storage_nodes_json(&degraded);
        assert_eq!(document["under_replicated"][0]["live_holders"][0], "node-a");
        assert_eq!(
            render_storage_nodes(&ListStorageNodesResponse::default()),
            "no storage nodes\n"
        );
    }

    #[test]
    fn retries_and_events_as_json() {
        let retry = RetryFailedResponse {
            wave: Some(WaveSummary {
                name: "pilot-retry-1".into(),
                state: "created".into(),
                retry_of: "pilot".into(),
                ..WaveSummary::default()
            }),
            hostnames: vec!["PC-1".into()],
            excluded: vec![fleetmig_proto::v1::RetryExclusion {
                machine_id: "m2".into(),
                hostname: "PC-2".into(),
                reason: "failed in restoring after its reimage began".into(),
            }],
        };
        let text = render_retry("pilot", &retry);
        assert!(
            text.contains("created wave pilot-retry-1 retrying 1 failed machines of pilot: PC-1"),
            "{text}"
        );
        assert!(text.contains("fleetmig wave start pilot-retry-1"), "{text}");
        assert!(text.contains("PC-2: failed in restoring"), "{text}");
        let document = retry_json("pilot", &retry);
        assert_eq!(document["wave"]["retry_of"], "pilot");
        assert_eq!(document["excluded"][0]["hostname"], "PC-2");

        let event = Event {
            seq: 7,
            unix_ms: 1_700_000_000_123,
            actor: "operator:alice".into(),
            kind: "wave.paused".into(),
            wave: "pilot".into(),
            ..Event::default()
        };
        let line = serde_json::to_string(&event_json(&event)).unwrap();
        assert!(!line.contains('\n'), "one JSON document per line");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["actor"], "operator:alice");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["job_id"], Value::Null);
        let action = wave_action_json("pause", "pilot", retry.wave.as_ref());
        assert_eq!(action["summary"]["name"], "pilot-retry-1");
    }
}
