//! Key layout in the store, and the JSON codec for values.
//!
//! Every key lives under one of these prefixes; the etcd backend puts them
//! all under a cluster prefix. Values are JSON so an operator can read them
//! with `etcdctl get` in an emergency.

use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Enrolled machines: `machines/<id>`.
pub const MACHINES: &str = "machines/";
/// Applied plans: `plans/<name>`.
pub const PLANS: &str = "plans/";
/// Waves: `waves/<name>`.
pub const WAVES: &str = "waves/";
/// Jobs: `jobs/<id>`.
pub const JOBS: &str = "jobs/";
/// Storage nodes: `nodes/<id>`.
pub const NODES: &str = "nodes/";
/// Migration keys of replace jobs: `migkeys/<job id>` (hex).
pub const MIGRATION_KEYS: &str = "migkeys/";
/// Audit log: `audit/<uuid v7>`, ordered by store revision.
pub const AUDIT: &str = "audit/";
/// Controller epoch counter (the high half of every fencing token).
pub const EPOCH: &str = "meta/epoch";

/// The key of `id` under `prefix`.
pub fn key(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

/// Encodes a value for the store.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("domain types always serialize")
}

/// Parses a stored migration key (64 hex characters).
pub fn decode_migration_key(key: &str, hex_key: &str) -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    if hex_key.len() != 64 || hex::decode_to_slice(hex_key, &mut bytes).is_err() {
        return Err(Error::StoreCorrupt {
            key: key.to_string(),
            reason: "a migration key is 64 hex characters".into(),
        });
    }
    Ok(bytes)
}

/// Decodes a stored value, naming the key when it is unreadable.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|err| Error::StoreCorrupt {
        key: key.to_string(),
        reason: err.to_string(),
    })
}
