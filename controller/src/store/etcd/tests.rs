//! Tests of the etcd backend against a real etcd process (see `test_server.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::test_server::{TestEtcd, free_port};
use super::*;
use crate::store::conformance::put;

/// An etcd process and a store on a fresh prefix of it.
struct Fixture {
    store: Arc<EtcdStore>,
    etcd: TestEtcd,
}

impl Fixture {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }
}

/// A fixture whose store reads ranges in small pages, so that every range test pages.
async fn open() -> Option<Fixture> {
    let etcd = TestEtcd::start().await?;
    let mut config = etcd.config();
    config.page_size = 256;
    let store = EtcdStore::connect(config).await.expect("connect");
    Some(Fixture {
        store: Arc::new(store),
        etcd,
    })
}

/// The same checks as the embedded store passes.
mod conformance {
    use super::open;

    crate::store::conformance::store_conformance_tests!(open);
}

async fn next_update(stream: &mut WatchStream) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch update within 10 s")
        .expect("the watch stream to go on")
        .expect("a watch update, not an error")
}

async fn next_follow(updates: &mut mpsc::Receiver<FollowUpdate>) -> FollowUpdate {
    tokio::time::timeout(Duration::from_secs(20), updates.recv())
        .await
        .expect("a follow update within 20 s")
        .expect("follow to go on")
}

fn committed(outcome: TxnOutcome) -> u64 {
    match outcome {
        TxnOutcome::Committed { revision } => revision,
        TxnOutcome::Conflict { key } => panic!("conflict on {key}"),
    }
}

