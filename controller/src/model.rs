//! Domain types the controller persists: machines, plans, waves, jobs and
//! audit events. Plain Rust with serde; the wire types stay in `grpc::convert`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::policy::{PlanPolicy, WavePolicy};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// One user profile as reported in a machine's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Profile folder name.
    pub name: String,
    /// Bytes in the profile.
    pub bytes: u64,
    /// Files in the profile.
    pub files: u64,
    /// Last use, seconds since the Unix epoch.
    pub last_used_unix: i64,
}

/// What a machine said about itself when it enrolled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    /// Network name of the machine.
    pub hostname: String,
    /// "windows-xp", "windows-7" or "unknown".
    pub os_family: String,
    /// OS version string.
    pub os_version: String,
    /// Identifier of the system volume's filesystem.
    pub volume_id: String,
    /// Free bytes on the system volume.
    pub free_bytes: u64,
    /// Size of the system volume.
    pub total_bytes: u64,
    /// User profiles found.
    pub profiles: Vec<Profile>,
    /// Stable hardware identity.
    pub hardware_id: String,
    /// Whether the system volume supports hard links.
    pub supports_hard_links: bool,
    /// Site the machine belongs to.
    pub site: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Worker software version.
    pub agent_version: String,
}

/// An enrolled machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Controller-assigned id (a UUID).
    pub id: String,
    /// Latest inventory.
    pub inventory: Inventory,
    /// First enrollment time.
    pub enrolled_ms: i64,
}

/// How a job moves a machine's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Same hardware, hard-link store on the system volume.
    Refresh,
    /// New hardware, state through a storage node.
    Replace,
}

/// Phases of the job state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Created, waiting for admission.
    Pending,
    /// Admitted and handed to the machine.
    Assigned,
    /// Capture running.
    Capturing,
    /// Capture complete and verified.
    Captured,
    /// Reimage hook running.
    Reimaging,
    /// Restore running.
    Restoring,
    /// Restore being verified.
    Verifying,
    /// Finished, store released.
    Done,
    /// Failed; see the job's failure.
    Failed,
    /// Not run (aborted wave).
    Skipped,
}

impl Phase {
    /// Every phase, in state-machine order.
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Assigned,
        Phase::Capturing,
        Phase::Captured,
        Phase::Reimaging,
        Phase::Restoring,
        Phase::Verifying,
        Phase::Done,
        Phase::Failed,
        Phase::Skipped,
    ];

    /// Lowercase name, as operators type it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Assigned => "assigned",
            Phase::Capturing => "capturing",
            Phase::Captured => "captured",
            Phase::Reimaging => "reimaging",
            Phase::Restoring => "restoring",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Skipped => "skipped",
        }
    }

    /// Parses a lowercase phase name.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.name() == name)
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Skipped)
    }

    /// Whether the job occupies a slot in its wave's window.
    pub fn is_in_flight(self) -> bool {
        !self.is_terminal() && self != Phase::Pending
    }
}

/// A failure recorded on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Phase the job was in.
    pub phase: Phase,
    /// Why, naming what was involved.
    pub reason: String,
    /// Whether a retry may succeed.
    pub retryable: bool,
}

/// Summary of a verified capture, as the worker reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureSummary {
    /// Profiles captured.
    pub users: u32,
    /// Files captured.
    pub files: u64,
    /// Directories captured.
    pub directories: u64,
    /// Bytes captured.
    pub bytes: u64,
    /// Files left out by the rules.
    pub excluded_files: u64,
    /// Digest of the sealed manifest.
    pub manifest_digest: String,
    /// Where the store lives.
    pub store_location: String,
    /// Replace captures: the storage nodes besides the primary that the
    /// worker copied the committed capture to before reporting it.
    pub replica_node_ids: Vec<String>,
}

/// Summary of a verified restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreSummary {
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub directories: u64,
    /// Bytes restored.
    pub bytes: u64,
    /// Files that did not match the manifest.
    pub mismatched_files: u64,
}

