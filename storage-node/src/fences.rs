//! Authorising a call on a migration: the token (signature, expiry, node,
//! role), the migration id it names, and its fence.
//!
//! The node remembers the highest fence it has seen per migration and
//! refuses a token whose fence is lower (a job taken over by another worker
//! session, or handed from the source to the destination, gets a higher
//! fence; the old holder's tokens go stale). The highest fence is kept in the
//! migration's record, written before the call that raised it proceeds, so
//! it survives a restart; for a migration without a record it is kept in
//! memory only. Fence 0 ([`fleetmig_auth::UNFENCED`]) marks a token not
//! tied to a job attempt: never stale, never raising the mark.

use fleetmig_auth::{UNFENCED, is_stale_fence};
use fleetmig_proto::v1::{self, CapabilityRole};

use crate::error::{Error, Result};
use crate::layout::MigrationId;
use crate::node::Node;

/// What a checked token grants.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The token's claims.
    pub(crate) claims: v1::Capability,
    /// The migration it names (validated).
    pub(crate) migration: MigrationId,
    /// The role it holds (one of those the call accepts).
    pub(crate) role: CapabilityRole,
}

impl Node {
    /// Checks `token` for one of `roles` on this node, the migration id it
    /// names, and its fence (raising the highest fence seen if it is
    /// higher; see the module docs).
    pub(crate) async fn authorize(
        &self,
        token: Option<&v1::SignedCapability>,
        roles: &[CapabilityRole],
        now: i64,
    ) -> Result<Grant> {
        let claims = self
            .tokens()
            .verify_any(token, roles, self.node_id(), now)?;
        let migration = MigrationId::parse(&claims.migration_id)?;
        let role = CapabilityRole::try_from(claims.role).unwrap_or(CapabilityRole::Unspecified);
        self.admit_fence(&migration, claims.fence).await?;
        Ok(Grant {
            claims,
            migration,
            role,
        })
    }

    /// Refuses a stale `fence` for `id`; remembers a higher one.
    async fn admit_fence(&self, id: &MigrationId, fence: u64) -> Result<()> {
        if fence == UNFENCED {
            return Ok(());
        }
        let recorded = {
            let mut table = self.table();
            let highest = table.highest_fence(id);
            if is_stale_fence(fence, highest) {
                return Err(stale(id, fence, highest));
            }
            if fence <= highest {
                return Ok(());
            }
            // In memory at once: from here on lower fences are refused.
            table.raise_fence(id, fence);
            table.entries.contains_key(id)
        };
        if recorded {
            self.persist_fence(id).await?;
        }
        tracing::info!(migration_id = %id, fence, "new highest fence");
        Ok(())
    }

    /// Writes the highest fence seen into the migration's record.
    async fn persist_fence(&self, id: &MigrationId) -> Result<()> {
        let _transition = self.lock_migration(id).await;
        let record = {
            let table = self.table();
            let Some(entry) = table.entries.get(id) else {
                return Ok(()); // deleted meanwhile: the fence stays in memory
            };
            if entry.record.highest_fence >= table.highest_fence(id) {
                return Ok(()); // another call persisted it
            }
            entry.record.clone()
        };
        // `persist` takes the in-memory fence in.
        let written = self.persist(record).await?;
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(id) {
            // Only the fence: activity may have renewed the lease meanwhile.
            entry.record.highest_fence = entry.record.highest_fence.max(written.highest_fence);
        }
        if table
            .fences
            .get(id)
            .is_some_and(|fence| *fence <= written.highest_fence)
        {
            table.fences.remove(id);
        }
        Ok(())
    }
}

fn stale(id: &MigrationId, presented: u64, highest: u64) -> Error {
    Error::StaleFence {
        migration_id: id.to_string(),
        presented,
        highest,
    }
}