#[test]
fn store_urls_parse() {
    let config = EtcdConfig::parse("etcd://a:2379, b:2379,c:2379/").unwrap();
    assert_eq!(
        config.endpoints,
        ["http://a:2379", "http://b:2379", "http://c:2379"]
    );
    assert_eq!(config.prefix, DEFAULT_PREFIX);
    assert_eq!(config.kv_prefix(), "/fleetmig/default/kv/");
    assert_eq!(config.election_name(), "/fleetmig/default/leader");
    assert_eq!(config.max_txn_ops, RECOMMENDED_MAX_TXN_OPS);
    assert_eq!(
        EtcdConfig::parse("etcd://a:2379")
            .unwrap()
            .with_cluster("lab")
            .kv_prefix(),
        "/fleetmig/lab/kv/"
    );
    for bad in ["a:2379", "etcd://", "etcd://a:2379/x", "http://a:2379"] {
        assert!(
            matches!(EtcdConfig::parse(bad), Err(Error::InvalidArgument(_))),
            "{bad}"
        );
    }
    assert_eq!(prefix_end(b"/a/"), b"/a0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast_and_retryably() {
    let port = free_port().unwrap();
    let mut config = EtcdConfig::new([format!("http://127.0.0.1:{port}")]);
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let error = EtcdStore::connect(config).await.unwrap_err();
    assert!(matches!(error, Error::StoreUnavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut config = EtcdConfig::new(["http://127.0.0.1:1"]);
    config.prefix = "no-slash".to_owned();
    assert!(matches!(
        EtcdStore::connect(config).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn keys_live_under_the_cluster_prefix_only() {
    let Some(fixture) = open().await else { return };
    let store = &fixture.store;
    let other = EtcdStore::connect(fixture.etcd.config()).await.unwrap();
    put(store.as_ref(), "jobs/1", "mine").await;
    put(&other, "jobs/1", "theirs").await;
    assert_eq!(store.get("jobs/1").await.unwrap().unwrap().value, b"mine");
    assert_eq!(store.range("").await.unwrap().len(), 1);

    let mut raw = store.client().clone();
    let response = raw
        .get(store.etcd_key("jobs/1"), None)
        .await
        .expect("raw get");
    assert_eq!(response.kvs()[0].value(), b"mine");
    assert!(store.etcd_key("jobs/1").starts_with(&store.config().prefix));
    assert!(store.etcd_key("jobs/1").ends_with("/kv/jobs/1"));
}

/// A range paged in many requests still reads one revision: a transaction that changes the
/// first and the last key together is seen entirely or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_ranges_read_one_revision() {
    let Some(fixture) = open().await else { return };
    let mut config = fixture.etcd.config();
    config.page_size = 7;
    let store = EtcdStore::connect(config).await.unwrap();
    let mut txn = Txn::new();
    for i in 0..700 {
        txn = txn.put(format!("k/{i:04}"), b"0".to_vec());
    }
    committed(store.txn(txn).await.unwrap());

    let stop = CancellationToken::new();
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.is_cancelled() {
                n += 1;
                let value = n.to_string().into_bytes();
                let txn = Txn::new().put("k/0000", value.clone()).put("k/0699", value);
                committed(store.txn(txn).await.unwrap());
            }
            n
        })
    };
    for _ in 0..5 {
        let snapshot = store.snapshot("k/").await.unwrap();
        assert_eq!(snapshot.kvs.len(), 700);
        let (first, last) = (&snapshot.kvs[0], &snapshot.kvs[699]);
        assert_eq!(first.value, last.value, "a torn range");
        assert!(first.mod_revision <= snapshot.revision);
    }
    stop.cancel();
    let writes = writer.await.unwrap();
    assert!(writes > 1, "the writer ran during the ranges");
}

#[tokio::test]
async fn oversized_transactions_are_refused_with_the_setting_to_change() {
    let Some(fixture) = open().await else { return };
    let store = &fixture.store;

    // More operations than the configured --max-txn-ops: refused before sending.
    let mut txn = Txn::new();
    for i in 0..=RECOMMENDED_MAX_TXN_OPS {
        txn = txn.put(format!("big/{i}"), b"x".to_vec());
    }
    let error = store.txn(txn.clone()).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(message) if message.contains("--max-txn-ops")),
        "{error:?}"
    );

    // A store configured above what the server allows gets the server's refusal, explained.
    let mut config = fixture.etcd.config();
    config.max_txn_ops = 4 * RECOMMENDED_MAX_TXN_OPS;
    let lax = EtcdStore::connect(config).await.unwrap();
    let error = lax.txn(txn).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(message)
            if message.contains("etcd refused") && message.contains("--max-txn-ops")),
        "{error:?}"
    );

    // Exactly the limit is fine: 1024 puts and 1024 compares.
    let mut txn = Txn::new();
    for i in 0..RECOMMENDED_MAX_TXN_OPS {
        let key = format!("big/{i:04}");
        txn = txn.when_absent(key.as_str()).put(key, b"x".to_vec());
    }
    committed(store.txn(txn).await.unwrap());

    // Too many bytes: refused before sending, and by the server when the store thinks more is
    // allowed.
    let huge = Txn::new().put("huge", vec![b'x'; 2 * 1024 * 1024]);
    let error = store.txn(huge.clone()).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(message) if message.contains("--max-request-bytes")),
        "{error:?}"
    );
    let mut config = fixture.etcd.config();
    config.max_request_bytes = 16 * 1024 * 1024;
    let lax = EtcdStore::connect(config).await.unwrap();
    let error = lax.txn(huge).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(message)
            if message.contains("etcd refused") && message.contains("--max-request-bytes")),
        "{error:?}"
    );
    assert_eq!(store.get("huge").await.unwrap(), None);

    // Just under the limit passes.
    let near = Txn::new().put("near", vec![b'x'; 1024 * 1024 + 400 * 1024]);
    committed(store.txn(near).await.unwrap());
}