/// Capture options a plan passes to workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureOptions {
    /// Profile patterns to include (empty: all).
    pub user_include: Vec<String>,
    /// Profile patterns to exclude.
    pub user_exclude: Vec<String>,
    /// Skip unreadable files instead of failing.
    pub continue_on_error: bool,
    /// USMT rule files, in order (empty: the built-in rules).
    pub rules: Vec<RuleFile>,
}

/// A capture rule file a plan attached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFile {
    /// Its path relative to the plan file, as the plan names it (the built-in
    /// set, `@builtin` in a plan, comes with its own name and text).
    pub name: String,
    /// The XML text.
    pub xml: String,
}

/// One migration of one machine within a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id, derived from the wave and the machine.
    pub id: String,
    /// Wave the job belongs to.
    pub wave: String,
    /// Machine migrated.
    pub machine_id: String,
    /// How.
    pub scenario: Scenario,
    /// Current phase.
    pub phase: Phase,
    /// Times the job has been handed out.
    pub attempt: u32,
    /// Fencing token of the current owner: `epoch << 32 | attempt`.
    pub fence: u64,
    /// Worker session that owns the job (empty: none yet).
    pub session: String,
    /// Capture options.
    pub capture_options: CaptureOptions,
    /// Set once the capture is verified.
    pub captured: Option<CaptureSummary>,
    /// Set once the restore is verified.
    pub restored: Option<RestoreSummary>,
    /// Set when the job failed.
    pub failure: Option<Failure>,
    /// Replace jobs: the machine the state goes to (the computer association).
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Replace jobs: the storage node holding the state, once placed.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// The batch that admitted the job (`None`: not admitted yet).
    #[serde(default)]
    pub batch: Option<u32>,
    /// When the job entered its current phase (deadlines count from here).
    #[serde(default)]
    pub phase_since_ms: i64,
    /// A retried job is not admitted again before this time (backoff).
    #[serde(default)]
    pub not_before_ms: Option<i64>,
    /// Why a skipped job was skipped.
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// Creation time.
    pub created_ms: i64,
    /// When the worker first started it.
    pub started_ms: Option<i64>,
    /// When it reached a terminal phase.
    pub finished_ms: Option<i64>,
}

impl Job {
    /// The id of the job for `machine_id` in `wave`.
    pub fn id_for(wave: &str, machine_id: &str) -> String {
        format!("{wave}.{machine_id}")
    }

    /// Whether the job is in the destination's hands: a replace job from
    /// `Captured` on (the source's part is over once its capture is sealed).
    pub fn with_destination(&self) -> bool {
        self.scenario == Scenario::Replace
            && matches!(
                self.phase,
                Phase::Captured | Phase::Restoring | Phase::Verifying | Phase::Done
            )
    }

    /// The machine that runs the job's current part: the source, or for a
    /// replace job past its capture the destination (`None` while the
    /// destination has not checked in yet).
    pub fn owner(&self) -> Option<&str> {
        if self.with_destination() {
            self.destination
                .as_ref()
                .map(|d| d.machine_id.as_str())
                .filter(|id| !id.is_empty())
        } else {
            Some(&self.machine_id)
        }
    }

    /// For a replace job whose capture is committed and that is not over:
    /// the copies its plan wants and the nodes holding one (`None` for
    /// anything else).
    pub fn copies(&self) -> Option<(u32, Vec<String>)> {
        if self.scenario != Scenario::Replace || self.phase.is_terminal() {
            return None;
        }
        self.captured.as_ref()?;
        let placement = self.placement.as_ref()?;
        Some((placement.wanted(), placement.holders(true)))
    }

