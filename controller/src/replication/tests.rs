//! Replication without real storage nodes: in-memory fake nodes served over
//! gRPC on loopback take reservations, copy migrations between each other
//! on `Replicate` and list what they hold; the controller places replace
//! jobs with replicas, checks the CAPTURED report against them, and the
//! reconciler repairs and re-syncs the copies.

use crate::controller::{Controller, ControllerSettings};
use crate::error::Error;
use crate::lifecycle::Report;
use crate::model::{CaptureSummary, Inventory, Job, Phase, Placement, Profile, now_ms};
use crate::nodes::{Capacity, StorageNode};
use crate::store::EmbeddedStore;
use fleetmig_auth::{Requirement, TokenVerifier};
use fleetmig_proto::v1::{self, CapabilityRole, storage_node_server};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status, Streaming};

const MIB: u64 = 1 << 20;

/// Fake nodes by endpoint, so that one can copy to another.
type Peers = Arc<Mutex<HashMap<String, FakeNode>>>;

#[derive(Default)]
struct FakeState {
    /// Migrations held, by id.
    migrations: BTreeMap<String, v1::MigrationEntry>,
    /// Claims of every token presented to `Replicate`: (token, target token).
    replicate_calls: Vec<(v1::Capability, v1::Capability)>,
    /// Claims of every token presented to `ListMigrations`.
    inventory_calls: Vec<v1::Capability>,
    /// Migrations reserved.
    reserved: Vec<String>,
    /// Answer `Replicate` with this error.
    fail_replicate: Option<Status>,
    /// Answer `ListMigrations` with this error.
    fail_inventory: Option<Status>,
}

#[derive(Clone)]
struct FakeNode {
    id: String,
    verifier: TokenVerifier,
    endpoint: String,
    state: Arc<Mutex<FakeState>>,
    peers: Peers,
}

impl FakeNode {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves a new fake node `id` on loopback; it checks tokens with
    /// `verifier`.
    async fn start(id: &str, verifier: TokenVerifier, peers: &Peers) -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let node = FakeNode {
            id: id.to_string(),
            verifier,
            endpoint: endpoint.clone(),
            state: Arc::default(),
            peers: peers.clone(),
        };
        peers.lock().unwrap().insert(endpoint, node.clone());
        let service = storage_node_server::StorageNodeServer::new(node.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        node
    }

    fn hold(&self, migration_id: &str, state: &str, digest: &str) {
        self.lock().migrations.insert(
            migration_id.to_string(),
            v1::MigrationEntry {
                migration_id: migration_id.to_string(),
                state: state.to_string(),
                manifest_digest: digest.to_string(),
            },
        );
    }

    fn holds(&self, migration_id: &str) -> bool {
        self.lock().migrations.contains_key(migration_id)
    }
}

