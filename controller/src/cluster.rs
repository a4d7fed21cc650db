//! Several controllers on one etcd cluster: who leads, how followers keep
//! their copy of the state current, and how the leader hears of machines
//! that talk to a follower.
//!
//! - **Membership.** Every controller serves workers, operators and storage
//!   nodes. One of them, elected through etcd's election API
//!   ([`crate::leader`]), runs the scheduler. Winning starts a *term*: the
//!   new leader bumps the epoch counter (`meta/epoch`) in a transaction
//!   guarded by its election key, so every fence handed out afterwards is
//!   higher than any fence of an earlier term.
//! - **Fencing.** Every write a leader makes carries its term's guard: a
//!   scheduling pass carries the guard of the term it started in
//!   ([`Controller::as_leader`]), so a pass that outlives its term (the
//!   process paused past its lease) has its writes refused by etcd. Writes
//!   that answer a worker or an operator are compare-and-swaps on the
//!   records they change and are safe from any controller.
//! - **The feed.** Each controller watches the whole key space from the
//!   revision it loaded at and applies every change newer than what it
//!   holds ([`Controller::run_feed`]): jobs, waves, plans, machines, nodes,
//!   migration keys and the epoch; audit events are published to operators
//!   from here, the controller's own included. If etcd compacted the history
//!   the watch needs, the state is loaded again.
//! - **Liveness.** Check-ins stay in memory (never one etcd write per
//!   check-in). A follower relays the machines it heard from to the leader
//!   about once a second ([`Controller::run_relay`]), so the leader decides
//!   that a machine lost contact only when no controller heard from it.

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::keys;
use crate::leader::{Election, Leadership};
use crate::model::{AuditEvent, Job, Machine, Plan, Wave, now_ms};
use crate::nodes::StorageNode;
use crate::registry::Versioned;
use crate::store::{LeaderGuard, Txn, TxnOutcome, WatchEvent, WatchUpdate};
use fleetmig_proto::v1::controller_peer_client::ControllerPeerClient;
use fleetmig_proto::{MAX_CONTROL_MESSAGE_BYTES, v1};
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a follower relays contacts and looks up the leader.
const RELAY_INTERVAL: Duration = Duration::from_secs(1);
/// Most machine ids in one relayed batch.
pub const MAX_RELAYED_CONTACTS: usize = 20_000;
/// Pause before re-watching after the feed broke.
const FEED_RETRY: Duration = Duration::from_millis(500);
/// How long a new leader waits for its feed to catch up with its own
/// election before it schedules.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The guard of the term a scheduling pass started in.
    static PASS_TERM: LeaderGuard;
}

/// One term of leadership held by this controller.
#[derive(Debug, Clone)]
pub struct Term {
    /// The election key's guard: every write of the term carries it.
    pub guard: LeaderGuard,
    /// The epoch counter's value for the term (the high half of fences).
    pub epoch: u32,
}

/// The leader as a follower knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownLeader {
    /// Its controller id.
    pub id: String,
    /// Its advertised gRPC URL.
    pub url: String,
}

impl KnownLeader {
    /// Encodes as an election candidate value: `<id> <url>`.
    pub fn candidate(&self) -> String {
        format!("{} {}", self.id, self.url)
    }

    /// Decodes an election candidate value.
    pub fn from_candidate(candidate: &str) -> KnownLeader {
        let (id, url) = candidate.split_once(' ').unwrap_or((candidate, ""));
        KnownLeader {
            id: id.to_string(),
            url: url.to_string(),
        }
    }
}

/// This controller's place among the fleet's controllers.
#[derive(Debug)]
pub struct Membership {
    me: KnownLeader,
    clustered: bool,
    term: Mutex<Option<Term>>,
    leader: Mutex<Option<KnownLeader>>,
    contacts: Mutex<HashSet<String>>,
    /// The newest store revision this controller's copy of the state reflects.
    applied: AtomicU64,
}

impl Membership {
    /// The only controller of an embedded store: always the leader.
    pub fn sole() -> Membership {
        Membership::new(
            KnownLeader {
                id: "embedded".into(),
                url: String::new(),
            },
            false,
        )
    }

    /// One of several controllers sharing an etcd cluster, known as `id` and
    /// reachable at `url`; a follower until elected.
    pub fn member(id: impl Into<String>, url: impl Into<String>) -> Membership {
        Membership::new(
            KnownLeader {
                id: id.into(),
                url: url.into(),
            },
            true,
        )
    }

