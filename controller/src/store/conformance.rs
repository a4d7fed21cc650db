//! The behaviour every [`Store`] backend must share, as checks run against each of them.
//!
//! Each check takes an empty store (for etcd: a fresh prefix on a cluster that other tests may
//! share) and relies only on the order and equality of revisions, as callers must.
//! [`store_conformance_tests!`] turns the checks into tests for one backend; the embedded
//! backend's are below, etcd's in `etcd/tests.rs`.

use std::sync::Arc;

use super::{KeyValue, LeaderGuard, Store, Txn, TxnOutcome};
use crate::error::Error;

/// Puts `value` at `key` unconditionally and returns the commit revision.
pub(crate) async fn put(store: &dyn Store, key: &str, value: &str) -> u64 {
    match store
        .txn(Txn::new().put(key, value.as_bytes()))
        .await
        .expect("put")
    {
        TxnOutcome::Committed { revision } => revision,
        TxnOutcome::Conflict { key } => panic!("unconditional put conflicted on {key}"),
    }
}

fn committed(outcome: &TxnOutcome) -> u64 {
    match outcome {
        TxnOutcome::Committed { revision } => *revision,
        TxnOutcome::Conflict { key } => panic!("expected a commit, got a conflict on {key}"),
    }
}

fn conflict(key: &str) -> TxnOutcome {
    TxnOutcome::Conflict {
        key: key.to_owned(),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

pub(crate) async fn put_get_and_range_by_prefix(store: &dyn Store) {
    assert_eq!(store.get("jobs/1").await.unwrap(), None);
    assert!(store.range("").await.unwrap().is_empty());

    let before = store.revision().await.unwrap();
    put(store, "jobs/2", "two").await;
    let one_revision = put(store, "jobs/1", "one").await;
    put(store, "jobs2/x", "not a job").await;
    put(store, "job", "not a job either").await;
    put(store, "machines/a", "a").await;

    let one = store.get("jobs/1").await.unwrap().unwrap();
    assert_eq!(one.key, "jobs/1");
    assert_eq!(one.value, b"one");
    assert!(one_revision > before);
    assert_eq!(
        (one.create_revision, one.mod_revision),
        (one_revision, one_revision)
    );

    let jobs = store.range("jobs/").await.unwrap();
    assert_eq!(keys(&jobs), ["jobs/1", "jobs/2"]);
    assert_eq!(jobs[1].value, b"two");

    let all = store.range("").await.unwrap();
    assert_eq!(
        keys(&all),
        ["job", "jobs/1", "jobs/2", "jobs2/x", "machines/a"]
    );
    assert!(store.range("zones/").await.unwrap().is_empty());
    assert_eq!(store.range("machines/a").await.unwrap().len(), 1);
    // Values are bytes, not text.
    put(store, "bin", "").await;
    let binary = vec![0, 159, 146, 150, 255];
    store
        .txn(Txn::new().put("bin", binary.clone()))
        .await
        .unwrap();
    assert_eq!(store.get("bin").await.unwrap().unwrap().value, binary);
}

pub(crate) async fn create_only_compare_conflicts_once_the_key_exists(store: &dyn Store) {
    let create = || {
        Txn::new()
            .when_absent("plans/p")
            .put("plans/p", b"v1".to_vec())
    };
    let created = committed(&store.txn(create()).await.unwrap());
    assert_eq!(store.txn(create()).await.unwrap(), conflict("plans/p"));
    assert_eq!(store.get("plans/p").await.unwrap().unwrap().value, b"v1");
    assert_eq!(store.revision().await.unwrap(), created);
}

pub(crate) async fn stale_mod_revision_conflicts_and_create_revision_is_kept(store: &dyn Store) {
    let first = put(store, "waves/w", "a").await;
    let update = |seen: u64, value: &str| {
        Txn::new()
            .when_revision("waves/w", seen)
            .put("waves/w", value.as_bytes())
    };
    let second = committed(&store.txn(update(first, "b")).await.unwrap());
    assert!(second > first);
    assert_eq!(
        store.txn(update(first, "c")).await.unwrap(),
        conflict("waves/w")
    );
    assert_eq!(
        store.txn(update(0, "c")).await.unwrap(),
        conflict("waves/w")
    );
    // A revision the key never had conflicts too.
    assert_eq!(
        store.txn(update(second + 1000, "c")).await.unwrap(),
        conflict("waves/w")
    );

    let stored = store.get("waves/w").await.unwrap().unwrap();
    assert_eq!(stored.value, b"b");
    assert_eq!(stored.create_revision, first);
    assert_eq!(stored.mod_revision, second);
}

pub(crate) async fn a_failed_compare_applies_nothing_and_names_the_first_failing_key(
    store: &dyn Store,
) {
    let a = put(store, "a", "a0").await;
    let b = put(store, "b", "b0").await;
    put(store, "d", "d0").await;
    let before = store.revision().await.unwrap();

    let txn = Txn::new()
        .when_revision("a", a)
        .when_revision("b", b + 999)
        .when_revision("c", 999)
        .put("a", b"a1".to_vec())
        .put("c", b"c1".to_vec())
        .delete("d");
    assert_eq!(store.txn(txn).await.unwrap(), conflict("b"));
    // Absent keys compared against a revision, and present keys required absent, fail too.
    let txn = Txn::new()
        .when_revision("a", a)
        .when_revision("c", 999)
        .put("a", b"a1".to_vec());
    assert_eq!(store.txn(txn).await.unwrap(), conflict("c"));
    let txn = Txn::new().when_absent("a").put("a", b"a1".to_vec());
    assert_eq!(store.txn(txn).await.unwrap(), conflict("a"));

    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"a0");
    assert_eq!(store.get("c").await.unwrap(), None);
    assert!(store.get("d").await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), before);

    // The same operations under holding compares apply together, at one revision.
    let txn = Txn::new()
        .when_revision("a", a)
        .when_absent("c")
        .put("a", b"a1".to_vec())
        .put("c", b"c1".to_vec())
        .delete("d");
    let applied = committed(&store.txn(txn).await.unwrap());
    assert!(applied > before);
    let a = store.get("a").await.unwrap().unwrap();
    let c = store.get("c").await.unwrap().unwrap();
    assert_eq!((a.mod_revision, c.mod_revision), (applied, applied));
    assert_eq!(c.create_revision, applied);
    assert_eq!(store.get("d").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), applied);
}