#[tokio::test]
async fn watch_delivers_each_transaction_in_order() {
    let Some(fixture) = open().await else { return };
    let store = &fixture.store;
    put(store.as_ref(), "jobs/0", "before the watch").await;
    let start = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("jobs/", start).await.unwrap();

    let r1 = committed(
        store
            .txn(
                Txn::new()
                    .put("jobs/1", b"a".to_vec())
                    .put("machines/m", b"not watched".to_vec())
                    .put("jobs/2", b"b".to_vec()),
            )
            .await
            .unwrap(),
    );
    put(store.as_ref(), "machines/n", "not watched").await;
    let r2 = committed(
        store
            .txn(Txn::new().delete("jobs/0").put("jobs/1", b"a2".to_vec()))
            .await
            .unwrap(),
    );
    // A put outside the store's prefix, by another client of the same cluster.
    let mut raw = store.client().clone();
    raw.put("/elsewhere/jobs/9", "x", None).await.unwrap();
    let r3 = put(store.as_ref(), "jobs/3", "c").await;

    let WatchUpdate::Changes { revision, events } = next_update(&mut watch).await else {
        panic!("expected changes");
    };
    assert_eq!(revision, r1);
    let keys: Vec<_> = events.iter().map(WatchEvent::key).collect();
    assert_eq!(keys, ["jobs/1", "jobs/2"]);
    let WatchEvent::Put(one) = &events[0] else {
        panic!("expected a put")
    };
    assert_eq!(
        (one.value.as_slice(), one.create_revision, one.mod_revision),
        (b"a".as_slice(), r1, r1)
    );

    let update = next_update(&mut watch).await;
    let WatchUpdate::Changes { revision, events } = update else {
        panic!("expected changes");
    };
    assert_eq!(revision, r2);
    assert_eq!(
        events[0],
        WatchEvent::Delete {
            key: "jobs/0".to_owned()
        }
    );
    let WatchEvent::Put(one) = &events[1] else {
        panic!("expected a put")
    };
    assert_eq!(
        (one.value.as_slice(), one.create_revision, one.mod_revision),
        (b"a2".as_slice(), r1, r2)
    );

    let WatchUpdate::Changes { revision, events } = next_update(&mut watch).await else {
        panic!("expected changes");
    };
    assert_eq!((revision, events.len()), (r3, 1));

    // Watching again from an earlier revision replays the history.
    let mut replay = store.watch("jobs/", r2).await.unwrap();
    let WatchUpdate::Changes { revision, .. } = next_update(&mut replay).await else {
        panic!("expected changes");
    };
    assert_eq!(revision, r2);
}

#[tokio::test]
async fn watching_compacted_history_says_so() {
    let Some(fixture) = open().await else { return };
    let store = &fixture.store;
    let first = put(store.as_ref(), "jobs/1", "a").await;
    let last = put(store.as_ref(), "jobs/1", "b").await;
    let mut raw = store.client().clone();
    raw.compact(i64::try_from(last).unwrap(), None)
        .await
        .unwrap();

    let mut watch = store.watch("jobs/", first).await.unwrap();
    match next_update(&mut watch).await {
        WatchUpdate::Compacted { compact_revision } => assert_eq!(compact_revision, last),
        other => panic!("expected compaction, got {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the stream ends");

    // Ranges read the latest revision, which compaction keeps.
    assert_eq!(store.range("jobs/").await.unwrap()[0].value, b"b");
}

/// `follow` gives a snapshot, then every change once and in order, across an etcd restart;
/// after history it needs was compacted away, it starts over with a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_keeps_a_copy_current_across_restarts_and_compaction() {
    let Some(mut fixture) = open().await else {
        return;
    };
    let store = Arc::clone(&fixture.store);
    put(store.as_ref(), "jobs/1", "a").await;
    put(store.as_ref(), "jobs/2", "b").await;

    let shutdown = CancellationToken::new();
    let mut updates = store.follow("jobs/", shutdown.clone());
    let FollowUpdate::Reset(snapshot) = next_follow(&mut updates).await else {
        panic!("the first update is a snapshot");
    };
    assert_eq!(snapshot.kvs.len(), 2);

    let r = put(store.as_ref(), "jobs/3", "c").await;
    assert_eq!(
        next_follow(&mut updates).await,
        FollowUpdate::Changes {
            revision: r,
            events: vec![WatchEvent::Put(store.get("jobs/3").await.unwrap().unwrap())],
        }
    );

    // etcd restarts on its data: the follower resumes after the last change it delivered.
    let port = fixture.etcd.client_port();
    fixture.etcd.restart_on(port).await;
    let r = put(store.as_ref(), "jobs/4", "d").await;
    let FollowUpdate::Changes { revision, events } = next_follow(&mut updates).await else {
        panic!("expected changes");
    };
    assert_eq!((revision, events[0].key()), (r, "jobs/4"));

    // etcd restarts where the follower cannot reach it; changes and a compaction happen there;
    // then it is back at its address. The follower's history is gone: it reloads.
    let hidden = free_port().unwrap();
    fixture.etcd.restart_on(hidden).await;
    let mut config = store.config().clone();
    config.endpoints = vec![format!("http://127.0.0.1:{hidden}")];
    let elsewhere = EtcdStore::connect(config).await.unwrap();
    put(&elsewhere, "jobs/5", "e").await;
    elsewhere.txn(Txn::new().delete("jobs/1")).await.unwrap();
    let compacted = put(&elsewhere, "jobs/6", "f").await;
    let mut raw = elsewhere.client().clone();
    raw.compact(i64::try_from(compacted).unwrap(), None)
        .await
        .unwrap();
    drop(elsewhere);
    fixture.etcd.restart_on(port).await;

    let FollowUpdate::Reset(snapshot) = next_follow(&mut updates).await else {
        panic!("a reload after compaction");
    };
    let keys: Vec<_> = snapshot.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["jobs/2", "jobs/3", "jobs/4", "jobs/5", "jobs/6"]);
    assert!(snapshot.revision >= compacted);

    let r = put(store.as_ref(), "jobs/7", "g").await;
    let FollowUpdate::Changes { revision, .. } = next_follow(&mut updates).await else {
        panic!("expected changes");
    };
    assert_eq!(revision, r);

    shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), updates.recv())
        .await
        .expect("follow stops on shutdown");
    assert!(end.is_none());
}

