//! The sweeper: lease expiry, retention, and garbage collection that never
//! deletes a chunk a live migration or an open capture needs.

use std::time::{Duration, SystemTime};

use fleetmig_storage_node::record::MigrationState;

use crate::support::{TestChunk, TestNode, chunk, now_ms};

/// Makes a chunk file look an hour old (older than any open capture).
fn backdate(node: &TestNode, chunk: &TestChunk) {
    let file = std::fs::File::options()
        .write(true)
        .open(node.chunk_path(chunk))
        .expect("open chunk file");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

#[tokio::test]
async fn gc_keeps_referenced_claimed_and_recent_chunks_only() {
    let node = TestNode::start_with(|config| config.retention_ms = Some(0)).await;
    let (a1, a2, shared, b1) = (
        chunk(1, 1000),
        chunk(2, 2000),
        chunk(3, 3000),
        chunk(4, 4000),
    );
    node.seal("mig-a", b"manifest a", &[&a1, &a2, &shared])
        .await;
    node.put("mig-b", &[&shared, &b1]).await.expect("put b");
    node.commit("mig-b", b"manifest b", &[&shared, &b1])
        .await
        .expect("commit b");
    for chunk in [&a1, &a2, &shared, &b1] {
        backdate(&node, chunk);
    }

    // An open capture that was told a1 is present.
    node.reserve("mig-c", 1 << 20, 60_000)
        .await
        .expect("reserve c");
    let fresh = chunk(5, 500);
    assert_eq!(
        node.missing("mig-c", &[&a1, &fresh])
            .await
            .expect("missing"),
        vec![1]
    );

    // Retention 0: releasing the restore makes mig-a due for deletion now.
    let retained = node
        .release(node.restore("mig-a"))
        .await
        .expect("release restore");
    assert_eq!(retained.state, "retained");
    assert!(retained.delete_after_unix_ms <= now_ms());
    let stored_before = node.capacity().await.stored_bytes;
    // (The release also wakes the background sweeper: either may do the
    // work, so the checks below look at the outcome, not at who did it.)
    let report = node.node.sweep(now_ms()).await.expect("sweep");
    assert_eq!(report.gc.kept_claimed, 1, "{report:?}");
    assert!(!node.chunk_path(&a2).exists(), "a2: only mig-a needed it");
    assert!(
        node.chunk_path(&a1).exists(),
        "a1: claimed by the open capture"
    );
    assert!(
        node.chunk_path(&shared).exists(),
        "shared: mig-b references it"
    );
    assert!(node.chunk_path(&b1).exists());
    assert!(!node.data_dir().join("migrations/mig-a.json").exists());
    assert!(!node.data_dir().join("migrations/mig-a.manifest").exists());
    assert!(!node.data_dir().join("migrations/mig-a.chunks").exists());
    assert_eq!(node.node.migration_state("mig-a"), None);
    let capacity = node.capacity().await;
    assert!(capacity.stored_bytes <= stored_before - (2000 + 32));
    assert_eq!(capacity.migrations, 2);
    assert_eq!(
        node.manifest("mig-a").await.expect_err("deleted").code(),
        tonic::Code::NotFound
    );

    // A chunk file newer than the open capture's start is kept (it may be
    // an upload in progress) until it is old.
    let stray = chunk(6, 600);
    let mut contents = stray.checksum.to_vec();
    contents.extend_from_slice(&stray.data);
    std::fs::write(node.chunk_path(&stray), contents).expect("write chunk file");
    let report = node.node.gc().await.expect("gc");
    assert_eq!(
        (report.deleted_chunks, report.kept_recent),
        (0, 1),
        "{report:?}"
    );
    backdate(&node, &stray);
    let report = node.node.gc().await.expect("gc");
    assert_eq!(report.deleted_chunks, 1, "{report:?}");
    assert!(!node.chunk_path(&stray).exists());

    // When the capture expires, its claims go with it.
    let report = node
        .node
        .sweep(now_ms() + 120_000)
        .await
        .expect("sweep later");
    assert_eq!(report.expired, vec!["mig-c".to_owned()]);
    assert_eq!(report.deleted, vec!["mig-c".to_owned()], "retention 0");
    assert!(!node.chunk_path(&a1).exists(), "a1 is unclaimed now");
    assert!(node.chunk_path(&shared).exists());
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn leases_expire_and_free_their_reservation() {
    let node = TestNode::start().await;
    node.reserve("mig-lease", 5 << 20, 100)
        .await
        .expect("reserve");
    assert_eq!(node.capacity().await.reserved_bytes, 5 << 20);
    let report = node.node.sweep(now_ms() + 1_000).await.expect("sweep");
    assert_eq!(report.expired, vec!["mig-lease".to_owned()]);
    assert!(report.deleted.is_empty(), "kept for the retention period");
    assert_eq!(
        node.node.migration_state("mig-lease"),
        Some(MigrationState::Expired)
    );
    let capacity = node.capacity().await;
    assert_eq!(capacity.reserved_bytes, 0);
    assert_eq!(capacity.migrations, 1);

    // A capture call on an expired reservation reserves again.
    node.missing("mig-lease", &[&chunk(1, 10)])
        .await
        .expect("re-reserved");
    assert_eq!(
        node.node.migration_state("mig-lease"),
        Some(MigrationState::Capturing)
    );
    assert_eq!(node.capacity().await.reserved_bytes, 5 << 20);

    // Reserve is idempotent and renews.
    let first = node.reserve("mig-2", 1000, 50_000).await.expect("reserve");
    let second = node
        .reserve("mig-2", 1000, 50_000)
        .await
        .expect("reserve again");
    assert!(second.expires_unix_ms >= first.expires_unix_ms);
    assert_eq!(node.capacity().await.reserved_bytes, (5 << 20) + 1000);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn after_a_restart_gc_waits_for_captures_whose_claims_were_lost() {
    let node = TestNode::start_with(|config| config.retention_ms = Some(0)).await;
    let old = chunk(1, 100);
    node.seal("mig-old", b"m", &[&old]).await;
    assert_eq!(
        node.missing("mig-open", &[&old]).await.expect("missing"),
        Vec::<u32>::new()
    );
    backdate(&node, &old);

    let node = node.restart().await;
    assert_eq!(
        node.node.migration_state("mig-open"),
        Some(MigrationState::Capturing)
    );
    // Retention 0: mig-old goes now, leaving old unreferenced.
    node.release(node.restore("mig-old"))
        .await
        .expect("retained");
    let report = node.node.sweep(now_ms()).await.expect("sweep");
    assert_eq!(node.node.migration_state("mig-old"), None);
    assert!(report.gc.skipped.is_some(), "{report:?}");
    assert!(
        node.chunk_path(&old).exists(),
        "mig-open may still rely on it"
    );
    node.stop().await.expect("clean stop");
}