impl FakeNode {
    /// The claims of `token`, checked for `role` on this node.
    fn claims(
        &self,
        token: Option<&v1::SignedCapability>,
        role: CapabilityRole,
    ) -> Result<v1::Capability, Status> {
        self.verifier
            .verify(token, need(role, &self.id))
            .map_err(|err| Status::permission_denied(err.to_string()))
    }
}

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl storage_node_server::StorageNode for FakeNode {
    async fn get_capacity(
        &self,
        _request: Request<v1::GetCapacityRequest>,
    ) -> Result<Response<v1::CapacityReport>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let claims = self.claims(request.get_ref().token.as_ref(), CapabilityRole::Reserve)?;
        self.lock().reserved.push(claims.migration_id);
        Ok(Response::new(v1::ReserveResponse {
            reserved_bytes: request.get_ref().bytes,
            expires_unix_ms: 0,
        }))
    }

    async fn missing_chunks(
        &self,
        _request: Request<v1::MissingChunksRequest>,
    ) -> Result<Response<v1::MissingChunksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn put_chunks(
        &self,
        _request: Request<Streaming<v1::PutChunkRequest>>,
    ) -> Result<Response<v1::PutChunksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn commit(
        &self,
        _request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_manifest(
        &self,
        _request: Request<v1::GetManifestRequest>,
    ) -> Result<Response<v1::GetManifestResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        _request: Request<v1::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn release(
        &self,
        _request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        let request = request.into_inner();
        let token = self.claims(request.token.as_ref(), CapabilityRole::Replicate)?;
        let target = self
            .peers
            .lock()
            .unwrap()
            .get(&request.target_endpoint)
            .cloned()
            .ok_or_else(|| Status::unavailable("no such target"))?;
        let target_token =
            target.claims(request.target_token.as_ref(), CapabilityRole::Replicate)?;
        let entry = {
            let mut state = self.lock();
            state
                .replicate_calls
                .push((token.clone(), target_token.clone()));
            if let Some(status) = state.fail_replicate.clone() {
                return Err(status);
            }
            state
                .migrations
                .get(&token.migration_id)
                .cloned()
                .ok_or_else(|| Status::not_found("no such migration"))?
        };
        let already_committed = target.holds(&entry.migration_id);
        target.hold(&entry.migration_id, "sealed", &entry.manifest_digest);
        Ok(Response::new(v1::ReplicateResponse {
            chunks: 3,
            chunks_sent: if already_committed { 0 } else { 3 },
            bytes_sent: if already_committed { 0 } else { 300 },
            already_committed,
        }))
    }

    async fn list_migrations(
        &self,
        request: Request<v1::ListMigrationsRequest>,
    ) -> Result<Response<v1::ListMigrationsResponse>, Status> {
        let request = request.into_inner();
        let token = self.claims(request.token.as_ref(), CapabilityRole::Inventory)?;
        let mut state = self.lock();
        state.inventory_calls.push(token);
        if let Some(status) = state.fail_inventory.clone() {
            return Err(status);
        }
        // One migration a page, to walk the pagination.
        let mut after = state
            .migrations
            .range::<String, _>((
                std::ops::Bound::Excluded(request.start_after.clone()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, entry)| entry.clone());
        let migrations: Vec<_> = after.next().into_iter().collect();
        Ok(Response::new(v1::ListMigrationsResponse {
            migrations,
            more: after.next().is_some(),
        }))
    }
}

/// A controller with fake storage nodes, one replace job `swap.<source>`
/// from XP-1 (site `hq`) to W7-1, in a wave with `replication`.
struct Fleet {
    controller: Controller,
    _dir: tempfile::TempDir,
    nodes: BTreeMap<String, FakeNode>,
    source: String,
    destination: String,
    job_id: String,
}

fn live_capacity(available_bytes: u64) -> Capacity {
    Capacity {
        total_bytes: available_bytes * 2,
        free_bytes: available_bytes,
        available_bytes,
        accepting_captures: true,
        reported_ms: now_ms(),
        ..Capacity::default()
    }
}

async fn fleet(nodes: &[(&str, &str, u64)], replication: Option<u32>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let controller = Controller::open(store, ControllerSettings::default())
        .await
        .unwrap();
    let peers = Peers::default();
    let verifier =
        TokenVerifier::from_public_key(&controller.settings().secrets.signer().public_key())
            .unwrap();
    let mut fakes = BTreeMap::new();
    for (id, site, available) in nodes {
        let fake = FakeNode::start(id, verifier.clone(), &peers).await;
        controller
            .register_node(
                StorageNode {
                    id: id.to_string(),
                    endpoint: fake.endpoint.clone(),
                    site: site.to_string(),
                    registered_ms: now_ms(),
                },
                Some(live_capacity(*available)),
            )
            .await
            .unwrap();
        fakes.insert(id.to_string(), fake);
    }
    let inventory = |hostname: &str| Inventory {
        hostname: hostname.into(),
        site: "hq".into(),
        profiles: vec![Profile {
            name: "alice".into(),
            bytes: 5 * MIB,
            files: 10,
            last_used_unix: 0,
        }],
        ..Inventory::default()
    };
    let source = controller.enroll("", inventory("XP-1")).await.unwrap();
    let destination = controller.enroll("", inventory("W7-1")).await.unwrap();
    let replication = replication
        .map(|factor| format!("replication = {factor}\n"))
        .unwrap_or_default();
    let plan = format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"swap\"\nscenario = \"replace\"\n\
         {replication}pairs = [{{ source = \"XP-1\", destination = \"W7-1\" }}]\n"
    );
    controller.apply_plan(&plan, "p.toml", "test").await.unwrap();
    controller.start_wave("swap", "test").await.unwrap();
    let job_id = Job::id_for("swap", &source);
    Fleet {
        controller,
        _dir: dir,
        nodes: fakes,
        source,
        destination,
        job_id,
    }
}