    /// [`Job::copies`] with the holders among `live` nodes:
    /// `(wanted, holders, live holders)`.
    pub fn live_copies(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Option<(u32, Vec<String>, Vec<String>)> {
        let (wanted, holders) = self.copies()?;
        let live_holders = holders
            .iter()
            .filter(|holder| live.contains(*holder))
            .cloned()
            .collect();
        Some((wanted, holders, live_holders))
    }

    /// Whether `machine_id` takes part in the job (source or destination).
    pub fn involves(&self, machine_id: &str) -> bool {
        self.machine_id == machine_id
            || self
                .destination
                .as_ref()
                .is_some_and(|d| d.machine_id == machine_id)
    }
}

/// The destination of a replace job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Hostname the plan names (the destination may enroll later).
    pub hostname: String,
    /// Machine id, once the destination took the job (empty before).
    #[serde(default)]
    pub machine_id: String,
}

/// Where a replace job's state is stored: its primary storage node (where
/// the source captures), the replica nodes chosen at admission, and the
/// nodes that hold a committed copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The primary storage node's id.
    pub node_id: String,
    /// Its address.
    pub endpoint: String,
    /// Bytes reserved on it.
    pub reserved_bytes: u64,
    /// When the reservation was made.
    pub reserved_ms: i64,
    /// Copies the capture must have, the primary included, resolved at
    /// admission (0: placed before replication existed; counts as 1).
    #[serde(default)]
    pub factor: u32,
    /// Nodes besides the primary the source copies its capture to before
    /// it counts as verified (`factor - 1` of them).
    #[serde(default)]
    pub replicas: Vec<ReplicaNode>,
    /// Nodes holding a committed copy: the primary and the replicas the
    /// source reported, then kept in step by the replica reconciler (a copy
    /// made later is added, a copy a node lost is dropped).
    #[serde(default)]
    pub holders: Vec<String>,
}

impl Placement {
    /// The copies wanted: [`Placement::factor`], at least 1.
    pub fn wanted(&self) -> u32 {
        self.factor.max(1)
    }

    /// The nodes holding a committed copy once the capture is `captured`;
    /// a placement from before replication (no factor) has its primary.
    pub fn holders(&self, captured: bool) -> Vec<String> {
        if self.factor == 0 && self.holders.is_empty() && captured {
            vec![self.node_id.clone()]
        } else {
            self.holders.clone()
        }
    }

    /// Whether `node_id` is one of the planned replica nodes.
    pub fn is_replica(&self, node_id: &str) -> bool {
        self.replicas.iter().any(|r| r.node_id == node_id)
    }
}

/// A storage node chosen to hold a copy of a replace job's capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// Storage node id.
    pub node_id: String,
    /// Its address when it was chosen.
    pub endpoint: String,
}

/// A computer association of a replace wave: source -> destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Association {
    /// Hostname of the old machine.
    pub source: String,
    /// Hostname of the new machine.
    pub destination: String,
}

/// Lifecycle of a wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveState {
    /// Applied, not started.
    Created,
    /// Admitting and running jobs.
    Running,
    /// No new starts; running jobs continue.
    Paused,
    /// Stopped by an operator; nothing new starts.
    Aborted,
    /// Every job is terminal.
    Completed,
    /// Stopped by its error budget (or the plan's): nothing new starts until
    /// an operator resumes it. The reason is in [`Wave::halt_reason`].
    Halted,
}

impl WaveState {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            WaveState::Created => "created",
            WaveState::Running => "running",
            WaveState::Paused => "paused",
            WaveState::Aborted => "aborted",
            WaveState::Completed => "completed",
            WaveState::Halted => "halted",
        }
    }
}

/// How a wave picks its machines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selector {
    /// Every enrolled machine.
    pub all: bool,
    /// Machines by id.
    pub ids: Vec<String>,
    /// Machines by hostname (case-insensitive).
    pub hostnames: Vec<String>,
    /// Machines at these sites.
    pub sites: Vec<String>,
    /// Machines carrying all of these labels.
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether the selector names nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.ids.is_empty()
            && self.hostnames.is_empty()
            && self.sites.is_empty()
            && self.labels.is_empty()
    }

    /// Whether `machine` is selected: `all`, or in `ids`/`hostnames`, or
    /// matching every given site/label condition.
    pub fn matches(&self, machine: &Machine) -> bool {
        if self.all {
            return true;
        }
        if self.ids.iter().any(|id| id == &machine.id) {
            return true;
        }
        let hostname = &machine.inventory.hostname;
        if self
            .hostnames
            .iter()
            .any(|h| h.eq_ignore_ascii_case(hostname))
        {
            return true;
        }
        if self.sites.is_empty() && self.labels.is_empty() {
            return false;
        }
        let site_ok = self.sites.is_empty() || self.sites.contains(&machine.inventory.site);
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| machine.inventory.labels.get(k) == Some(v));
        site_ok && labels_ok
    }
}