/// A guarded transaction applies only while the guard's key has the guard's create revision;
/// otherwise it fails with the lost-leadership error, never with a conflict.
#[tokio::test]
async fn guarded_transactions_need_the_leader_key() {
    let Some(fixture) = open().await else { return };
    let store = &fixture.store;
    let mut raw = store.client().clone();
    let leader_key = format!("{}leader/test", store.config().prefix);
    let created = raw.put(leader_key.as_str(), "me", None).await.unwrap();
    let created = u64::try_from(created.header().unwrap().revision()).unwrap();
    let guard = LeaderGuard {
        key: leader_key.clone(),
        create_revision: created,
    };

    let txn = Txn::new()
        .when_leader(guard.clone())
        .when_absent("jobs/1")
        .put("jobs/1", b"a".to_vec());
    committed(store.txn(txn).await.unwrap());
    // A failing data compare under a holding guard is an ordinary conflict.
    let txn = Txn::new()
        .when_leader(guard.clone())
        .when_absent("jobs/1")
        .put("jobs/1", b"b".to_vec());
    assert_eq!(
        store.txn(txn).await.unwrap(),
        TxnOutcome::Conflict {
            key: "jobs/1".to_owned()
        }
    );
    // Rewriting the leader key keeps its create revision: still the same leadership.
    raw.put(leader_key.as_str(), "me again", None)
        .await
        .unwrap();
    committed(
        store
            .txn(
                Txn::new()
                    .when_leader(guard.clone())
                    .put("jobs/2", b"x".to_vec()),
            )
            .await
            .unwrap(),
    );

    // Once the key is gone (or recreated, at a new revision), the guard fails first.
    raw.delete(leader_key.as_str(), None).await.unwrap();
    raw.put(leader_key.as_str(), "someone else", None)
        .await
        .unwrap();
    let txn = Txn::new()
        .when_leader(guard.clone())
        .when_absent("jobs/1")
        .put("jobs/1", b"c".to_vec());
    let error = store.txn(txn).await.unwrap_err();
    assert!(is_lost_leadership(&error), "{error:?}");
    assert!(matches!(error, Error::NotLeader { .. }), "{error:?}");
    assert_eq!(store.get("jobs/1").await.unwrap().unwrap().value, b"a");
}

/// 100,000 jobs of a realistic size load in one range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_jobs_load() {
    let Some(fixture) = open().await else { return };
    let store = EtcdStore::connect(fixture.etcd.config()).await.unwrap();
    const TOTAL: usize = 100_000;
    const PER_TXN: usize = 1000;
    let value = vec![b'j'; 400];
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for start in (0..TOTAL).step_by(PER_TXN) {
        let store = store.clone();
        let value = value.clone();
        writers.spawn(async move {
            let mut txn = Txn::new();
            for i in start..start + PER_TXN {
                txn = txn.put(format!("jobs/{i:06}"), value.clone());
            }
            committed(store.txn(txn).await.unwrap());
        });
        if writers.len() >= 4 {
            writers.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    let written = started.elapsed();
    let started = std::time::Instant::now();
    let jobs = store.range("jobs/").await.unwrap();
    let read = started.elapsed();
    assert_eq!(jobs.len(), TOTAL);
    assert!(jobs.windows(2).all(|pair| pair[0].key < pair[1].key));
    tracing::info!(?written, ?read, "100k jobs");
    eprintln!("100,000 jobs: written in {written:?}, ranged in {read:?}");
}