impl Fleet {
    fn job(&self) -> Job {
        self.controller.registry().jobs[&self.job_id].value.clone()
    }

    async fn place(&self) -> Result<Placement, String> {
        self.controller.place(&self.job(), &HashSet::new(), 0).await
    }

    /// Admits the job as the scheduler would: placed, then assigned.
    async fn admit(&self) -> Placement {
        let placement = self.place().await.expect("the job is placed");
        let admitted = placement.clone();
        self.controller
            .update_job(&self.job_id, |job| {
                let mut next = job.clone();
                next.phase = Phase::Assigned;
                next.placement = Some(admitted.clone());
                Ok(Some((next, vec![])))
            })
            .await
            .unwrap();
        placement
    }

    /// The source picks the job up and starts capturing; returns its fence.
    async fn start_capture(&self) -> u64 {
        let job = self
            .controller
            .check_in(&self.source, "s-src", "")
            .await
            .unwrap()
            .assignment
            .expect("the source is assigned its capture");
        self.controller
            .report(
                &self.source,
                &self.job_id,
                job.fence,
                Report::Entered(Phase::Capturing),
            )
            .await
            .unwrap();
        job.fence
    }

    async fn report_captured(&self, fence: u64, replicas: &[&str]) -> crate::Result<Phase> {
        let summary = CaptureSummary {
            files: 10,
            manifest_digest: "digest".into(),
            replica_node_ids: replicas.iter().map(|r| r.to_string()).collect(),
            ..CaptureSummary::default()
        };
        self.controller
            .report(&self.source, &self.job_id, fence, Report::Captured(summary))
            .await
    }

    /// Placed, captured on the primary and copied to every replica (the
    /// fake nodes hold it); returns the placement.
    async fn captured(&self) -> Placement {
        let placement = self.admit().await;
        let fence = self.start_capture().await;
        self.nodes[&placement.node_id].hold(&self.job_id, "sealed", "digest");
        let replicas: Vec<&str> = placement
            .replicas
            .iter()
            .map(|r| r.node_id.as_str())
            .collect();
        for replica in &replicas {
            self.nodes[*replica].hold(&self.job_id, "sealed", "digest");
        }
        self.report_captured(fence, &replicas).await.unwrap();
        placement
    }

    fn holders(&self) -> Vec<String> {
        self.job().placement.unwrap().holders
    }

    /// Makes node `id` miss its reports (no longer live).
    fn silence(&self, id: &str) {
        let mut capacity = live_capacity(100 * MIB);
        capacity.reported_ms = now_ms() - 3_600_000;
        self.controller.report_capacity(id, capacity).unwrap();
    }

    fn revive(&self, id: &str) {
        self.controller
            .report_capacity(id, live_capacity(100 * MIB))
            .unwrap();
    }

    fn verifier(&self) -> TokenVerifier {
        TokenVerifier::from_public_key(&self.controller.settings().secrets.signer().public_key())
            .unwrap()
    }

    async fn events(&self, kind: &str) -> Vec<String> {
        self.controller
            .audit_log(Some("swap"))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }
}

fn need(role: CapabilityRole, node_id: &str) -> Requirement<'_> {
    Requirement {
        role,
        node_id,
        now_unix_ms: now_ms(),
    }
}

