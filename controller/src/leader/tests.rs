//! Leader election against a real etcd process (see `store/etcd/test_server.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::etcd::test_server::TestEtcd;
use crate::store::etcd::{EtcdConfig, is_lost_leadership};

/// Two controllers' stores on one cluster prefix.
async fn two_stores(etcd: &TestEtcd) -> (EtcdStore, EtcdStore, EtcdConfig) {
    let config = etcd.config();
    let a = EtcdStore::connect(config.clone()).await.expect("connect a");
    let b = EtcdStore::connect(config.clone()).await.expect("connect b");
    (a, b, config)
}

fn election(store: &EtcdStore, candidate: &str, ttl: Duration) -> Election {
    let mut config = ElectionConfig::for_store(store, candidate);
    config.ttl = ttl;
    Election::new(store.client().clone(), config)
}

async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {limit:?}"))
}

fn guarded_put(guard: &LeaderGuard, key: &str) -> Txn {
    Txn::new()
        .when_leader(guard.clone())
        .put(key, b"x".to_vec())
}

#[test]
fn ttls_are_whole_seconds_of_at_least_two() {
    let mut config = ElectionConfig::new("/e", "me");
    assert_eq!(config.ttl_secs(), 10);
    config.ttl = Duration::from_millis(2500);
    assert_eq!(config.ttl_secs(), 3);
    config.ttl = Duration::from_millis(10);
    assert_eq!(config.ttl_secs(), 2);
}

