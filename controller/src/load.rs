//! Loading the store into memory at startup, and the epoch counter.

use crate::error::{Error, Result};
use crate::keys;
use crate::model::{Job, Machine, Plan, Wave};
use crate::nodes::{NodeTable, StorageNode};
use crate::registry::{Registry, Versioned};
use crate::store::{Store, Txn, TxnOutcome};

/// Reads machines, plans, waves and jobs into a fresh registry.
pub async fn load_registry(
    store: &dyn Store,
    master: &crate::escrow::MasterKey,
) -> Result<Registry> {
    let mut registry = Registry::default();
    for kv in store.range(keys::MACHINES).await? {
        let machine: Machine = keys::decode(&kv.key, &kv.value)?;
        registry.put_machine(machine, kv.mod_revision);
    }
    for kv in store.range(keys::PLANS).await? {
        let plan: Plan = keys::decode(&kv.key, &kv.value)?;
        registry.plans.insert(
            plan.name.clone(),
            Versioned {
                value: plan,
                revision: kv.mod_revision,
            },
        );
    }
    for kv in store.range(keys::WAVES).await? {
        let wave: Wave = keys::decode(&kv.key, &kv.value)?;
        registry.waves.insert(
            wave.spec.name.clone(),
            Versioned {
                value: wave,
                revision: kv.mod_revision,
            },
        );
    }
    let mut jobs = Vec::new();
    for kv in store.range(keys::JOBS).await? {
        let job: Job = keys::decode(&kv.key, &kv.value)?;
        jobs.push((job, kv.mod_revision));
    }
    // Admission order within a wave is by hostname, as at wave start.
    jobs.sort_by(|(a, _), (b, _)| {
        let host = |job: &Job| {
            registry
                .machines
                .get(&job.machine_id)
                .map(|m| m.value.inventory.hostname.to_ascii_lowercase())
                .unwrap_or_default()
        };
        (a.created_ms, host(a), &a.id).cmp(&(b.created_ms, host(b), &b.id))
    });
    for (job, revision) in jobs {
        registry.put_job(job, revision);
    }
    for kv in store.range(keys::MIGRATION_KEYS).await? {
        let stored: String = keys::decode(&kv.key, &kv.value)?;
        let key = master.open(&kv.key, &stored)?;
        let job_id = kv.key[keys::MIGRATION_KEYS.len()..].to_string();
        registry.migration_keys.insert(job_id, key);
    }
    Ok(registry)
}

/// Reads the registered storage nodes.
pub async fn load_nodes(store: &dyn Store) -> Result<NodeTable> {
    let mut table = NodeTable::default();
    for kv in store.range(keys::NODES).await? {
        let node: StorageNode = keys::decode(&kv.key, &kv.value)?;
        table.nodes.insert(node.id.clone(), (node, None));
    }
    Ok(table)
}

/// The persisted epoch counter (0 before the first term).
pub async fn current_epoch(store: &dyn Store) -> Result<u32> {
    match store.get(keys::EPOCH).await? {
        Some(kv) => keys::decode::<u32>(keys::EPOCH, &kv.value),
        None => Ok(0),
    }
}

/// Increments and returns the persisted epoch counter.
pub async fn next_epoch(store: &dyn Store) -> Result<u32> {
    for _ in 0..16 {
        let current = store.get(keys::EPOCH).await?;
        let (value, revision) = match &current {
            Some(kv) => (
                keys::decode::<u32>(keys::EPOCH, &kv.value)?,
                kv.mod_revision,
            ),
            None => (0, 0),
        };
        let next = value.checked_add(1).ok_or_else(|| Error::StoreCorrupt {
            key: keys::EPOCH.into(),
            reason: "epoch counter exhausted".into(),
        })?;
        let txn = Txn::new()
            .when_revision(keys::EPOCH, revision)
            .put(keys::EPOCH, keys::encode(&next));
        if let TxnOutcome::Committed { .. } = store.txn(txn).await? {
            return Ok(next);
        }
    }
    Err(Error::Conflict {
        key: keys::EPOCH.into(),
    })
}
