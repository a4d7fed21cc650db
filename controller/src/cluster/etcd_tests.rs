//! Two controllers on a real etcd (see `store/etcd/test_server.rs`): one
//! leads, the other follows the store's changes, a new term raises the
//! epoch, and a scheduling pass that outlived its term is fenced.

use super::*;
use crate::controller::ControllerSettings;
use crate::model::Inventory;
use crate::store::etcd::EtcdStore;
use crate::store::etcd::test_server::TestEtcd;
use crate::store::{SharedStore, Store};
use std::sync::Arc;

async fn member(store: &EtcdStore, id: &str) -> Controller {
    let shared: SharedStore = Arc::new(store.clone());
    Controller::open_member(
        shared,
        ControllerSettings::default(),
        Membership::member(id, format!("http://{id}.invalid:7400")),
    )
    .await
    .expect("open member")
}

fn election(store: &EtcdStore, id: &str) -> Election {
    let mut config = crate::leader::ElectionConfig::for_store(
        store,
        KnownLeader {
            id: id.into(),
            url: format!("http://{id}.invalid:7400"),
        }
        .candidate(),
    );
    config.ttl = Duration::from_secs(2);
    Election::new(store.client().clone(), config)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_with_a_new_epoch_and_a_stale_pass_is_fenced() {
    let Some(etcd) = TestEtcd::start().await else {
        return;
    };
    let config = etcd.config();
    let store_a = EtcdStore::connect(config.clone()).await.unwrap();
    let store_b = EtcdStore::connect(config).await.unwrap();
    let a = member(&store_a, "a").await;
    let b = member(&store_b, "b").await;
    let stop = CancellationToken::new();
    tokio::spawn(a.clone().run_feed(stop.clone()));
    tokio::spawn(b.clone().run_feed(stop.clone()));
    assert!(
        !a.is_leader() && !b.is_leader(),
        "members start as followers"
    );

    // a is elected first and starts term 1.
    let stop_a = CancellationToken::new();
    let a_campaign = tokio::spawn(a.clone().run_election(
        election(&store_a, "a"),
        LeaseLoss::StepDown,
        stop_a.clone(),
    ));
    eventually("a leads", || a.is_leader()).await;
    assert_eq!(a.epoch(), 1);
    eventually("b hears of epoch 1", || b.epoch() == 1).await;
    let stale = a.inner.membership.term().expect("a's term").guard;

    // b follows a's writes: a machine a enrolls shows up in b's registry,
    // and b publishes its audit event to b's operators.
    let mut b_events = b.subscribe();
    let machine = a
        .enroll(
            "",
            Inventory {
                hostname: "XP-1".into(),
                ..Inventory::default()
            },
        )
        .await
        .unwrap();
    eventually("b sees the machine", || {
        b.registry().machines.contains_key(&machine)
    })
    .await;
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), b_events.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        if event.kind == "machine.enroll" {
            break event;
        }
    };
    assert_eq!(event.machine_id, machine);
    assert!(event.seq > 0);

    // a steps down (resigns); b takes over with a higher epoch.
    tokio::spawn(b.clone().run_election(
        election(&store_b, "b"),
        LeaseLoss::StepDown,
        stop.clone(),
    ));
    stop_a.cancel();
    a_campaign.await.unwrap();
    eventually("b leads", || b.is_leader()).await;
    assert!(!a.is_leader());
    assert_eq!(b.epoch(), 2);
    eventually("a hears of epoch 2", || a.epoch() == 2).await;

    // A pass a started in term 1 and that writes only now is refused by etcd.
    let late = PASS_TERM.scope(
        stale,
        a.commit(
            Txn::new().put("late/write", b"x".to_vec()),
            vec![AuditEvent {
                seq: 0,
                unix_ms: now_ms(),
                actor: "controller".into(),
                kind: "test.late".into(),
                wave: String::new(),
                job_id: String::new(),
                machine_id: String::new(),
                detail: "written after the term ended".into(),
            }],
        ),
    );
    let err = late
        .await
        .expect_err("a stale term's write must be refused");
    assert!(matches!(err, Error::NotLeader { .. }), "{err}");
    assert!(store_b.get("late/write").await.unwrap().is_none());

    // A follower's own writes (a worker's report, an operator) still apply:
    // they are compare-and-swaps on what they change.
    a.enroll(
        "",
        Inventory {
            hostname: "XP-2".into(),
            ..Inventory::default()
        },
    )
    .await
    .expect("a follower serves enrollments");
    // The scheduler runs only on the leader.
    assert!(a.as_leader(async {}).await.is_none());
    assert!(b.as_leader(async {}).await.is_some());
    stop.cancel();
}