    fn new(me: KnownLeader, clustered: bool) -> Membership {
        Membership {
            me,
            clustered,
            term: Mutex::new(None),
            leader: Mutex::new(None),
            contacts: Mutex::default(),
            applied: AtomicU64::new(0),
        }
    }

    /// This controller's id ("embedded" for the sole controller).
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// Whether other controllers share the store.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// Whether this controller schedules now.
    pub fn is_leader(&self) -> bool {
        !self.clustered || lock(&self.term).is_some()
    }

    /// The term this controller leads, if it does (never on the embedded store).
    pub fn term(&self) -> Option<Term> {
        lock(&self.term).clone()
    }

    /// The audit actor of this controller's own decisions.
    pub fn actor(&self) -> String {
        if self.clustered {
            format!("controller:{}", self.me.id)
        } else {
            "controller".into()
        }
    }

    /// The leader as last seen: this controller while it leads.
    pub fn leader(&self) -> Option<KnownLeader> {
        if self.is_leader() {
            return Some(self.me.clone());
        }
        lock(&self.leader).clone()
    }

    fn begin(&self, term: Term) {
        *lock(&self.term) = Some(term);
    }

    /// Ends the term whose election key had `create_revision` (a newer term
    /// won since is left alone).
    pub(crate) fn step_down(&self, create_revision: u64) {
        let mut term = lock(&self.term);
        if term
            .as_ref()
            .is_some_and(|t| t.guard.create_revision == create_revision)
        {
            *term = None;
        }
    }

    fn end_term(&self) {
        *lock(&self.term) = None;
    }

    /// Queues a contact for the leader when this controller follows.
    pub(crate) fn relay_contact(&self, machine_id: &str) {
        if self.clustered && !self.is_leader() {
            lock(&self.contacts).insert(machine_id.to_string());
        }
    }

    fn take_contacts(&self) -> Vec<String> {
        lock(&self.contacts).drain().collect()
    }

    fn requeue_contacts(&self, machines: Vec<String>) {
        lock(&self.contacts).extend(machines);
    }

    /// Records that the state reflects the store up to `revision`.
    pub(crate) fn applied_to(&self, revision: u64) {
        self.applied.fetch_max(revision, Ordering::AcqRel);
    }

    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The guard a write carries: the scheduling pass's term, else the term in
/// force, else none (a follower, or the embedded store).
pub(crate) fn guard_for_write(membership: &Membership) -> Option<LeaderGuard> {
    PASS_TERM
        .try_with(|guard| guard.clone())
        .ok()
        .or_else(|| membership.term().map(|term| term.guard))
}

/// What a leader does when its lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLoss {
    /// Step down at once (always, outside fault tests).
    StepDown,
    /// Fault injection: carry on as if still leading, as a process that
    /// slept through its lease does; only the fence on writes stops it.
    Ignore,
}

impl LeaseLoss {
    /// `Ignore` when the fault flag is set.
    pub fn from_fault_flag(ignore: bool) -> Self {
        if ignore { Self::Ignore } else { Self::StepDown }
    }
}

impl Controller {
    /// This controller's id among several ("embedded" on the embedded store).
    pub fn controller_id(&self) -> &str {
        self.inner.membership.id()
    }

    /// The leader as this controller last saw it.
    pub fn known_leader(&self) -> Option<KnownLeader> {
        self.inner.membership.leader()
    }

    /// Runs `work` as leader work: at once on the embedded store, under the
    /// current term's guard on etcd, and not at all on a follower (`None`).
    pub(crate) async fn as_leader<F: Future>(&self, work: F) -> Option<F::Output> {
        let membership = &self.inner.membership;
        if !membership.is_clustered() {
            return Some(work.await);
        }
        let term = membership.term()?;
        Some(PASS_TERM.scope(term.guard, work).await)
    }

