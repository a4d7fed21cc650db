//! The worker's transport to storage nodes.
//!
//! Controller channels carry their transport in [`crate::client::ClientOptions`]; storage
//! node channels are opened deep inside capture and restore, so the agent sets the
//! process's node transport once, after enrollment gave it a certificate
//! ([`set_node_transport`]). Until then (and in the offline tools) it is plaintext.

use std::sync::RwLock;

use fleetmig_auth::Transport;

static NODE_TRANSPORT: RwLock<Option<Transport>> = RwLock::new(None);

/// Sets the transport of every storage-node channel opened from now on.
pub fn set_node_transport(transport: Transport) {
    *NODE_TRANSPORT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(transport);
}

/// The transport storage-node channels use (plaintext until set).
pub fn node_transport() -> Transport {
    NODE_TRANSPORT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or(Transport::Plaintext)
}
