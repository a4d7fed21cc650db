//! Replicas (issue 6): a committed migration copied from one node to
//! another with `Replicate`, the REPLICATE role on the target, resuming a
//! broken copy, and what is refused.

use fleetmig_proto::v1::CapabilityRole;
use fleetmig_storage_node::record::MigrationState;
use tonic::Code;

use crate::support::{TestChunk, TestNode, assert_refused, chunk, concat_ids};

/// Commits `chunks` under `migration` on `node` as the source `pc-1`
/// (committed, not released).
async fn committed(node: &TestNode, migration: &str, manifest: &[u8], chunks: &[&TestChunk]) {
    node.put(migration, chunks).await.expect("put");
    node.commit(migration, manifest, chunks)
        .await
        .expect("commit");
}

fn sealed_bytes(chunks: &[&TestChunk]) -> u64 {
    chunks.iter().map(|c| c.data.len() as u64).sum()
}

#[tokio::test]
async fn a_committed_migration_is_copied_and_sealed_on_the_target() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    let chunks: Vec<_> = (0..6)
        .map(|n| chunk(100 + n, 200_000 + n as usize))
        .collect();
    let refs: Vec<_> = chunks.iter().collect();
    let manifest = b"the sealed manifest of m-rep".to_vec();
    committed(&a, "m-rep", &manifest, &refs).await;

    let copied = a
        .replicate_to(a.capture("m-rep"), &b, b.replica("m-rep"))
        .await
        .expect("replicate");
    assert_eq!(
        (
            copied.chunks,
            copied.chunks_sent,
            copied.bytes_sent,
            copied.already_committed
        ),
        (6, 6, sealed_bytes(&refs), false)
    );
    assert_eq!(
        b.node.migration_state("m-rep"),
        Some(MigrationState::Sealed),
        "a replica is restorable at once"
    );
    assert_eq!(
        a.node.migration_state("m-rep"),
        Some(MigrationState::Committed),
        "the source is untouched"
    );
    let got = b.manifest("m-rep").await.expect("manifest on the replica");
    assert_eq!(got.manifest, manifest);
    let (served, error) = b.get_chunks("m-rep", &refs).await;
    assert!(error.is_none(), "{error:?}");
    for (served, expected) in served.iter().zip(&chunks) {
        assert_eq!(served.chunk_id, expected.id);
        assert_eq!(served.data, expected.data);
    }
    assert!(b.temporaries().is_empty());
    assert_eq!(b.capacity().await.reserved_bytes, 0, "the commit ends it");

    // Idempotent: nothing is sent again.
    let again = a
        .replicate_to(a.capture("m-rep"), &b, b.replica("m-rep"))
        .await
        .expect("replicate again");
    assert_eq!(
        (again.chunks, again.chunks_sent, again.bytes_sent),
        (6, 0, 0)
    );
    assert!(again.already_committed);

    // The replica can be copied on (re-sync of a third node) with the
    // controller's REPLICATE token on the source.
    let c = TestNode::start().await;
    let onward = b
        .replicate_to(b.replica("m-rep"), &c, c.replica("m-rep"))
        .await
        .expect("replicate from the replica");
    assert_eq!(onward.chunks_sent, 6);
    assert_eq!(
        c.manifest("m-rep").await.expect("manifest").manifest,
        manifest
    );
    for node in [a, b, c] {
        node.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn a_broken_replication_resumes_with_only_what_is_missing() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    let chunks: Vec<_> = (0..5).map(|n| chunk(200 + n, 50_000)).collect();
    let refs: Vec<_> = chunks.iter().collect();
    committed(&a, "m-resume", b"manifest", &refs).await;
    // An earlier attempt got two chunks across before it broke; a third is
    // on the target already for another migration (dedup).
    b.put_with(Some(b.replica("m-resume")), &refs[..2])
        .await
        .expect("partial copy");
    b.seal("other", b"other manifest", &refs[4..]).await;

    let copied = a
        .replicate_to(a.capture("m-resume"), &b, b.replica("m-resume"))
        .await
        .expect("replicate");
    assert_eq!(
        (copied.chunks, copied.chunks_sent, copied.bytes_sent),
        (5, 2, 100_000)
    );
    assert!(!copied.already_committed);
    let (served, error) = b.get_chunks("m-resume", &refs).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 5);
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_corrupt_local_chunk_is_never_sent() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    let chunks: Vec<_> = (0..4).map(|n| chunk(300 + n, 30_000)).collect();
    let refs: Vec<_> = chunks.iter().collect();
    committed(&a, "m-corrupt", b"manifest", &refs).await;
    let path = a.chunk_path(&chunks[2]);
    let mut bytes = std::fs::read(&path).expect("chunk file");
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).expect("corrupt it");

    let status = assert_refused(
        a.replicate_to(a.capture("m-corrupt"), &b, b.replica("m-corrupt"))
            .await,
        Code::DataLoss,
        &[&hex::encode(chunks[2].id), "m-corrupt", "checksum"],
    );
    drop(status);
    assert!(
        !b.chunk_path(&chunks[2]).exists(),
        "the corrupt chunk never reached the target"
    );
    assert_ne!(
        b.node.migration_state("m-corrupt"),
        Some(MigrationState::Sealed),
        "the copy is not committed"
    );
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test]
async fn only_committed_migrations_are_replicated_and_only_with_a_grant() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    let x = chunk(400, 1000);
    a.put("m-open", &[&x]).await.expect("put");
    assert_refused(
        a.replicate_to(a.capture("m-open"), &b, b.replica("m-open"))
            .await,
        Code::FailedPrecondition,
        &["migration m-open is capturing, not committed; nothing to replicate"],
    );
    assert_refused(
        a.replicate_to(a.capture("m-none"), &b, b.replica("m-none"))
            .await,
        Code::NotFound,
        &["m-none"],
    );
    a.commit("m-open", b"manifest", &[&x])
        .await
        .expect("commit");
    assert_refused(
        a.replicate_to(a.restore("m-open"), &b, b.replica("m-open"))
            .await,
        Code::PermissionDenied,
        &["CAPABILITY_ROLE_CAPTURE or CAPABILITY_ROLE_REPLICATE"],
    );
    let other_machine = a.token(CapabilityRole::Capture, "m-open", "pc-9");
    assert_refused(
        a.replicate_to(other_machine, &b, b.replica("m-open")).await,
        Code::PermissionDenied,
        &["captured by machine pc-1, not pc-9"],
    );
    let mut client = a.client.clone();
    let status = client
        .replicate(fleetmig_proto::v1::ReplicateRequest {
            token: Some(a.capture("m-open")),
            target_endpoint: b.url.clone(),
            target_token: None,
        })
        .await
        .expect_err("no target token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("target_token"), "{status:?}");
    let status = client
        .replicate(fleetmig_proto::v1::ReplicateRequest {
            token: Some(a.capture("m-open")),
            target_endpoint: "not a url".into(),
            target_token: Some(b.replica("m-open")),
        })
        .await
        .expect_err("bad endpoint");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The target checks the target token: one for node A is refused there.
    assert_refused(
        a.replicate_to(a.capture("m-open"), &b, a.replica("m-open"))
            .await,
        Code::PermissionDenied,
        &[
            "replicating migration m-open to",
            &b.url,
            "Reserve failed",
            "issued for node",
        ],
    );
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_full_target_refuses_with_its_own_code() {
    let a = TestNode::start().await;
    let b = TestNode::start_with(|config| config.min_free_percent = 100.0).await;
    let x = chunk(500, 1000);
    committed(&a, "m-full", b"manifest", &[&x]).await;
    assert_refused(
        a.replicate_to(a.capture("m-full"), &b, b.replica("m-full"))
            .await,
        Code::ResourceExhausted,
        &[
            "Reserve failed",
            "cannot reserve 1000 bytes for migration m-full",
        ],
    );
    let unreachable = TestNode::start().await;
    let url = unreachable.url.clone();
    unreachable.stop().await.expect("clean stop");
    let status = a
        .client
        .clone()
        .replicate(fleetmig_proto::v1::ReplicateRequest {
            token: Some(a.capture("m-full")),
            target_endpoint: url.clone(),
            target_token: Some(b.replica("m-full")),
        })
        .await
        .expect_err("target down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&url), "{status:?}");
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_replicate_role_writes_like_a_capture_and_seals_on_commit() {
    let node = TestNode::start().await;
    let (x, y) = (chunk(600, 4000), chunk(601, 5000));
    let reserved = node
        .client
        .clone()
        .reserve(fleetmig_proto::v1::ReserveRequest {
            token: Some(node.replica("m-copy")),
            bytes: 9000,
            lease_ms: 0,
        })
        .await
        .expect("a REPLICATE token reserves")
        .into_inner();
    assert_eq!(reserved.reserved_bytes, 9000);
    let missing = node
        .missing_with(node.replica("m-copy"), &[&x, &y])
        .await
        .expect("missing");
    assert_eq!(missing, vec![0, 1]);
    node.put_with(Some(node.replica("m-copy")), &[&x, &y])
        .await
        .expect("put");
    let committed = node
        .commit_with(node.replica("m-copy"), b"copied manifest", &[&x, &y])
        .await
        .expect("commit");
    assert_eq!((committed.chunks, committed.referenced_bytes), (2, 9000));
    assert_eq!(
        node.node.migration_state("m-copy"),
        Some(MigrationState::Sealed)
    );
    node.manifest("m-copy").await.expect("restorable at once");
    let again = node
        .commit_with(node.replica("m-copy"), b"copied manifest", &[&x, &y])
        .await
        .expect("the same commit again");
    assert_eq!(again, committed);
    assert_refused(
        node.commit_with(node.replica("m-copy"), b"another manifest", &[&x])
            .await,
        Code::FailedPrecondition,
        &["already committed"],
    );
    assert_refused(
        node.put_with(Some(node.replica("m-copy")), &[&chunk(602, 10)])
            .await,
        Code::FailedPrecondition,
        &["read-only"],
    );
    // A capture release of a replica is a no-op; the restore release works.
    let released = node.release(node.capture("m-copy")).await.expect("release");
    assert_eq!(released.state, "sealed");

    // A migration this node captured and committed, not yet released: a
    // REPLICATE commit of the same manifest seals it.
    node.put("m-own", &[&x]).await.expect("put");
    node.commit("m-own", b"own", &[&x]).await.expect("commit");
    assert_eq!(
        node.node.migration_state("m-own"),
        Some(MigrationState::Committed)
    );
    node.commit_with(node.replica("m-own"), b"own", &[&x])
        .await
        .expect("replica commit");
    assert_eq!(
        node.node.migration_state("m-own"),
        Some(MigrationState::Sealed)
    );

    // The role grants nothing else.
    let (_, error) = node
        .get_chunks_with(node.replica("m-copy"), concat_ids(&[&x]))
        .await;
    assert_eq!(error.expect("refused").code(), Code::PermissionDenied);
    assert_refused(
        node.release(node.replica("m-copy")).await,
        Code::PermissionDenied,
        &[],
    );
    // A replica survives a restart sealed.
    let node = node.restart().await;
    assert_eq!(
        node.node.migration_state("m-copy"),
        Some(MigrationState::Sealed)
    );
    node.stop().await.expect("clean stop");
}