pub(crate) async fn delete_moves_the_revision_only_when_something_changed(store: &dyn Store) {
    let created = put(store, "jobs/1", "x").await;
    put(store, "jobs/2", "y").await;

    let deleted = committed(&store.txn(Txn::new().delete("jobs/1")).await.unwrap());
    assert!(deleted > created);
    assert_eq!(store.get("jobs/1").await.unwrap(), None);
    assert_eq!(store.range("jobs/").await.unwrap().len(), 1);
    assert_eq!(store.revision().await.unwrap(), deleted);

    // As in etcd: deleting an absent key, or a transaction without operations, commits at the
    // current revision without moving it.
    let again = store.txn(Txn::new().delete("jobs/1")).await.unwrap();
    assert_eq!(again, TxnOutcome::Committed { revision: deleted });
    let empty = store.txn(Txn::new().when_absent("jobs/1")).await.unwrap();
    assert_eq!(empty, TxnOutcome::Committed { revision: deleted });
    assert_eq!(store.revision().await.unwrap(), deleted);

    // A key put again after its deletion is a new key with a new create_revision.
    let recreated = put(store, "jobs/1", "z").await;
    let stored = store.get("jobs/1").await.unwrap().unwrap();
    assert_eq!(stored.create_revision, recreated);
    assert!(stored.create_revision > created);
}