#[tokio::test]
async fn placement_reserves_on_the_primary_and_picks_replicas_at_another_site() {
    let fleet = fleet(
        &[
            ("a", "hq", 900 * MIB),
            ("b", "hq", 1000 * MIB),
            ("c", "paris", 500 * MIB),
            ("d", "paris", 600 * MIB),
        ],
        Some(3),
    )
    .await;
    let placement = fleet.place().await.unwrap();
    assert_eq!(placement.node_id, "b", "same site, then most room");
    assert_eq!(placement.factor, 3);
    let replicas: Vec<&str> = placement
        .replicas
        .iter()
        .map(|r| r.node_id.as_str())
        .collect();
    assert_eq!(replicas, ["d", "a"], "another site first, then the other site left");
    assert_eq!(placement.replicas[0].endpoint, fleet.nodes["d"].endpoint);
    assert!(placement.holders.is_empty(), "nothing is committed yet");
    assert_eq!(fleet.nodes["b"].lock().reserved, [fleet.job_id.clone()]);
    assert!(
        fleet.nodes["d"].lock().reserved.is_empty(),
        "a replica reserves when it is copied to"
    );
}

#[tokio::test]
async fn the_factor_defaults_by_the_registered_nodes() {
    let two = fleet(&[("a", "hq", 900 * MIB), ("b", "hq", 800 * MIB)], None).await;
    let placement = two.place().await.unwrap();
    assert_eq!((placement.factor, placement.replicas.len()), (2, 1));
    let one = fleet(&[("a", "hq", 900 * MIB)], None).await;
    let placement = one.place().await.unwrap();
    assert_eq!((placement.factor, placement.replicas.len()), (1, 0));
    let single = fleet(&[("a", "hq", 900 * MIB), ("b", "hq", 800 * MIB)], Some(1)).await;
    assert!(single.place().await.unwrap().replicas.is_empty());
}

#[tokio::test]
async fn a_job_waits_when_too_few_nodes_can_hold_its_copies() {
    let fleet = fleet(&[("a", "hq", 900 * MIB), ("b", "hq", 800 * MIB)], Some(3)).await;
    let reason = fleet.place().await.unwrap_err();
    assert_eq!(
        reason,
        "waiting for storage nodes: replication 3 needs 3 storage nodes, 2 registered"
    );
    let fleet = self::fleet(&[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB)], Some(2)).await;
    fleet.silence("b");
    let reason = fleet.place().await.unwrap_err();
    assert!(
        reason.starts_with(&format!(
            "waiting for 1 more live storage node with {} bytes free for replicas (replication 2): b: no capacity report for over 30s",
            5 * MIB
        )),
        "{reason}"
    );
    assert!(
        fleet.nodes["a"].lock().reserved.is_empty(),
        "nothing is reserved for a job that waits"
    );
}

#[tokio::test]
async fn the_source_gets_replicate_tokens_and_the_destination_restore_tokens_for_every_holder() {
    let fleet = fleet(&[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB)], Some(2)).await;
    let placement = fleet.admit().await;
    assert_eq!((placement.node_id.as_str(), placement.replicas[0].node_id.as_str()), ("a", "b"));
    let verifier = fleet.verifier();
    let job = fleet
        .controller
        .check_in(&fleet.source, "s-src", "")
        .await
        .unwrap()
        .assignment
        .unwrap();
    let transfer = fleet.controller.replace_transfer(&job, &fleet.source).unwrap();
    assert_eq!(transfer.node_id, "a");
    assert_eq!(transfer.replicas.len(), 1);
    let replica = &transfer.replicas[0];
    assert_eq!(
        (replica.node_id.as_str(), replica.node_endpoint.as_str()),
        ("b", fleet.nodes["b"].endpoint.as_str())
    );
    let claims = verifier
        .verify(replica.capability.as_ref(), need(CapabilityRole::Replicate, "b"))
        .unwrap();
    assert_eq!(
        (claims.machine_id.as_str(), claims.migration_id.as_str(), claims.fence),
        (fleet.source.as_str(), fleet.job_id.as_str(), job.fence)
    );

    fleet
        .controller
        .report(&fleet.source, &fleet.job_id, job.fence, Report::Entered(Phase::Capturing))
        .await
        .unwrap();
    fleet.report_captured(job.fence, &["b"]).await.unwrap();
    assert_eq!(fleet.holders(), ["a", "b"]);
    let taken = fleet
        .controller
        .check_in(&fleet.destination, "s-dst", "")
        .await
        .unwrap()
        .assignment
        .unwrap();
    let transfer = fleet
        .controller
        .replace_transfer(&taken, &fleet.destination)
        .unwrap();
    verifier
        .verify(transfer.capability.as_ref(), need(CapabilityRole::Restore, "a"))
        .unwrap();
    assert_eq!(transfer.replicas.len(), 1);
    let claims = verifier
        .verify(
            transfer.replicas[0].capability.as_ref(),
            need(CapabilityRole::Restore, "b"),
        )
        .unwrap();
    assert_eq!(
        (claims.machine_id.as_str(), claims.fence),
        (fleet.destination.as_str(), taken.fence)
    );
}

