//! ListMigrations: the migrations this node holds, in id order, a page at a
//! time (role INVENTORY: the controller re-syncing replicas). Expired
//! captures are left out: they hold nothing restorable and are deleted
//! after their retention.

use std::ops::Bound;

use fleetmig_proto::v1::{self, CapabilityRole};

use crate::error::Result;
use crate::node::{Node, now_unix_ms};
use crate::record::MigrationState;

/// Page size when the request leaves it unset.
pub const DEFAULT_PAGE: u32 = 1_000;
/// Largest page.
pub const MAX_PAGE: u32 = 10_000;

/// One migration in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMigration {
    /// The migration.
    pub migration_id: String,
    /// Its state (never expired).
    pub state: MigrationState,
    /// BLAKE3 of the sealed manifest, hex (empty before commit).
    pub manifest_digest: String,
}

/// A page of [`Node::list_migrations`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationPage {
    /// Migrations in id order.
    pub migrations: Vec<ListedMigration>,
    /// Whether more ids follow the last one.
    pub more: bool,
}

/// The page size for a requested `limit`.
pub fn page_size(limit: u32) -> usize {
    match limit {
        0 => DEFAULT_PAGE as usize,
        limit => limit.min(MAX_PAGE) as usize,
    }
}

impl Node {
    /// ListMigrations (role INVENTORY, naming no migration): the migrations
    /// with ids after `start_after` (byte order), at most `limit` (0: the
    /// default page, capped at [`MAX_PAGE`]).
    pub async fn list_migrations(
        &self,
        token: Option<&v1::SignedCapability>,
        start_after: &str,
        limit: u32,
    ) -> Result<MigrationPage> {
        self.tokens().verify_any(
            token,
            &[CapabilityRole::Inventory],
            self.node_id(),
            now_unix_ms(),
        )?;
        let size = page_size(limit);
        let table = self.table();
        let mut listed = table
            .entries
            .range::<str, _>((Bound::Excluded(start_after), Bound::Unbounded))
            .filter(|(_, entry)| entry.record.state != MigrationState::Expired)
            .map(|(id, entry)| ListedMigration {
                migration_id: id.to_string(),
                state: entry.record.state,
                manifest_digest: entry
                    .record
                    .commit
                    .as_ref()
                    .filter(|_| entry.record.state.is_committed())
                    .map(|info| info.manifest_digest.clone())
                    .unwrap_or_default(),
            });
        let migrations: Vec<ListedMigration> = listed.by_ref().take(size).collect();
        let more = listed.next().is_some();
        Ok(MigrationPage { migrations, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_to_a_thousand_and_are_capped() {
        assert_eq!(page_size(0), 1_000);
        assert_eq!(page_size(5), 5);
        assert_eq!(page_size(10_000), 10_000);
        assert_eq!(page_size(u32::MAX), 10_000);
    }
}