pub(crate) async fn invalid_transactions_are_refused(store: &dyn Store) {
    let before = store.revision().await.unwrap();
    let twice = Txn::new().put("k", b"1".to_vec()).delete("k");
    assert!(matches!(
        store.txn(twice).await,
        Err(Error::InvalidArgument(_))
    ));
    let empty_key = Txn::new().put("", b"1".to_vec());
    assert!(matches!(
        store.txn(empty_key).await,
        Err(Error::InvalidArgument(_))
    ));
    let empty_guard = Txn::new()
        .when_leader(LeaderGuard {
            key: String::new(),
            create_revision: 1,
        })
        .put("k", b"1".to_vec());
    assert!(matches!(
        store.txn(empty_guard).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(store.revision().await.unwrap(), before);
    assert_eq!(store.get("k").await.unwrap(), None);
}

pub(crate) async fn revisions_are_monotonic(store: &dyn Store) {
    let mut last = store.revision().await.unwrap();
    for i in 0..20 {
        let revision = put(store, &format!("audit/{i:02}"), "entry").await;
        assert!(revision > last);
        last = revision;
        assert!(store.revision().await.unwrap() >= revision);
    }
    let entry = store.get("audit/19").await.unwrap().unwrap();
    assert_eq!(entry.mod_revision, last);
    let audit = store.range("audit/").await.unwrap();
    assert_eq!(audit.len(), 20);
    assert!(
        audit
            .windows(2)
            .all(|pair| pair[0].mod_revision < pair[1].mod_revision)
    );
}

pub(crate) async fn concurrent_compare_and_swap_loses_no_update(store: Arc<dyn Store>) {
    const TASKS: u64 = 32;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            loop {
                let current = store.get("counter").await.unwrap();
                let (seen, count) = match &current {
                    Some(kv) => (
                        kv.mod_revision,
                        String::from_utf8(kv.value.clone())
                            .unwrap()
                            .parse::<u64>()
                            .unwrap(),
                    ),
                    None => (0, 0),
                };
                let txn = Txn::new()
                    .when_revision("counter", seen)
                    .put("counter", (count + 1).to_string().into_bytes());
                match store.txn(txn).await.unwrap() {
                    TxnOutcome::Committed { .. } => return,
                    TxnOutcome::Conflict { key } => assert_eq!(key, "counter"),
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let counter = store.get("counter").await.unwrap().unwrap();
    assert_eq!(counter.value, TASKS.to_string().into_bytes());
}

/// 5,000 keys written in transactions of 500 and read back in one range, in key order (the
/// etcd backend reads them in pages).
pub(crate) async fn large_range_is_complete_and_ordered(store: &dyn Store) {
    const TOTAL: usize = 5_000;
    const PER_TXN: usize = 500;
    let value = vec![b'j'; 200];
    for start in (0..TOTAL).step_by(PER_TXN) {
        let mut txn = Txn::new();
        for i in start..start + PER_TXN {
            let key = format!("jobs/{i:05}");
            txn = txn.when_absent(key.as_str()).put(key, value.clone());
        }
        committed(&store.txn(txn).await.unwrap());
    }
    put(store, "jobs0", "after the prefix").await;
    put(store, "job", "before the prefix").await;

    let jobs = store.range("jobs/").await.unwrap();
    assert_eq!(jobs.len(), TOTAL);
    assert!(jobs.windows(2).all(|pair| pair[0].key < pair[1].key));
    assert_eq!(jobs[0].key, "jobs/00000");
    assert_eq!(jobs[TOTAL - 1].key, format!("jobs/{:05}", TOTAL - 1));
    assert!(jobs.iter().all(|kv| kv.value == value));
    assert_eq!(store.range("").await.unwrap().len(), TOTAL + 2);
}

/// Turns the checks into `#[tokio::test]`s for one backend, named after the checks; invoke it
/// inside a module of its own. `$open` is an async fn returning `Option<F>` (`None`: the backend
/// is unavailable and the test returns early), where `F` has a `store(&self) -> Arc<dyn Store>`
/// method and keeps the backend alive while the test runs.
macro_rules! store_conformance_tests {
    ($open:path) => {
        $crate::store::conformance::store_conformance_tests!(
            @each $open,
            put_get_and_range_by_prefix,
            create_only_compare_conflicts_once_the_key_exists,
            stale_mod_revision_conflicts_and_create_revision_is_kept,
            a_failed_compare_applies_nothing_and_names_the_first_failing_key,
            delete_moves_the_revision_only_when_something_changed,
            invalid_transactions_are_refused,
            revisions_are_monotonic,
            large_range_is_complete_and_ordered,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_compare_and_swap_loses_no_update() {
            let Some(fixture) = $open().await else { return };
            $crate::store::conformance::concurrent_compare_and_swap_loses_no_update(
                fixture.store(),
            )
            .await;
        }
    };
    (@each $open:path, $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(fixture) = $open().await else { return };
                let store = fixture.store();
                $crate::store::conformance::$check(store.as_ref()).await;
            }
        )+
    };
}
pub(crate) use store_conformance_tests;

/// The embedded backend, on a fresh temporary directory.
mod embedded {
    use std::sync::Arc;

    use crate::store::{EmbeddedStore, Store, Txn, TxnOutcome};

    struct Fixture {
        store: Arc<EmbeddedStore>,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn store(&self) -> Arc<dyn Store> {
            Arc::clone(&self.store) as Arc<dyn Store>
        }
    }

    async fn open() -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open store");
        Some(Fixture {
            store: Arc::new(store),
            _dir: dir,
        })
    }

    super::store_conformance_tests!(open);

    /// The embedded store is only ever used by one controller, so it treats leader guards as
    /// holding.
    #[tokio::test]
    async fn leader_guards_hold() {
        let fixture = open().await.expect("embedded store");
        let guard = crate::store::LeaderGuard {
            key: "/fleetmig/default/leader/1".to_owned(),
            create_revision: 42,
        };
        let txn = Txn::new().when_leader(guard).put("k", b"v".to_vec());
        assert!(matches!(
            fixture.store.txn(txn).await.unwrap(),
            TxnOutcome::Committed { .. }
        ));
        assert!(fixture.store.watch("", 0).await.is_err());
    }
}