#[tokio::test]
async fn a_capture_counts_only_with_every_planned_replica() {
    let fleet = fleet(
        &[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB), ("c", "nice", 700 * MIB)],
        Some(2),
    )
    .await;
    let placement = fleet.admit().await;
    assert_eq!(placement.replicas[0].node_id, "b");
    let fence = fleet.start_capture().await;
    let missing = fleet.report_captured(fence, &[]).await.unwrap_err();
    assert!(
        matches!(missing, Error::InvalidTransition { .. }),
        "refused as a failed precondition: {missing}"
    );
    assert_eq!(
        tonic::Status::from(missing).code(),
        tonic::Code::FailedPrecondition
    );
    let unplanned = fleet.report_captured(fence, &["c"]).await.unwrap_err();
    assert!(
        unplanned.to_string().contains("nodes c that were not chosen for it (its replica nodes: b)"),
        "{unplanned}"
    );
    assert_eq!(fleet.job().phase, Phase::Capturing, "still capturing");
    assert_eq!(
        fleet.report_captured(fence, &["b", "b"]).await.unwrap(),
        Phase::Captured
    );
    assert_eq!(fleet.holders(), ["a", "b"]);
    assert_eq!(
        fleet.job().captured.unwrap().replica_node_ids,
        ["b", "b"],
        "the summary as reported (the wire adapter drops duplicates)"
    );
}

#[tokio::test]
async fn the_reconciler_copies_again_when_a_holder_is_down() {
    let fleet = fleet(
        &[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB), ("c", "nice", 700 * MIB)],
        Some(2),
    )
    .await;
    fleet.captured().await;
    assert_eq!(fleet.holders(), ["a", "b"]);
    // Fully replicated: a pass changes nothing (it re-syncs the new nodes).
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!(report.nodes_synced, 3, "{report:?}");
    assert_eq!((report.replicated, report.holders_dropped), (0, 0), "{report:?}");
    assert!(fleet.controller.under_replicated().is_empty());
    let inventory = &fleet.nodes["a"].lock().inventory_calls[0];
    assert_eq!(inventory.role, CapabilityRole::Inventory as i32);
    assert!(inventory.migration_id.is_empty() && inventory.node_id == "a");

    fleet.silence("b");
    let under = fleet.controller.under_replicated();
    assert_eq!(under.len(), 1);
    assert_eq!(
        (under[0].wanted, under[0].holders.clone(), under[0].live_holders.clone()),
        (2, vec!["a".to_string(), "b".into()], vec!["a".to_string()])
    );
    let views = fleet.controller.storage_node_views();
    let live: Vec<(&str, bool)> = views.iter().map(|v| (v.node.id.as_str(), v.live)).collect();
    assert_eq!(live, [("a", true), ("b", false), ("c", true)]);

    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!(report.replicated, 1, "{report:?}");
    assert_eq!(report.under_replicated, 0, "{report:?}");
    assert_eq!(fleet.holders(), ["a", "b", "c"]);
    assert!(fleet.nodes["c"].holds(&fleet.job_id));
    let calls = fleet.nodes["a"].lock().replicate_calls.clone();
    assert_eq!(calls.len(), 1, "copied from the live primary");
    let (token, target_token) = &calls[0];
    assert_eq!(
        (token.role, token.node_id.as_str(), token.fence),
        (CapabilityRole::Replicate as i32, "a", fleetmig_auth::UNFENCED)
    );
    assert_eq!(
        (target_token.node_id.as_str(), target_token.migration_id.as_str()),
        ("c", fleet.job_id.as_str())
    );
    let replicated = fleet.events("job.replicated").await;
    assert_eq!(replicated.len(), 1);
    assert!(
        replicated[0].starts_with("copied to storage node c from a: 3 of 3 chunks, 300 bytes sent; holders now a, b, c"),
        "{replicated:?}"
    );
    assert!(fleet.controller.under_replicated().is_empty());

    // b comes back without the copy (its disk was replaced): re-synced, it
    // is no longer a holder; two live copies remain, enough.
    fleet.nodes["b"].lock().migrations.clear();
    fleet.revive("b");
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!((report.nodes_synced, report.holders_dropped), (1, 1), "{report:?}");
    assert_eq!(report.replicated, 0, "{report:?}");
    assert_eq!(fleet.holders(), ["a", "c"]);
    let lost = fleet.events("job.replica_lost").await;
    assert_eq!(
        lost,
        ["storage node b no longer holds the capture (the node does not hold it); 2 of 2 copies left on a, c"]
    );
}