/// Two candidates: one leads; its lease is revoked; it steps down, the other takes over with a
/// higher epoch, and the old leader's guarded writes fail while the new one's apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_candidate_takes_over_when_the_leader_lease_is_revoked() {
    let Some(etcd) = TestEtcd::start().await else {
        return;
    };
    let (a, b, _) = two_stores(&etcd).await;
    let shutdown = CancellationToken::new();
    let election_a = election(&a, "controller-a", DEFAULT_TTL);
    let election_b = election(&b, "controller-b", DEFAULT_TTL);
    assert_eq!(election_a.leader().await.unwrap(), None);

    let leader_a = within(
        Duration::from_secs(10),
        "a elected",
        election_a.campaign(&shutdown),
    )
    .await
    .unwrap();
    assert!(!leader_a.is_lost());
    let seen = election_b.leader().await.unwrap().expect("a leader");
    assert_eq!(seen, leader_a.info().clone());
    assert_eq!(seen.candidate, "controller-a");
    assert!(seen.key.starts_with(&election_a.config().name));

    let campaign_b = tokio::spawn({
        let election_b = election_b.clone();
        let shutdown = shutdown.clone();
        async move { election_b.campaign(&shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!campaign_b.is_finished(), "b must wait while a leads");

    // The leader writes through a fenced store.
    let fenced_a = FencedStore::new(Arc::new(a.clone()), &leader_a);
    assert!(
        fenced_a
            .txn(Txn::new().put("jobs/1", b"by a".to_vec()))
            .await
            .unwrap()
            .is_committed()
    );

    // Revoke a's lease, as an expiry or an operator would.
    let mut raw = a.client().clone();
    raw.lease_revoke(leader_a.info().lease).await.unwrap();
    within(
        Duration::from_secs(5),
        "a steps down",
        leader_a.lost().cancelled(),
    )
    .await;
    let leader_b = within(Duration::from_secs(10), "b elected", campaign_b)
        .await
        .unwrap()
        .unwrap();
    assert!(leader_b.epoch() > leader_a.epoch());
    assert_eq!(
        election_a
            .leader()
            .await
            .unwrap()
            .map(|info| info.candidate),
        Some("controller-b".to_owned())
    );

    // a's writes are fenced: refused locally once it knows, and by etcd in any case.
    let error = fenced_a
        .txn(Txn::new().put("jobs/1", b"late a".to_vec()))
        .await
        .unwrap_err();
    assert!(is_lost_leadership(&error), "{error:?}");
    let error = a
        .txn(guarded_put(&leader_a.guard(), "jobs/1"))
        .await
        .unwrap_err();
    assert!(is_lost_leadership(&error), "{error:?}");
    assert_eq!(a.get("jobs/1").await.unwrap().unwrap().value, b"by a");

    let fenced_b = FencedStore::new(Arc::new(b.clone()), &leader_b);
    assert!(
        fenced_b
            .txn(Txn::new().put("jobs/1", b"by b".to_vec()))
            .await
            .unwrap()
            .is_committed()
    );
    assert_eq!(
        fenced_b.get("jobs/1").await.unwrap().unwrap().value,
        b"by b"
    );
    leader_b.resign().await.unwrap();
}

/// A leader that stops renewing (a paused process) loses its key after the TTL; the other
/// candidate takes over, and the paused leader's writes fail even though nobody told it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_renewing_is_replaced_and_fenced() {
    let Some(etcd) = TestEtcd::start().await else {
        return;
    };
    let (a, b, _) = two_stores(&etcd).await;
    let shutdown = CancellationToken::new();
    let ttl = Duration::from_secs(2);
    let mut leader_a = election(&a, "a", ttl).campaign(&shutdown).await.unwrap();
    let campaign_b = tokio::spawn({
        let election_b = election(&b, "b", ttl);
        let shutdown = shutdown.clone();
        async move { election_b.campaign(&shutdown).await }
    });
    // b keeps its own lease alive while it waits, well past a TTL.
    tokio::time::sleep(3 * ttl).await;
    assert!(!campaign_b.is_finished());
    assert!(!leader_a.is_lost(), "a renews its lease");

    let paused = std::time::Instant::now();
    leader_a.stop_keep_alive();
    let leader_b = within(Duration::from_secs(15), "b elected", campaign_b)
        .await
        .unwrap()
        .unwrap();
    let takeover = paused.elapsed();
    // The lease ends a TTL after the last renewal etcd received, which came at most TTL/3
    // before the pause.
    assert!(
        takeover >= ttl * 2 / 3 - Duration::from_millis(100),
        "{takeover:?}"
    );
    assert!(leader_b.epoch() > leader_a.epoch());
    eprintln!("takeover after the leader stopped renewing (TTL {ttl:?}): {takeover:?}");

    // Bypassing the local signal, as a process resumed from a pause would: etcd refuses.
    let error = a
        .txn(guarded_put(&leader_a.guard(), "waves/w"))
        .await
        .unwrap_err();
    assert!(is_lost_leadership(&error), "{error:?}");
    assert_eq!(a.get("waves/w").await.unwrap(), None);
    // The key watcher tells the old leader too.
    within(
        Duration::from_secs(5),
        "a steps down",
        leader_a.lost().cancelled(),
    )
    .await;
    assert!(
        b.txn(guarded_put(&leader_b.guard(), "waves/w"))
            .await
            .unwrap()
            .is_committed()
    );
}

/// Resigning hands over at once; observers see each leader in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_hands_over_at_once_and_observers_see_each_leader() {
    let Some(etcd) = TestEtcd::start().await else {
        return;
    };
    let (a, b, _) = two_stores(&etcd).await;
    let shutdown = CancellationToken::new();
    let election_a = election(&a, "a", DEFAULT_TTL);
    let election_b = election(&b, "b", DEFAULT_TTL);
    let leader_a = election_a.campaign(&shutdown).await.unwrap();
    let mut observed = election_b.observe().await.unwrap();
    let first = within(
        Duration::from_secs(5),
        "first leader observed",
        observed.next(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(first.candidate, "a");

    let campaign_b = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { election_b.campaign(&shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost_a = leader_a.lost();
    let guard_a = leader_a.guard();
    let resigned = std::time::Instant::now();
    leader_a.resign().await.unwrap();
    assert!(lost_a.is_cancelled());
    let leader_b = within(Duration::from_secs(3), "b elected at once", campaign_b)
        .await
        .unwrap()
        .unwrap();
    assert!(resigned.elapsed() < Duration::from_secs(3));
    let second = within(
        Duration::from_secs(5),
        "second leader observed",
        observed.next(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (second.candidate.as_str(), second.epoch),
        ("b", leader_b.epoch())
    );
    let error = a.txn(guarded_put(&guard_a, "k")).await.unwrap_err();
    assert!(is_lost_leadership(&error));
    drop(leader_b);
}

/// A waiting candidate withdraws on shutdown, leaving no key behind; a dropped leadership
/// steps down locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_withdraw_on_shutdown() {
    let Some(etcd) = TestEtcd::start().await else {
        return;
    };
    let (a, b, _) = two_stores(&etcd).await;
    let leader_a = election(&a, "a", DEFAULT_TTL)
        .campaign(&CancellationToken::new())
        .await
        .unwrap();
    let shutdown_b = CancellationToken::new();
    let campaign_b = tokio::spawn({
        let election_b = election(&b, "b", DEFAULT_TTL);
        let shutdown = shutdown_b.clone();
        async move { election_b.campaign(&shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown_b.cancel();
    let outcome = within(Duration::from_secs(5), "b withdraws", campaign_b)
        .await
        .unwrap();
    assert!(matches!(outcome, Err(Error::StoreUnavailable(_))));

    let election_a = election(&a, "a", DEFAULT_TTL);
    let lost = leader_a.lost();
    leader_a.resign().await.unwrap();
    assert!(lost.is_cancelled());
    assert_eq!(election_a.leader().await.unwrap(), None, "b left no key");

    // An already cancelled campaign does not start.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(election_a.campaign(&cancelled).await.is_err());

    let leader = election_a
        .campaign(&CancellationToken::new())
        .await
        .unwrap();
    let lost = leader.lost();
    drop(leader);
    assert!(lost.is_cancelled());
}
