//! ListMigrations: every migration the node holds, in id order, a page at a
//! time, with an INVENTORY token only.

use fleetmig_proto::v1::CapabilityRole;
use tonic::Code;

use crate::support::{TestNode, assert_refused, chunk, now_ms};

#[tokio::test]
async fn migrations_are_listed_in_id_order_a_page_at_a_time() {
    let node = TestNode::start().await;
    let x = chunk(1, 100);
    node.reserve("m-a-reserved", 10, 0).await.expect("reserve");
    node.put("m-b-capturing", &[&x]).await.expect("put");
    node.put("m-c-committed", &[&x]).await.expect("put");
    node.commit("m-c-committed", b"manifest c", &[&x])
        .await
        .expect("commit");
    node.seal("m-d-sealed", b"manifest d", &[&x]).await;
    node.seal("m-e-retained", b"manifest e", &[&x]).await;
    node.release(node.restore("m-e-retained"))
        .await
        .expect("release restore");
    node.reserve("m-f-expired", 10, 1).await.expect("reserve");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let expired = node.node.expire_lapsed(now_ms()).await.expect("expire");
    assert_eq!(expired.len(), 1);

    let all = node.list_with(node.inventory(), "", 0).await.expect("list");
    assert!(!all.more);
    let listed: Vec<(&str, &str)> = all
        .migrations
        .iter()
        .map(|m| (m.migration_id.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("m-a-reserved", "reserved"),
            ("m-b-capturing", "capturing"),
            ("m-c-committed", "committed"),
            ("m-d-sealed", "sealed"),
            ("m-e-retained", "retained"),
        ],
        "expired captures are not listed"
    );
    let digests: Vec<&str> = all
        .migrations
        .iter()
        .map(|m| m.manifest_digest.as_str())
        .collect();
    assert_eq!(digests[..2], ["", ""], "no digest before commit");
    assert_eq!(digests[2], blake3::hash(b"manifest c").to_hex().as_str());
    assert_eq!(digests[4], blake3::hash(b"manifest e").to_hex().as_str());

    let first = node.list_with(node.inventory(), "", 2).await.expect("page");
    assert_eq!(first.migrations.len(), 2);
    assert!(first.more);
    let last_id = first.migrations[1].migration_id.clone();
    let second = node
        .list_with(node.inventory(), &last_id, 2)
        .await
        .expect("page");
    assert_eq!(second.migrations[0].migration_id, "m-c-committed");
    assert!(second.more);
    let third = node
        .list_with(node.inventory(), "m-d-sealed", 2)
        .await
        .expect("page");
    assert_eq!(third.migrations.len(), 1);
    assert!(!third.more, "the expired one after it does not count");
    let none = node
        .list_with(node.inventory(), "zzz", 0)
        .await
        .expect("past the end");
    assert!(none.migrations.is_empty() && !none.more);
    // start_after needs not name a migration.
    let from_b = node
        .list_with(node.inventory(), "m-b", 1)
        .await
        .expect("page");
    assert_eq!(from_b.migrations[0].migration_id, "m-b-capturing");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn only_an_inventory_token_for_this_node_lists() {
    let node = TestNode::start().await;
    assert_refused(
        node.list_with(node.capture("m"), "", 0).await,
        Code::PermissionDenied,
        &["CAPABILITY_ROLE_INVENTORY"],
    );
    assert_refused(
        node.list_with(node.fenced(CapabilityRole::Inventory, "m", "", 0), "", 0)
            .await,
        Code::Unauthenticated,
        &["an INVENTORY token names no migration"],
    );
    let mut elsewhere = node.claims(CapabilityRole::Inventory, "", "");
    elsewhere.node_id = "another-node".into();
    assert_refused(
        node.list_with(node.signer.sign(&elsewhere), "", 0).await,
        Code::PermissionDenied,
        &["another-node"],
    );
    let page = node
        .list_with(node.inventory(), "", 0)
        .await
        .expect("an empty node lists nothing");
    assert!(page.migrations.is_empty() && !page.more);
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_large_node_is_listed_completely_in_capped_pages() {
    let node = TestNode::start().await;
    for n in 0..25 {
        node.reserve(&format!("m{n:03}"), 1, 0)
            .await
            .expect("reserve");
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = node
            .list_with(node.inventory(), &after, 10)
            .await
            .expect("page");
        seen.extend(page.migrations.iter().map(|m| m.migration_id.clone()));
        if !page.more {
            break;
        }
        after = seen.last().expect("a page with more is not empty").clone();
    }
    let expected: Vec<String> = (0..25).map(|n| format!("m{n:03}")).collect();
    assert_eq!(seen, expected);
    node.stop().await.expect("clean stop");
}