/// A wave as a plan defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSpec {
    /// Unique wave name.
    pub name: String,
    /// Which machines.
    pub select: Selector,
    /// Refresh or replace.
    pub scenario: Scenario,
    /// Most jobs in flight at once.
    pub max_in_flight: u32,
    /// Capture options for its jobs.
    pub capture: CaptureOptions,
    /// Replace waves: the computer associations (source -> destination).
    #[serde(default)]
    pub pairs: Vec<Association>,
    /// Batches, caps, budget, windows, deadlines and retries.
    #[serde(default)]
    pub policy: WavePolicy,
    /// Copies of each replace job's capture on distinct storage nodes, as
    /// the plan asks (the wave's `replication`, else the plan's); `None`:
    /// 2 when at least two storage nodes are registered at admission, else 1.
    #[serde(default)]
    pub replication: Option<u32>,
}

/// A stored plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Plan name.
    pub name: String,
    /// The plan's waves.
    pub waves: Vec<WaveSpec>,
    /// When it was applied.
    pub applied_ms: i64,
    /// The source text, kept for audit.
    pub source: String,
    /// Plan-wide budget and caps.
    #[serde(default)]
    pub policy: PlanPolicy,
}

/// A wave's runtime record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// The definition.
    pub spec: WaveSpec,
    /// Plan it came from.
    pub plan: String,
    /// Lifecycle state.
    pub state: WaveState,
    /// Machines resolved at start (empty before).
    pub machines: u32,
    /// When it was started.
    pub started_ms: Option<i64>,
    /// When it completed or was aborted.
    pub finished_ms: Option<i64>,
    /// Where the wave is in its batches.
    #[serde(default)]
    pub batch: BatchProgress,
    /// Why the wave halted (its state is `Halted`), or why it last halted.
    #[serde(default)]
    pub halt_reason: Option<String>,
    /// Pause bookkeeping: deadlines do not run while a wave is paused.
    #[serde(default)]
    pub paused: PauseClock,
    /// The wave this one retries the failed machines of (`wave retry-failed`).
    #[serde(default)]
    pub retry_of: Option<String>,
}

/// Where a wave is in its batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchProgress {
    /// Current batch, 0-based.
    pub index: u32,
    /// When the current batch opened.
    pub opened_ms: i64,
    /// An operator promoted the current batch (manual advance, or past
    /// unmet criteria): the next batch may open.
    pub promoted: bool,
}

/// Time a wave has spent paused, so deadlines can leave it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PauseClock {
    /// Paused milliseconds before the current pause.
    pub total_ms: u64,
    /// When the current pause began (`None`: not paused).
    pub since_ms: Option<i64>,
}

impl PauseClock {
    /// Paused milliseconds up to `now`.
    pub fn paused_ms(&self, now: i64) -> u64 {
        self.total_ms
            + self
                .since_ms
                .map_or(0, |since| now.saturating_sub(since).max(0) as u64)
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Store revision of the change (filled when read back).
    #[serde(default)]
    pub seq: u64,
    /// When.
    pub unix_ms: i64,
    /// Who: a machine id, `operator:<name>` or `controller`.
    pub actor: String,
    /// What kind of change, e.g. `job.phase`.
    pub kind: String,
    /// Wave involved, if any.
    pub wave: String,
    /// Job involved, if any.
    pub job_id: String,
    /// Machine involved, if any.
    pub machine_id: String,
    /// Human-readable detail.
    pub detail: String,
}
