use std::sync::Arc;

use super::*;

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path()).expect("open store")
}

async fn put(store: &EmbeddedStore, key: &str, value: &str) -> u64 {
    match store
        .txn(Txn::new().put(key, value.as_bytes()))
        .await
        .expect("put")
    {
        TxnOutcome::Committed { revision } => revision,
        TxnOutcome::Conflict { key } => panic!("unconditional put conflicted on {key}"),
    }
}

fn conflict(key: &str) -> TxnOutcome {
    TxnOutcome::Conflict {
        key: key.to_owned(),
    }
}

#[tokio::test]
async fn put_get_and_range_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(dir.path().join(FILE_NAME).exists());
    assert_eq!(store.get("jobs/1").await.unwrap(), None);
    assert!(store.range("").await.unwrap().is_empty());

    put(&store, "jobs/2", "two").await;
    put(&store, "jobs/1", "one").await;
    put(&store, "jobs2/x", "not a job").await;
    put(&store, "job", "not a job either").await;
    put(&store, "machines/a", "a").await;

    let one = store.get("jobs/1").await.unwrap().unwrap();
    assert_eq!(one.key, "jobs/1");
    assert_eq!(one.value, b"one");
    assert_eq!((one.create_revision, one.mod_revision), (2, 2));

    let jobs = store.range("jobs/").await.unwrap();
    let keys: Vec<_> = jobs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["jobs/1", "jobs/2"]);
    assert_eq!(jobs[1].value, b"two");

    let all = store.range("").await.unwrap();
    let keys: Vec<_> = all.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["job", "jobs/1", "jobs/2", "jobs2/x", "machines/a"]);
    assert!(store.range("zones/").await.unwrap().is_empty());
    assert_eq!(store.range("machines/a").await.unwrap().len(), 1);
}

#[tokio::test]
async fn create_only_compare_conflicts_once_the_key_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);

    let create = || {
        Txn::new()
            .when_absent("plans/p")
            .put("plans/p", b"v1".to_vec())
    };
    assert_eq!(
        store.txn(create()).await.unwrap(),
        TxnOutcome::Committed { revision: 1 }
    );
    assert_eq!(store.txn(create()).await.unwrap(), conflict("plans/p"));
    assert_eq!(store.get("plans/p").await.unwrap().unwrap().value, b"v1");
    assert_eq!(store.revision().await.unwrap(), 1);
}

#[tokio::test]
async fn stale_mod_revision_conflicts_and_create_revision_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let first = put(&store, "waves/w", "a").await;

    let update = |seen: u64, value: &str| {
        Txn::new()
            .when_revision("waves/w", seen)
            .put("waves/w", value.as_bytes())
    };
    let second = match store.txn(update(first, "b")).await.unwrap() {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("expected a commit, got {other:?}"),
    };
    assert!(second > first);
    assert_eq!(
        store.txn(update(first, "c")).await.unwrap(),
        conflict("waves/w")
    );
    assert_eq!(
        store.txn(update(0, "c")).await.unwrap(),
        conflict("waves/w")
    );

    let stored = store.get("waves/w").await.unwrap().unwrap();
    assert_eq!(stored.value, b"b");
    assert_eq!(stored.create_revision, first);
    assert_eq!(stored.mod_revision, second);
}

#[tokio::test]
async fn a_failed_compare_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = put(&store, "a", "a0").await;
    put(&store, "b", "b0").await;
    put(&store, "d", "d0").await;
    let before = store.revision().await.unwrap();

    let txn = Txn::new()
        .when_revision("a", a)
        .when_revision("b", 999)
        .when_revision("c", 999)
        .put("a", b"a1".to_vec())
        .put("c", b"c1".to_vec())
        .delete("d");
    // The first failing compare, in order, is named.
    assert_eq!(store.txn(txn).await.unwrap(), conflict("b"));

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
    assert_eq!(
        store.txn(txn).await.unwrap(),
        TxnOutcome::Committed {
            revision: before + 1
        }
    );
    let a = store.get("a").await.unwrap().unwrap();
    let c = store.get("c").await.unwrap().unwrap();
    assert_eq!((a.mod_revision, c.mod_revision), (before + 1, before + 1));
    assert_eq!(c.create_revision, before + 1);
    assert_eq!(store.get("d").await.unwrap(), None);
}

