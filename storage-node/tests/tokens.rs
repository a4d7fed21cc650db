//! Capability tokens: whatever a token does not grant is refused.

use fleetmig_auth::TokenSigner;
use fleetmig_proto::v1::{CapabilityRole, GetManifestRequest, MissingChunksRequest};
use tonic::Code;

use crate::support::{TestNode, assert_refused, chunk, concat_ids, now_ms};

#[tokio::test]
async fn tokens_that_do_not_grant_the_call_are_refused() {
    let node = TestNode::start().await;
    let a = chunk(1, 100);

    assert_refused(
        node.put_with(None, &[&a]).await,
        Code::Unauthenticated,
        &["no capability token"],
    );
    let mut client = node.client.clone();
    let status = client
        .missing_chunks(MissingChunksRequest {
            token: None,
            chunk_ids: a.id.to_vec(),
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let foreign =
        TokenSigner::from_seed([9; 32]).sign(&node.claims(CapabilityRole::Capture, "m", "pc-1"));
    assert_refused(
        node.missing_with(foreign, &[&a]).await,
        Code::Unauthenticated,
        &["signature"],
    );

    let mut expired = node.claims(CapabilityRole::Capture, "m", "pc-1");
    expired.expires_unix_ms = now_ms() - 1;
    assert_refused(
        node.missing_with(node.signer.sign(&expired), &[&a]).await,
        Code::Unauthenticated,
        &["expired"],
    );

    let restore = node.token(CapabilityRole::Restore, "m", "pc-1");
    assert_refused(
        node.missing_with(restore, &[&a]).await,
        Code::PermissionDenied,
        &["CAPTURE"],
    );
    assert_refused(
        node.put_with(
            Some(node.token(CapabilityRole::Reserve, "m", "pc-1")),
            &[&a],
        )
        .await,
        Code::PermissionDenied,
        &[],
    );
    let mut elsewhere = node.claims(CapabilityRole::Capture, "m", "pc-1");
    elsewhere.node_id = "another-node".into();
    assert_refused(
        node.missing_with(node.signer.sign(&elsewhere), &[&a]).await,
        Code::PermissionDenied,
        &["another-node"],
    );
    // The controller reserves with a RESERVE token only.
    let status = client
        .reserve(fleetmig_proto::v1::ReserveRequest {
            token: Some(node.capture("m")),
            bytes: 1,
            lease_ms: 0,
        })
        .await
        .expect_err("capture token cannot reserve");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Migration ids end up in paths: hostile ones are refused.
    assert_refused(
        node.missing_with(node.capture("../../etc"), &[&a]).await,
        Code::InvalidArgument,
        &["not acceptable"],
    );
    assert_eq!(node.capacity().await.migrations, 0, "nothing was created");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_token_reads_only_its_own_migration() {
    let node = TestNode::start().await;
    let (a1, shared, b1) = (chunk(1, 100), chunk(2, 200), chunk(3, 300));
    node.seal("mig-a", b"manifest a", &[&a1, &shared]).await;
    node.seal("mig-b", b"manifest b", &[&shared, &b1]).await;

    let token_a = node.restore("mig-a");
    let (served, error) = node
        .get_chunks_with(token_a.clone(), concat_ids(&[&a1, &shared]))
        .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 2);
    let (served, error) = node
        .get_chunks_with(token_a.clone(), concat_ids(&[&b1]))
        .await;
    assert!(served.is_empty());
    let status = error.expect("b1 is not part of mig-a");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&hex::encode(b1.id)), "{status:?}");

    let manifest = node
        .client
        .clone()
        .get_manifest(GetManifestRequest {
            token: Some(token_a),
        })
        .await
        .expect("manifest")
        .into_inner();
    assert_eq!(manifest.manifest, b"manifest a");

    // A capture token of mig-a cannot read, a restore token cannot write.
    let (_, error) = node
        .get_chunks_with(node.capture("mig-a"), concat_ids(&[&a1]))
        .await;
    assert_eq!(error.expect("refused").code(), Code::PermissionDenied);
    assert_refused(
        node.put_with(Some(node.restore("mig-new")), &[&a1]).await,
        Code::PermissionDenied,
        &[],
    );
    // Too many ids in one request.
    let (_, error) = node
        .get_chunks_with(node.restore("mig-a"), vec![0; 32 * 1025])
        .await;
    assert_eq!(error.expect("refused").code(), Code::InvalidArgument);
    // Unknown migration.
    let (_, error) = node
        .get_chunks_with(node.restore("mig-none"), concat_ids(&[&a1]))
        .await;
    assert_eq!(error.expect("refused").code(), Code::NotFound);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn restores_wait_for_the_capture_release() {
    let node = TestNode::start().await;
    let a = chunk(1, 100);
    node.put("m", &[&a]).await.expect("put");
    let (_, error) = node.get_chunks("m", &[&a]).await;
    let status = error.expect("capturing is not restorable");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("m is capturing, not restorable"),
        "{status:?}"
    );
    assert_refused(
        node.release(node.restore("m")).await,
        Code::FailedPrecondition,
        &["not restorable"],
    );
    assert_refused(
        node.release(node.capture("m")).await,
        Code::FailedPrecondition,
        &["not committed"],
    );

    node.commit("m", b"manifest", &[&a]).await.expect("commit");
    let (_, error) = node.get_chunks("m", &[&a]).await;
    assert!(
        error
            .expect("committed is not restorable")
            .message()
            .contains("m is committed, not restorable")
    );
    assert_refused(
        node.release(node.restore("m")).await,
        Code::FailedPrecondition,
        &["the capture has not been released"],
    );
    let other = node.token(CapabilityRole::Capture, "m", "pc-7");
    assert_refused(node.release(other).await, Code::PermissionDenied, &["pc-7"]);
    node.release(node.capture("m"))
        .await
        .expect("release capture");
    let (served, error) = node.get_chunks("m", &[&a]).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(served.len(), 1);
    node.stop().await.expect("clean stop");
}
