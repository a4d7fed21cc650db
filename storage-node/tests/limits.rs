//! Admission: oversized messages, reservations that do not fit, restore-only
//! nodes and the client limit.

use fleetmig_proto::v1::PutChunkRequest;
use tonic::Code;

use crate::support::{TestNode, assert_refused, chunk};

#[tokio::test]
async fn an_oversized_message_is_refused_and_nothing_is_stored() {
    let node = TestNode::start().await;
    let big = chunk(1, 9 * 1024 * 1024);
    let status = node
        .put_messages(vec![PutChunkRequest {
            token: Some(node.capture("m")),
            chunk_id: big.id.to_vec(),
            checksum: big.checksum.to_vec(),
            data: big.data.clone(),
        }])
        .await
        .expect_err("9 MiB is over the limit");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(node.temporaries().is_empty());
    assert!(!node.chunk_path(&big).exists());
    assert_eq!(node.missing("m", &[&big]).await.expect("missing"), vec![0]);
    assert_eq!(node.capacity().await.stored_bytes, 0);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reservations_must_fit_beside_the_others_and_the_floor() {
    let node = TestNode::start().await;
    let available = node.capacity().await.available_bytes;
    assert!(available > 1 << 20, "the test disk has room");
    let status = assert_refused(
        node.reserve("too-big", available * 2, 0).await,
        Code::ResourceExhausted,
        &[
            node.node.node_id(),
            &(available * 2).to_string(),
            "bytes available",
        ],
    );
    drop(status);
    node.reserve("half", available / 2, 0)
        .await
        .expect("half fits");
    let capacity = node.capacity().await;
    assert_eq!(capacity.reserved_bytes, available / 2);
    assert!(
        capacity.available_bytes < available,
        "the reservation counts"
    );
    assert_refused(
        node.reserve("three-quarters", available / 4 * 3, 0).await,
        Code::ResourceExhausted,
        &["three-quarters"],
    );
    // Re-reserving the same migration does not count it against itself.
    node.reserve("half", available / 2, 0)
        .await
        .expect("idempotent");
    node.stop().await.expect("clean stop");

    let floor = TestNode::start_with(|config| config.min_free_percent = 100.0).await;
    let capacity = floor.capacity().await;
    assert_eq!(capacity.available_bytes, 0);
    assert_refused(
        floor.reserve("any", 1, 0).await,
        Code::ResourceExhausted,
        &["0 bytes available"],
    );
    assert_refused(
        floor.missing("implicit", &[&chunk(1, 10)]).await,
        Code::ResourceExhausted,
        &[],
    );
    floor.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_restore_only_node_takes_no_captures_but_serves_restores() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(root.path(), |_| {}).await;
    let a = chunk(1, 100);
    node.seal("mig", b"m", &[&a]).await;
    node.stop().await.expect("clean stop");

    let node = TestNode::start_in(root.path(), |config| config.restore_only = true).await;
    assert!(!node.capacity().await.accepting_captures);
    assert_refused(
        node.reserve("new", 1, 0).await,
        Code::FailedPrecondition,
        &["restore-only"],
    );
    assert_refused(
        node.missing("new", &[&a]).await,
        Code::FailedPrecondition,
        &["restore-only"],
    );
    let (served, error) = node.get_chunks("mig", &[&a]).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 1);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reservations_beyond_the_client_limit_are_refused() {
    let node = TestNode::start_with(|config| config.max_clients = 1).await;
    node.missing("busy", &[&chunk(1, 10)])
        .await
        .expect("first capture");
    assert_eq!(node.capacity().await.active_sessions, 1);
    assert_refused(
        node.reserve("second", 1, 0).await,
        Code::ResourceExhausted,
        &["1 active client sessions, at most 1"],
    );
    // The active capture itself may renew its reservation.
    node.reserve("busy", 1, 0).await.expect("renewal");
    node.stop().await.expect("clean stop");
}