#[tokio::test]
async fn delete_removes_and_bumps_the_revision_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let created = put(&store, "jobs/1", "x").await;
    put(&store, "jobs/2", "y").await;

    let deleted = store.txn(Txn::new().delete("jobs/1")).await.unwrap();
    assert_eq!(deleted, TxnOutcome::Committed { revision: 3 });
    assert_eq!(store.get("jobs/1").await.unwrap(), None);
    assert_eq!(store.range("jobs/").await.unwrap().len(), 1);

    // As in etcd: deleting an absent key, or a transaction without operations, commits at the
    // current revision without moving it.
    let again = store.txn(Txn::new().delete("jobs/1")).await.unwrap();
    assert_eq!(again, TxnOutcome::Committed { revision: 3 });
    let empty = store.txn(Txn::new().when_absent("jobs/1")).await.unwrap();
    assert_eq!(empty, TxnOutcome::Committed { revision: 3 });
    assert_eq!(store.revision().await.unwrap(), 3);

    // A key put again after its deletion is a new key with a new create_revision.
    let recreated = put(&store, "jobs/1", "z").await;
    let stored = store.get("jobs/1").await.unwrap().unwrap();
    assert_eq!(stored.create_revision, recreated);
    assert!(stored.create_revision > created);
}

#[tokio::test]
async fn invalid_transactions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
    assert_eq!(store.revision().await.unwrap(), 0);
}

#[tokio::test]
async fn revisions_are_monotonic_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    {
        let store = open(&dir);
        for i in 0..5 {
            let revision = put(&store, &format!("audit/{i}"), "entry").await;
            assert!(revision > last);
            last = revision;
        }
        assert_eq!(store.revision().await.unwrap(), last);
    }

    let store = open(&dir);
    assert_eq!(store.revision().await.unwrap(), last);
    let entry = store.get("audit/4").await.unwrap().unwrap();
    assert_eq!(entry.mod_revision, last);
    assert_eq!(store.range("audit/").await.unwrap().len(), 5);
    assert_eq!(put(&store, "audit/5", "entry").await, last + 1);
}

#[tokio::test]
async fn a_batch_sees_its_earlier_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let claim = || {
        Txn::new()
            .when_absent("lease")
            .put("lease", b"mine".to_vec())
    };
    let outcomes = futures::future::join_all((0..16).map(|_| store.txn(claim()))).await;
    let committed = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap())
        .filter(TxnOutcome::is_committed)
        .count();
    assert_eq!(committed, 1);
    assert_eq!(store.revision().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_swap_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    const TASKS: u64 = 200;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut conflicts = 0u64;
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
                    TxnOutcome::Committed { .. } => return conflicts,
                    TxnOutcome::Conflict { key } => {
                        assert_eq!(key, "counter");
                        conflicts += 1;
                    }
                }
            }
        });
    }
    let mut successes = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
        successes += 1;
    }

    let counter = store.get("counter").await.unwrap().unwrap();
    assert_eq!(counter.value, successes.to_string().into_bytes());
    assert_eq!(successes, TASKS);
    // One revision per successful increment, none for the conflicts.
    assert_eq!(store.revision().await.unwrap(), TASKS);
    assert_eq!(counter.mod_revision, TASKS);
    assert_eq!(counter.create_revision, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_transactions_from_concurrent_tasks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    const TASKS: usize = 64;
    const TOTAL: usize = 5_000;

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for i in (task..TOTAL).step_by(TASKS) {
                let key = format!("jobs/{i:05}");
                let txn = Txn::new()
                    .when_absent(key.as_str())
                    .put(key.as_str(), br#"{"state":"assigned"}"#.to_vec());
                assert!(store.txn(txn).await.unwrap().is_committed());
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }

    assert_eq!(store.revision().await.unwrap(), TOTAL as u64);
    let jobs = store.range("jobs/").await.unwrap();
    assert_eq!(jobs.len(), TOTAL);
    assert!(jobs.windows(2).all(|pair| pair[0].key < pair[1].key));
}

#[tokio::test]
async fn a_corrupt_entry_is_reported_and_blocks_only_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    {
        let transaction = store.db.begin_write().unwrap();
        transaction
            .open_table(KV)
            .unwrap()
            .insert("bad", [7u8, 1, 2].as_slice())
            .unwrap();
        transaction.commit().unwrap();
    }

    assert!(matches!(
        store.get("bad").await,
        Err(Error::StoreCorrupt { key, .. }) if key == "bad"
    ));
    assert!(matches!(
        store.range("").await,
        Err(Error::StoreCorrupt { .. })
    ));
    let touching_bad = store
        .txn(
            Txn::new()
                .put("good", b"1".to_vec())
                .put("bad", b"2".to_vec()),
        )
        .await;
    assert!(matches!(touching_bad, Err(Error::StoreCorrupt { .. })));
    assert_eq!(store.get("good").await.unwrap(), None);
    assert_eq!(put(&store, "good", "1").await, 1);
}