    /// Campaigns for the leadership until `shutdown`; while elected, this
    /// controller schedules. Losing the lease means stepping down and
    /// campaigning again, never exiting (unless `on_loss` is the fault
    /// [`LeaseLoss::Ignore`]: then only a write refused by the fence ends
    /// the term).
    pub async fn run_election(
        self,
        election: Election,
        on_loss: LeaseLoss,
        shutdown: CancellationToken,
    ) {
        loop {
            let leadership = match election.campaign(&shutdown).await {
                Ok(leadership) => leadership,
                Err(_) if shutdown.is_cancelled() => return,
                Err(err) => {
                    tracing::warn!(error = %err, "campaign failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            match self.begin_term(&leadership).await {
                Ok(epoch) => tracing::info!(
                    epoch,
                    election_revision = leadership.epoch(),
                    "elected: this controller leads and schedules"
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "could not start the term; resigning");
                    if let Err(err) = leadership.resign().await {
                        tracing::warn!(error = %err, "resigning failed");
                    }
                    continue;
                }
            }
            let lost = leadership.lost();
            tokio::select! {
                () = lost.cancelled() => {
                    if on_loss == LeaseLoss::Ignore {
                        tracing::warn!(
                            "fault injection: the leadership lease is lost, and this controller \
                             goes on as if it led until the fence refuses one of its writes"
                        );
                        self.until_fenced(&shutdown).await;
                    }
                    self.inner.membership.end_term();
                    tracing::warn!("leadership lost: stepping down to follower");
                }
                () = shutdown.cancelled() => {
                    self.inner.membership.end_term();
                    if let Err(err) = leadership.resign().await {
                        tracing::warn!(error = %err, "resigning at shutdown failed");
                    }
                    return;
                }
            }
        }
    }

    /// Waits until a write refused by the fence ended this controller's
    /// term, or `shutdown`.
    async fn until_fenced(&self, shutdown: &CancellationToken) {
        while self.inner.membership.term().is_some() && !shutdown.is_cancelled() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Starts a term: bumps the epoch under the new leader's guard, waits
    /// for the state to catch up with that write, and gives every machine
    /// with a job in flight a fresh lease.
    async fn begin_term(&self, leadership: &Leadership) -> Result<u32> {
        let guard = leadership.guard();
        let store = &self.inner.store;
        for _ in 0..16 {
            let current = store.get(keys::EPOCH).await?;
            let (value, revision) = match &current {
                Some(kv) => (
                    keys::decode::<u32>(keys::EPOCH, &kv.value)?,
                    kv.mod_revision,
                ),
                None => (0, 0),
            };
            let next = value.checked_add(1).ok_or_else(|| Error::StoreCorrupt {
                key: keys::EPOCH.into(),
                reason: "epoch counter exhausted".into(),
            })?;
            let event = AuditEvent {
                seq: 0,
                unix_ms: now_ms(),
                actor: self.actor(),
                kind: "controller.leader".into(),
                wave: String::new(),
                job_id: String::new(),
                machine_id: String::new(),
                detail: format!(
                    "{} leads from epoch {next} ({})",
                    self.inner.membership.id(),
                    self.inner.membership.me.url
                ),
            };
            let txn = Txn::new()
                .when_revision(keys::EPOCH, revision)
                .put(keys::EPOCH, keys::encode(&next))
                .put(
                    keys::key(keys::AUDIT, &uuid::Uuid::now_v7().to_string()),
                    keys::encode(&event),
                )
                .when_leader(guard.clone());
            let TxnOutcome::Committed { revision } = store.txn(txn).await? else {
                continue;
            };
            self.catch_up(revision).await;
            self.observe_epoch(next);
            let running: Vec<String> = self
                .registry()
                .jobs
                .values()
                .filter(|job| job.value.phase.is_in_flight())
                .filter_map(|job| job.value.owner().map(str::to_string))
                .collect();
            for machine in running {
                self.inner.liveness.touch(&machine);
            }
            self.inner.membership.begin(Term { guard, epoch: next });
            self.inner.schedule.notify_one();
            return Ok(next);
        }
        Err(Error::Conflict {
            key: keys::EPOCH.into(),
        })
    }

    async fn catch_up(&self, revision: u64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        while self.inner.membership.applied() < revision {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    revision,
                    applied = self.inner.membership.applied(),
                    "the state did not catch up with the election; scheduling anyway (writes are compare-and-swap)"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Looks up the leader about once a second, for followers' relays and
    /// for status.
    pub async fn run_leader_watch(self, election: Election, shutdown: CancellationToken) {
        loop {
            match election.leader().await {
                Ok(info) => {
                    let known = info.map(|info| KnownLeader::from_candidate(&info.candidate));
                    let mut leader = lock(&self.inner.membership.leader);
                    if *leader != known {
                        tracing::info!(leader = ?known.as_ref().map(|l| &l.id), "leader changed");
                        *leader = known;
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot look up the leader"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELAY_INTERVAL) => {}
            }
        }
    }

    /// On a follower, relays the machines heard from to the leader about
    /// once a second; a failed relay is retried with the next batch.
    pub async fn run_relay(self, shutdown: CancellationToken) {
        let mut client: Option<(String, ControllerPeerClient<tonic::transport::Channel>)> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELAY_INTERVAL) => {}
            }
            let membership = &self.inner.membership;
            if membership.is_leader() {
                continue;
            }
            let Some(leader) = membership.leader() else {
                continue;
            };
            if leader.id == membership.id() || leader.url.is_empty() {
                continue;
            }
            let machines = membership.take_contacts();
            if machines.is_empty() {
                continue;
            }
            if client.as_ref().is_none_or(|(url, _)| *url != leader.url) {
                match peer_client(&self.inner.settings.transport, &leader.url) {
                    Ok(new) => client = Some((leader.url.clone(), new)),
                    Err(err) => {
                        tracing::warn!(url = %leader.url, error = %err, "bad leader URL");
                        continue;
                    }
                }
            }
            let Some((_, peer)) = client.as_mut() else {
                continue;
            };
            for batch in machines.chunks(MAX_RELAYED_CONTACTS) {
                let mut request = tonic::Request::new(v1::ContactsRequest {
                    controller_id: membership.id().to_string(),
                    machine_ids: batch.to_vec(),
                });
                request.set_timeout(Duration::from_secs(2));
                if let Err(status) = peer.report_contacts(request).await {
                    tracing::debug!(leader = %leader.id, error = %status, "relaying contacts failed; keeping them for the next try");
                    membership.requeue_contacts(batch.to_vec());
                }
            }
        }
    }

    /// Marks machines a follower heard from as in contact (leader side).
    /// Returns whether this controller leads.
    pub fn accept_relayed_contacts(&self, machine_ids: &[String]) -> bool {
        if !self.is_leader() {
            return false;
        }
        for machine in machine_ids {
            if crate::controller::is_valid_id(machine) {
                self.note_contact(machine);
            }
        }
        true
    }

    /// Keeps this controller's state current with the store's changes from
    /// the revision it loaded at, until `shutdown`.
    pub async fn run_feed(self, shutdown: CancellationToken) {
        let store = self.inner.store.clone();
        loop {
            let from = self.inner.membership.applied() + 1;
            let mut stream = match store.watch("", from).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, from, "cannot watch the store; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(FEED_RETRY) => continue,
                    }
                }
            };
            loop {
                let update = tokio::select! {
                    () = shutdown.cancelled() => return,
                    update = stream.next() => update,
                };
                match update {
                    Some(Ok(WatchUpdate::Changes { revision, events })) => {
                        self.apply_changes(revision, events);
                    }
                    Some(Ok(WatchUpdate::Compacted { compact_revision })) => {
                        tracing::info!(
                            compact_revision,
                            "store history compacted; reloading the state"
                        );
                        if let Err(err) = self.reload().await {
                            tracing::warn!(error = %err, "reloading the state failed; retrying");
                        }
                        break;
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "store watch broke; resuming");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(FEED_RETRY) => {}
            }
        }
    }

    /// Loads the whole state again (after compaction), keeping the volatile
    /// parts (progress, waiting reasons are recomputed by the scheduler).
    async fn reload(&self) -> Result<()> {
        let store = self.inner.store.as_ref();
        let revision = store.revision().await?;
        let mut fresh =
            crate::load::load_registry(store, self.inner.settings.secrets.master()).await?;
        let nodes = crate::load::load_nodes(store).await?;
        let epoch = crate::load::current_epoch(store).await?;
        {
            let mut registry = self.registry();
            fresh.progress = std::mem::take(&mut registry.progress);
            *registry = fresh;
        }
        {
            let mut table = lock(&self.inner.nodes);
            for (id, (node, _)) in nodes.nodes {
                let capacity = table.nodes.get(&id).and_then(|(_, c)| c.clone());
                table.nodes.insert(id, (node, capacity));
            }
        }
        self.observe_epoch(epoch);
        self.inner.membership.applied_to(revision);
        self.inner.schedule.notify_one();
        Ok(())
    }

    /// Applies one transaction's changes, keeping whatever is newer.
    fn apply_changes(&self, revision: u64, events: Vec<WatchEvent>) {
        let mut jobs_changed = false;
        for event in events {
            let WatchEvent::Put(kv) = event else {
                // Nothing the controller keeps is ever deleted.
                continue;
            };
            if let Err(err) = self.apply_put(&kv.key, &kv.value, kv.mod_revision, &mut jobs_changed)
            {
                tracing::warn!(key = %kv.key, error = %err, "cannot apply a change from the store");
            }
        }
        self.inner.membership.applied_to(revision);
        if jobs_changed {
            self.inner.schedule.notify_one();
        }
    }

    fn apply_put(
        &self,
        key: &str,
        value: &[u8],
        revision: u64,
        jobs_changed: &mut bool,
    ) -> Result<()> {
        if let Some(id) = key.strip_prefix(keys::JOBS) {
            let job: Job = keys::decode(key, value)?;
            let mut registry = self.registry();
            if registry.jobs.get(id).is_none_or(|j| j.revision < revision) {
                registry.put_job(job, revision);
                *jobs_changed = true;
            }
        } else if key.starts_with(keys::AUDIT) {
            let mut event: AuditEvent = keys::decode(key, value)?;
            event.seq = revision;
            let _ = self.inner.events.send(event);
        } else if let Some(id) = key.strip_prefix(keys::MACHINES) {
            let machine: Machine = keys::decode(key, value)?;
            let mut registry = self.registry();
            if registry
                .machines
                .get(id)
                .is_none_or(|m| m.revision < revision)
            {
                registry.put_machine(machine, revision);
            }
        } else if let Some(name) = key.strip_prefix(keys::WAVES) {
            let wave: Wave = keys::decode(key, value)?;
            let mut registry = self.registry();
            if registry
                .waves
                .get(name)
                .is_none_or(|w| w.revision < revision)
            {
                registry.waves.insert(
                    name.to_string(),
                    Versioned {
                        value: wave,
                        revision,
                    },
                );
                *jobs_changed = true;
            }
        } else if let Some(name) = key.strip_prefix(keys::PLANS) {
            let plan: Plan = keys::decode(key, value)?;
            let mut registry = self.registry();
            if registry
                .plans
                .get(name)
                .is_none_or(|p| p.revision < revision)
            {
                registry.plans.insert(
                    name.to_string(),
                    Versioned {
                        value: plan,
                        revision,
                    },
                );
            }
        } else if key.starts_with(keys::NODES) {
            let node: StorageNode = keys::decode(key, value)?;
            let mut table = lock(&self.inner.nodes);
            let capacity = table.nodes.get(&node.id).and_then(|(_, c)| c.clone());
            table.nodes.insert(node.id.clone(), (node, capacity));
        } else if let Some(job_id) = key.strip_prefix(keys::MIGRATION_KEYS) {
            let stored: String = keys::decode(key, value)?;
            let migration_key = self.inner.settings.secrets.master().open(key, &stored)?;
            self.registry()
                .migration_keys
                .insert(job_id.to_string(), migration_key);
        } else if let Some(serial) = key.strip_prefix(crate::enrollment::REVOKED) {
            self.inner.settings.trust.add_revoked([serial.to_string()]);
        } else if key == keys::EPOCH {
            self.observe_epoch(keys::decode::<u32>(key, value)?);
        }
        Ok(())
    }
}

fn peer_client(
    transport: &fleetmig_auth::Transport,
    url: &str,
) -> Result<ControllerPeerClient<tonic::transport::Channel>> {
    let endpoint = transport
        .endpoint(url)
        .map_err(|err| Error::InvalidArgument(format!("leader URL {url:?}: {err}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(ControllerPeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES))
}

#[cfg(test)]
mod etcd_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_round_trip() {
        let me = KnownLeader {
            id: "c1".into(),
            url: "http://10.0.0.1:7400".into(),
        };
        assert_eq!(KnownLeader::from_candidate(&me.candidate()), me);
        assert_eq!(
            KnownLeader::from_candidate("lonely"),
            KnownLeader {
                id: "lonely".into(),
                url: String::new()
            }
        );
    }

    #[test]
    fn the_sole_controller_always_leads_and_relays_nothing() {
        let sole = Membership::sole();
        assert!(sole.is_leader());
        assert_eq!(sole.actor(), "controller");
        sole.relay_contact("m1");
        assert!(sole.take_contacts().is_empty());
    }

    #[test]
    fn a_member_leads_only_during_its_term() {
        let member = Membership::member("c2", "http://127.0.0.1:1");
        assert!(!member.is_leader());
        member.relay_contact("m1");
        assert_eq!(member.take_contacts(), vec!["m1".to_string()]);
        let guard = LeaderGuard {
            key: "election/1".into(),
            create_revision: 7,
        };
        member.begin(Term { guard, epoch: 3 });
        assert!(member.is_leader());
        assert_eq!(member.actor(), "controller:c2");
        // A refusal naming an older term leaves the current one alone.
        member.step_down(5);
        assert!(member.is_leader());
        member.step_down(7);
        assert!(!member.is_leader());
    }
}
