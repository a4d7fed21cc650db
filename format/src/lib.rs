//! The packed state format, version 1, shared by the worker and the storage node.
//!
//! A capture is cut into content-defined chunks ([`chunker`]); each chunk is named by a keyed
//! BLAKE3 of its plaintext under the fleet key, compressed with zstd when that pays, and sealed
//! with XChaCha20-Poly1305 ([`chunk`]). The list of files is a [`manifest::PackedManifest`],
//! sealed under a per-migration key. The storage node stores sealed chunks by id and never sees
//! plaintext, file names or keys, yet identical content from any machine of the fleet is stored
//! once. The byte layout is specified in `docs/format.md`.
//!
//! Everything here is synchronous and works on byte slices or `Read`ers, so callers can
//! parallelise with rayon (chunks of one file, or files of a capture) on blocking threads.

pub mod chunk;
pub mod chunker;
pub mod error;
pub mod file;
pub mod keys;
pub mod manifest;

pub use chunk::{ChunkId, SealedChunk, ciphertext_checksum, open_chunk, seal_chunk};
pub use chunker::{CHUNK_AVG_SIZE, CHUNK_MAX_SIZE, CHUNK_MIN_SIZE, chunks, stream_chunks};
pub use error::{Error, Result};
pub use file::{PackedFile, pack_file, pack_reader, unpack_into};
pub use keys::{FleetKey, MigrationKey};
pub use manifest::{EntryKind, PackedEntry, PackedManifest, open_manifest, seal_manifest};

/// The packed format version this crate writes and reads. Stored in every chunk and manifest
/// header. Version 1 fixes the chunker parameters: a new chunker means a new version.
pub const FORMAT_VERSION: u8 = 1;