#[tokio::test]
async fn a_node_with_another_manifest_or_an_open_capture_is_no_holder() {
    let fleet = fleet(&[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB)], Some(2)).await;
    fleet.captured().await;
    fleet.nodes["b"].hold(&fleet.job_id, "capturing", "");
    fleet.nodes["a"].hold(&fleet.job_id, "sealed", "other");
    // Another migration on the node, listed on its own page, is ignored.
    fleet.nodes["a"].hold("zzz.other", "sealed", "x");
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!(report.holders_dropped, 2, "{report:?}");
    assert!(fleet.holders().is_empty());
    assert_eq!(report.replicated, 0, "no live holder to copy from");
    let lost = fleet.events("job.replica_lost").await;
    assert!(
        lost.iter().any(|l| l.contains("the node holds another manifest (other, the job's is digest)")),
        "{lost:?}"
    );
    assert!(
        lost.iter().any(|l| l.contains("the node holds it capturing, not committed")),
        "{lost:?}"
    );
    let under = fleet.controller.under_replicated();
    assert_eq!(under.len(), 1);
    assert!(under[0].holders.is_empty() && under[0].live_holders.is_empty());
}

#[tokio::test]
async fn errors_from_one_node_never_stop_the_pass() {
    let fleet = fleet(
        &[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB), ("c", "nice", 700 * MIB)],
        Some(2),
    )
    .await;
    fleet.captured().await;
    fleet.nodes["c"].lock().fail_inventory = Some(Status::unavailable("disk check"));
    fleet.nodes["a"].lock().fail_replicate = Some(Status::resource_exhausted("no room on c"));
    fleet.silence("b");
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!(report.nodes_synced, 2, "a and b were synced, c failed: {report:?}");
    assert_eq!(report.replicated, 0);
    assert_eq!(report.under_replicated, 1);
    assert_eq!(report.errors.len(), 2, "{report:?}");
    assert!(report.errors[0].starts_with("re-sync of c: ListMigrations: Unavailable: disk check"));
    assert!(
        report.errors[1].contains("copy from a to c failed: ResourceExhausted: no room on c"),
        "{report:?}"
    );
    assert_eq!(fleet.holders(), ["a", "b"], "nothing recorded without a copy");
    // The failed node is re-synced on the next pass, the copy tried again.
    fleet.nodes["c"].lock().fail_inventory = None;
    fleet.nodes["a"].lock().fail_replicate = None;
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!((report.nodes_synced, report.replicated), (1, 1), "{report:?}");
    assert_eq!(fleet.holders(), ["a", "b", "c"]);
}

#[tokio::test]
async fn jobs_over_are_left_alone() {
    let fleet = fleet(&[("a", "hq", 900 * MIB), ("b", "paris", 800 * MIB), ("c", "nice", 700 * MIB)], Some(2)).await;
    fleet.captured().await;
    fleet
        .controller
        .update_job(&fleet.job_id, |job| {
            let mut next = job.clone();
            next.phase = Phase::Done;
            Ok(Some((next, vec![])))
        })
        .await
        .unwrap();
    fleet.silence("b");
    assert!(fleet.controller.under_replicated().is_empty());
    let report = fleet.controller.reconcile_replicas().await.unwrap();
    assert_eq!((report.replicated, report.under_replicated), (0, 0), "{report:?}");
    assert!(fleet.nodes["a"].lock().replicate_calls.is_empty());
}
