//! A migration's whole life over gRPC: reserve, find missing chunks, upload,
//! commit, release, restore, and what survives a restart.

use fleetmig_storage_node::record::MigrationState;
use tonic::Code;

use crate::support::{TestNode, assert_refused, chunk, now_ms};

#[tokio::test]
async fn reserve_capture_commit_release_and_restore_round_trip() {
    let node = TestNode::start().await;
    let reserved = node
        .reserve("wave1.pc-1", 10 << 20, 0)
        .await
        .expect("reserve");
    assert_eq!(reserved.reserved_bytes, 10 << 20);
    let lease = reserved.expires_unix_ms - now_ms();
    assert!(
        (14 * 60_000..=15 * 60_000).contains(&lease),
        "default lease is 15 minutes: {lease}"
    );
    let capacity = node.capacity().await;
    assert_eq!(capacity.reserved_bytes, 10 << 20);
    assert_eq!(capacity.migrations, 1);
    assert!(capacity.accepting_captures);
    assert_eq!(capacity.available_bytes, capacity.free_bytes - (10 << 20));

    let chunks = [
        chunk(1, 1000),
        chunk(2, 300_000),
        chunk(3, 1 << 20),
        chunk(4, 17),
    ];
    let refs: Vec<_> = chunks.iter().collect();
    let missing = node.missing("wave1.pc-1", &refs).await.expect("missing");
    assert_eq!(missing, vec![0, 1, 2, 3]);

    // The first chunk twice: acknowledged once more, written once.
    let mut upload = refs.clone();
    upload.push(&chunks[0]);
    let put = node.put("wave1.pc-1", &upload).await.expect("put");
    let sealed: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
    assert_eq!(
        (put.stored, put.already_present, put.bytes_written),
        (4, 1, sealed)
    );
    assert!(
        node.temporaries().is_empty(),
        "tmp/ is empty after the upload"
    );
    let on_disk = std::fs::read(node.chunk_path(&chunks[1])).expect("chunk file");
    assert_eq!(
        &on_disk[..32],
        &chunks[1].checksum,
        "the file starts with the checksum"
    );
    assert_eq!(&on_disk[32..], &chunks[1].data[..]);

    assert!(
        node.missing("wave1.pc-1", &refs)
            .await
            .expect("missing")
            .is_empty()
    );
    let again = node.put("wave1.pc-1", &refs[..2]).await.expect("put again");
    assert_eq!(
        (again.stored, again.already_present, again.bytes_written),
        (0, 2, 0)
    );
    let capacity = node.capacity().await;
    assert_eq!(capacity.stored_bytes, sealed + 4 * 32);
    assert_eq!(capacity.active_sessions, 1);
    assert_eq!(
        capacity.reserved_bytes,
        (10 << 20) - sealed,
        "writes use up the reservation"
    );

    let manifest = b"sealed manifest bytes".to_vec();
    let committed = node
        .commit("wave1.pc-1", &manifest, &refs)
        .await
        .expect("commit");
    assert_eq!((committed.chunks, committed.referenced_bytes), (4, sealed));
    assert_eq!(
        node.capacity().await.reserved_bytes,
        0,
        "the reservation ends with the commit"
    );
    let repeated = node
        .commit("wave1.pc-1", &manifest, &refs)
        .await
        .expect("same commit again");
    assert_eq!(repeated, committed);
    let digest = blake3::hash(&manifest).to_hex().to_string();
    let other_digest = blake3::hash(b"another manifest").to_hex().to_string();
    assert_refused(
        node.commit("wave1.pc-1", b"another manifest", &refs).await,
        Code::FailedPrecondition,
        &["already committed", &digest, &other_digest],
    );
    assert_refused(
        node.put("wave1.pc-1", &[&chunk(9, 10)]).await,
        Code::FailedPrecondition,
        &["wave1.pc-1 is committed", "writes are refused"],
    );
    assert_refused(
        node.manifest("wave1.pc-1").await,
        Code::FailedPrecondition,
        &["migration wave1.pc-1 is committed, not restorable"],
    );

    let sealed_state = node
        .release(node.capture("wave1.pc-1"))
        .await
        .expect("release capture");
    assert_eq!(
        (
            sealed_state.state.as_str(),
            sealed_state.delete_after_unix_ms
        ),
        ("sealed", 0)
    );
    let idempotent = node
        .release(node.capture("wave1.pc-1"))
        .await
        .expect("release again");
    assert_eq!(idempotent.state, "sealed");

    let got = node.manifest("wave1.pc-1").await.expect("manifest");
    assert_eq!(got.manifest, manifest);
    assert_eq!(
        got.manifest_digest,
        blake3::hash(&manifest).to_hex().as_str()
    );
    let (served, error) = node.get_chunks("wave1.pc-1", &refs).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 4);
    for (served, expected) in served.iter().zip(&chunks) {
        assert_eq!(served.chunk_id, expected.id);
        assert_eq!(served.data, expected.data);
    }

    let retained = node
        .release(node.restore("wave1.pc-1"))
        .await
        .expect("release restore");
    assert_eq!(retained.state, "retained");
    let week = 7 * 24 * 3600 * 1000;
    assert!((retained.delete_after_unix_ms - now_ms() - week).abs() < 60_000);
    assert!(
        node.manifest("wave1.pc-1").await.is_ok(),
        "retained stays restorable"
    );

    // Everything is on disk: a restarted node serves the same.
    let node = node.restart().await;
    assert_eq!(
        node.node.migration_state("wave1.pc-1"),
        Some(MigrationState::Retained)
    );
    let (served, error) = node.get_chunks("wave1.pc-1", &refs[2..]).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 2);
    let capacity = node.capacity().await;
    assert_eq!(
        capacity.stored_bytes,
        sealed + 4 * 32,
        "counted again at startup"
    );
    assert_eq!(capacity.migrations, 1);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn capture_without_reservation_and_source_machine_binding() {
    let node = TestNode::start().await;
    let a = chunk(10, 5000);
    // No Reserve: the capture token is the authority.
    assert_eq!(
        node.missing("m-implicit", &[&a]).await.expect("missing"),
        vec![0]
    );
    assert_eq!(
        node.node.migration_state("m-implicit"),
        Some(MigrationState::Capturing)
    );
    let other_machine = node.token(
        fleetmig_proto::v1::CapabilityRole::Capture,
        "m-implicit",
        "pc-9",
    );
    assert_refused(
        node.put_with(Some(other_machine.clone()), &[&a]).await,
        tonic::Code::PermissionDenied,
        &["captured by machine pc-1, not pc-9"],
    );
    assert_refused(
        node.missing_with(other_machine, &[&a]).await,
        tonic::Code::PermissionDenied,
        &["pc-9"],
    );
    node.put("m-implicit", &[&a]).await.expect("put");

    // Commit fails while a referenced chunk is missing, and names it.
    let b = chunk(11, 10);
    let status = assert_refused(
        node.commit("m-implicit", b"manifest", &[&a, &b]).await,
        tonic::Code::FailedPrecondition,
        &["1 referenced chunks are missing, e.g.", &hex::encode(b.id)],
    );
    drop(status);
    assert_eq!(
        node.node.migration_state("m-implicit"),
        Some(MigrationState::Capturing)
    );

    // A manifest that does not match its digest is never stored.
    let mut client = node.client.clone();
    let status = client
        .commit(fleetmig_proto::v1::CommitRequest {
            token: Some(node.capture("m-implicit")),
            manifest: b"manifest".to_vec(),
            chunk_ids: a.id.to_vec(),
            manifest_digest: blake3::hash(b"other").to_hex().to_string(),
            logical_bytes: 0,
        })
        .await
        .expect_err("digest mismatch");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    node.commit("m-implicit", b"manifest", &[&a])
        .await
        .expect("commit");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn corrupted_or_malformed_uploads_are_never_stored() {
    let node = TestNode::start().await;
    let good = chunk(20, 4000);
    let mut damaged = chunk(21, 4000);
    let mut bytes = damaged.data.to_vec();
    bytes[100] ^= 0x40;
    damaged.data = bytes.into();
    let status = assert_refused(
        node.put("m-bad", &[&good, &damaged]).await,
        tonic::Code::DataLoss,
        &[&hex::encode(damaged.id), "does not match its checksum"],
    );
    drop(status);
    assert!(
        !node.chunk_path(&damaged).exists(),
        "a chunk corrupted in transit is not stored"
    );
    assert!(node.temporaries().is_empty());
    assert_eq!(
        node.missing("m-bad", &[&damaged]).await.expect("missing"),
        vec![0]
    );

    let mut short_id = fleetmig_proto::v1::PutChunkRequest {
        token: Some(node.capture("m-bad")),
        chunk_id: vec![1; 31],
        checksum: good.checksum.to_vec(),
        data: good.data.clone(),
    };
    assert_refused(
        node.put_messages(vec![short_id.clone()]).await,
        tonic::Code::InvalidArgument,
        &["31 bytes"],
    );
    short_id.chunk_id = good.id.to_vec();
    short_id.data = bytes::Bytes::new();
    assert_refused(
        node.put_messages(vec![short_id]).await,
        tonic::Code::InvalidArgument,
        &["no data"],
    );
    let too_big = chunk(22, 4 * 1024 * 1024 + 65);
    assert_refused(
        node.put("m-bad", &[&too_big]).await,
        tonic::Code::InvalidArgument,
        &["at most"],
    );
    assert!(
        node.missing("m-bad", &[])
            .await
            .expect("empty query")
            .is_empty()
    );
    let mut client = node.client.clone();
    let status = client
        .missing_chunks(fleetmig_proto::v1::MissingChunksRequest {
            token: Some(node.capture("m-bad")),
            chunk_ids: vec![0; 33],
        })
        .await
        .expect_err("ragged ids");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .missing_chunks(fleetmig_proto::v1::MissingChunksRequest {
            token: Some(node.capture("m-bad")),
            chunk_ids: vec![0; 32 * 65_537],
        })
        .await
        .expect_err("too many ids");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("65536"), "{status:?}");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn many_small_chunks_and_a_large_upload_stay_durable() {
    let node = TestNode::start().await;
    // Over the syncfs threshold and across batches.
    let small: Vec<_> = (0..600).map(|n| chunk(1000 + n, 700)).collect();
    let refs: Vec<_> = small.iter().collect();
    let put = node.put("m-many", &refs).await.expect("put");
    assert_eq!(put.stored, 600);
    let large: Vec<_> = (0..10).map(|n| chunk(5000 + n, 4 << 20)).collect();
    let large_refs: Vec<_> = large.iter().collect();
    let put = node.put("m-many", &large_refs).await.expect("put large");
    assert_eq!((put.stored, put.bytes_written), (10, 40 << 20));
    assert!(node.temporaries().is_empty());
    let mut all = refs.clone();
    all.extend(&large_refs);
    node.commit("m-many", b"m", &all).await.expect("commit");
    node.stop().await.expect("clean stop");
}
