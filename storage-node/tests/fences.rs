//! Fences: the node remembers the highest fence seen per migration, keeps it
//! in the record across restarts, and refuses lower ones; fence 0 is exempt.

use fleetmig_proto::v1::CapabilityRole;
use tonic::Code;

use crate::support::{TestNode, assert_refused, chunk};

fn record_fence(node: &TestNode, migration: &str) -> u64 {
    let path = node
        .data_dir()
        .join("migrations")
        .join(format!("{migration}.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("record")).expect("json");
    record["highest_fence"].as_u64().expect("highest_fence")
}

#[tokio::test]
async fn stale_fences_are_refused_and_the_mark_survives_a_restart() {
    let node = TestNode::start().await;
    let x = chunk(1, 1000);
    let capture = |fence| node.fenced(CapabilityRole::Capture, "m-f", "pc-1", fence);
    node.missing_with(capture(4), &[&x]).await.expect("fence 4");
    assert_eq!(record_fence(&node, "m-f"), 4);
    node.put_with(Some(capture(5)), &[&x])
        .await
        .expect("a takeover: fence 5");
    assert_eq!(record_fence(&node, "m-f"), 5, "persisted when raised");
    assert_refused(
        node.missing_with(capture(4), &[&x]).await,
        Code::FailedPrecondition,
        &["stale fence 4 for migration m-f (highest seen 5)"],
    );
    assert_refused(
        node.put_with(Some(capture(4)), &[&x]).await,
        Code::FailedPrecondition,
        &["stale fence 4"],
    );
    // Fence 0 (the controller's own tokens) is neither stale nor a raise.
    node.missing_with(capture(0), &[&x])
        .await
        .expect("unfenced");
    node.client
        .clone()
        .reserve(fleetmig_proto::v1::ReserveRequest {
            token: Some(node.fenced(CapabilityRole::Reserve, "m-f", "pc-1", 0)),
            bytes: 10,
            lease_ms: 0,
        })
        .await
        .expect("unfenced reserve");
    assert_eq!(record_fence(&node, "m-f"), 5);

    let node = node.restart().await;
    let capture = |fence| node.fenced(CapabilityRole::Capture, "m-f", "pc-1", fence);
    assert_refused(
        node.missing_with(capture(4), &[&x]).await,
        Code::FailedPrecondition,
        &["stale fence 4 for migration m-f (highest seen 5)"],
    );
    node.missing_with(capture(5), &[&x])
        .await
        .expect("the current fence");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_source_is_fenced_off_once_the_destination_takes_over() {
    let node = TestNode::start().await;
    let x = chunk(2, 1000);
    let source = |role| node.fenced(role, "m-h", "pc-1", 7);
    node.put_with(Some(source(CapabilityRole::Capture)), &[&x])
        .await
        .expect("put");
    node.commit_with(source(CapabilityRole::Capture), b"manifest", &[&x])
        .await
        .expect("commit");
    node.release(source(CapabilityRole::Capture))
        .await
        .expect("seal");
    // The destination's session has a higher fence.
    let destination = node.fenced(CapabilityRole::Restore, "m-h", "pc-2", 8);
    node.client
        .clone()
        .get_manifest(fleetmig_proto::v1::GetManifestRequest {
            token: Some(destination),
        })
        .await
        .expect("the destination reads");
    assert_refused(
        node.release(source(CapabilityRole::Capture)).await,
        Code::FailedPrecondition,
        &["stale fence 7 for migration m-h (highest seen 8)"],
    );
    let old_restore = node.fenced(CapabilityRole::Restore, "m-h", "pc-2", 7);
    assert_refused(
        node.release(old_restore).await,
        Code::FailedPrecondition,
        &["stale fence 7"],
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fences_of_migrations_without_a_record_are_kept_in_memory() {
    let node = TestNode::start().await;
    let x = chunk(3, 1000);
    let (_, error) = node
        .get_chunks_with(
            node.fenced(CapabilityRole::Restore, "m-new", "pc-2", 9),
            x.id.to_vec(),
        )
        .await;
    assert_eq!(error.expect("unknown").code(), Code::NotFound);
    assert_refused(
        node.missing_with(
            node.fenced(CapabilityRole::Capture, "m-new", "pc-1", 3),
            &[&x],
        )
        .await,
        Code::FailedPrecondition,
        &["stale fence 3 for migration m-new (highest seen 9)"],
    );
    assert_eq!(node.capacity().await.migrations, 0, "nothing was created");
    node.missing_with(
        node.fenced(CapabilityRole::Capture, "m-new", "pc-1", 9),
        &[&x],
    )
    .await
    .expect("the current fence");
    assert_eq!(
        record_fence(&node, "m-new"),
        9,
        "the new record takes the fence in"
    );
    node.stop().await.expect("clean stop");
}
