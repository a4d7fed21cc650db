//! Sealed chunks: keyed ids, optional zstd, XChaCha20-Poly1305 with a nonce derived from the id.
//!
//! Layout (format version 1, all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FMCK` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | flags: bit 0 = body is zstd-compressed; other bits zero |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | plaintext length |
//! | 16 | n | body ciphertext (zstd frame or raw plaintext, encrypted) |
//! | 16 + n | 16 | Poly1305 tag |
//!
//! The AEAD's associated data is the 16-byte header followed by the 32-byte chunk id, and its
//! nonce is the first 24 bytes of the chunk id. Encryption is therefore convergent: the same
//! plaintext under the same fleet key always yields the same id and the same bytes.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::keys::FleetKey;

/// Magic bytes opening every sealed chunk.
pub const CHUNK_MAGIC: [u8; 4] = *b"FMCK";
/// Size of the sealed-chunk header.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Size of the Poly1305 tag closing every sealed chunk.
pub const TAG_LEN: usize = 16;
/// Header flag: the body is a zstd frame.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// zstd level used for chunks (fast; capture throughput matters more than ratio).
pub const CHUNK_ZSTD_LEVEL: i32 = 1;
/// Compression is kept only when it saves at least 1/20 (5 %) of the plaintext.
const MIN_SAVING_DIVISOR: usize = 20;

/// A chunk's name: keyed BLAKE3 of its plaintext under the fleet's chunk-id key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id `plaintext` has under `fleet`.
    pub fn of(fleet: &FleetKey, plaintext: &[u8]) -> Self {
        Self(*blake3::keyed_hash(fleet.id_key(), plaintext).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn nonce(&self) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&self.0[..24]);
        XNonce::from(nonce)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = hex::FromHexError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A chunk ready for the storage node: its id and its sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// Keyed BLAKE3 of the plaintext; the storage key.
    pub id: ChunkId,
    /// Header, ciphertext and tag.
    pub bytes: Vec<u8>,
}

impl SealedChunk {
    /// Whether the body was stored zstd-compressed (false: stored raw because it did not pay).
    pub fn is_compressed(&self) -> bool {
        self.bytes
            .get(5)
            .is_some_and(|flags| flags & FLAG_COMPRESSED != 0)
    }
}

fn cipher(fleet: &FleetKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*fleet.seal_key()))
}

fn associated_data(header: &[u8], id: &ChunkId) -> [u8; CHUNK_HEADER_LEN + 32] {
    let mut aad = [0u8; CHUNK_HEADER_LEN + 32];
    aad[..CHUNK_HEADER_LEN].copy_from_slice(header);
    aad[CHUNK_HEADER_LEN..].copy_from_slice(&id.0);
    aad
}

/// Seals one chunk: computes its id, compresses it if that saves at least 5 %, encrypts.
/// Deterministic: the same plaintext under the same fleet key gives the same result.
pub fn seal_chunk(fleet: &FleetKey, plaintext: &[u8]) -> SealedChunk {
    let id = ChunkId::of(fleet, plaintext);
    let compressed = zstd::bulk::compress(plaintext, CHUNK_ZSTD_LEVEL)
        .ok()
        .filter(|body| {
            body.len() <= plaintext.len() - plaintext.len() / MIN_SAVING_DIVISOR
                && !plaintext.is_empty()
        });
    let flags = if compressed.is_some() {
        FLAG_COMPRESSED
    } else {
        0
    };
    let body: &[u8] = compressed.as_deref().unwrap_or(plaintext);

    let mut bytes = Vec::with_capacity(CHUNK_HEADER_LEN + body.len() + TAG_LEN);
    bytes.extend_from_slice(&CHUNK_MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.push(flags);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&(plaintext.len() as u64).to_le_bytes());
    let aad = associated_data(&bytes, &id);
    let mut sealed_body = body.to_vec();
    cipher(fleet)
        .encrypt_in_place(&id.nonce(), &aad, &mut sealed_body)
        .expect("xchacha20poly1305 accepts messages far larger than a chunk");
    bytes.extend_from_slice(&sealed_body);
    SealedChunk { id, bytes }
}

/// Opens a sealed chunk fetched under `id`: checks the header, the AEAD tag (which also binds
/// the bytes to `id`), decompresses, and checks that the plaintext hashes to `id`.
pub fn open_chunk(fleet: &FleetKey, id: &ChunkId, bytes: &[u8]) -> Result<Vec<u8>> {
    let malformed = |reason: String| Error::ChunkMalformed { id: *id, reason };
    if bytes.len() < CHUNK_HEADER_LEN + TAG_LEN {
        return Err(malformed(format!("{} bytes is too short", bytes.len())));
    }
    let (header, sealed_body) = bytes.split_at(CHUNK_HEADER_LEN);
    if header[..4] != CHUNK_MAGIC {
        return Err(malformed("bad magic".to_owned()));
    }
    if header[4] != FORMAT_VERSION {
        return Err(malformed(format!(
            "unsupported format version {}",
            header[4]
        )));
    }
    let flags = header[5];
    if flags & !FLAG_COMPRESSED != 0 || header[6..8] != [0, 0] {
        return Err(malformed(format!("unknown flags {flags:#04x}")));
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&header[8..16]);
    let plaintext_len = u64::from_le_bytes(length);

    let aad = associated_data(header, id);
    let mut body = sealed_body.to_vec();
    cipher(fleet)
        .decrypt_in_place(&id.nonce(), &aad, &mut body)
        .map_err(|_| Error::ChunkCorrupt { id: *id })?;

    // The header is authenticated from here on, so its length can be trusted.
    let plaintext_len = usize::try_from(plaintext_len)
        .map_err(|_| malformed(format!("plaintext length {plaintext_len} too large")))?;
    let plaintext = if flags & FLAG_COMPRESSED != 0 {
        zstd::bulk::decompress(&body, plaintext_len)
            .map_err(|error| malformed(format!("zstd: {error}")))?
    } else {
        body
    };
    if plaintext.len() != plaintext_len {
        return Err(malformed(format!(
            "plaintext is {} bytes, header says {plaintext_len}",
            plaintext.len()
        )));
    }
    let actual = ChunkId::of(fleet, &plaintext);
    if actual != *id {
        return Err(Error::ChunkIdMismatch { id: *id, actual });
    }
    Ok(plaintext)
}

/// Plain BLAKE3 of the sealed bytes, hex: lets the storage node scrub its chunks without keys.
pub fn ciphertext_checksum(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::pseudo_random_bytes;
    use proptest::prelude::*;

    fn fleet() -> FleetKey {
        FleetKey::from_bytes([42; 32])
    }

    #[test]
    fn round_trip_compressible_and_incompressible() {
        let text = b"All work and no play makes Jack a dull boy. ".repeat(10_000);
        let sealed = seal_chunk(&fleet(), &text);
        assert!(sealed.is_compressed());
        assert!(sealed.bytes.len() < text.len() / 10);
        assert_eq!(
            open_chunk(&fleet(), &sealed.id, &sealed.bytes).unwrap(),
            text
        );

        let noise = pseudo_random_bytes(9, 300_000);
        let sealed = seal_chunk(&fleet(), &noise);
        assert!(!sealed.is_compressed(), "random data is stored raw");
        assert_eq!(sealed.bytes.len(), noise.len() + CHUNK_HEADER_LEN + TAG_LEN);
        assert_eq!(
            open_chunk(&fleet(), &sealed.id, &sealed.bytes).unwrap(),
            noise
        );

        let empty = seal_chunk(&fleet(), b"");
        assert_eq!(open_chunk(&fleet(), &empty.id, &empty.bytes).unwrap(), b"");
    }

    #[test]
    fn same_content_on_two_machines_dedups() {
        // Two machines of the fleet load the same key from their own key files.
        let machine_a = FleetKey::from_bytes([42; 32]);
        let machine_b = FleetKey::from_bytes([42; 32]);
        let content = b"Quarterly report.doc contents ".repeat(3000);
        let a = seal_chunk(&machine_a, &content);
        let b = seal_chunk(&machine_b, &content);
        assert_eq!(a, b, "identical id and ciphertext");
        assert_eq!(ciphertext_checksum(&a.bytes), ciphertext_checksum(&b.bytes));

        let other_fleet = seal_chunk(&FleetKey::from_bytes([43; 32]), &content);
        assert_ne!(other_fleet.id, a.id, "ids depend on the fleet key");
    }

    #[test]
    fn flipped_byte_is_detected_and_names_the_chunk() {
        let sealed = seal_chunk(&fleet(), &b"precious data ".repeat(500));
        for position in [0, 5, 9, CHUNK_HEADER_LEN + 3, sealed.bytes.len() - 1] {
            let mut bytes = sealed.bytes.clone();
            bytes[position] ^= 0x40;
            let error = open_chunk(&fleet(), &sealed.id, &bytes).unwrap_err();
            assert!(error.to_string().contains(&sealed.id.to_hex()), "{error}");
        }
        assert_ne!(
            ciphertext_checksum(&sealed.bytes),
            ciphertext_checksum(&sealed.bytes[1..])
        );
    }

    #[test]
    fn swapped_chunk_and_wrong_fleet_key_fail() {
        let a = seal_chunk(&fleet(), b"chunk a");
        let b = seal_chunk(&fleet(), b"chunk b");
        let error = open_chunk(&fleet(), &a.id, &b.bytes).unwrap_err();
        assert!(
            matches!(error, Error::ChunkCorrupt { id } if id == a.id),
            "{error}"
        );
        let error = open_chunk(&FleetKey::from_bytes([1; 32]), &a.id, &a.bytes).unwrap_err();
        assert!(matches!(error, Error::ChunkCorrupt { .. }), "{error}");
    }

    /// Pins key derivation, chunk ids and the raw chunk layout of format v1.
    #[test]
    fn golden_id_and_raw_sealed_bytes_of_v1() {
        let noise = pseudo_random_bytes(11, 4096);
        let sealed = seal_chunk(&FleetKey::from_bytes([0x5a; 32]), &noise);
        assert!(!sealed.is_compressed());
        assert_eq!(sealed.id.to_hex(), GOLDEN_ID);
        assert_eq!(ciphertext_checksum(&sealed.bytes), GOLDEN_CHECKSUM);
    }

    const GOLDEN_ID: &str = "f641945fdb9303033e70011760a4d003f730314e6ca2a57fabede61f967ecd52";
    const GOLDEN_CHECKSUM: &str =
        "03d29eff612507db76f1068d55aabbf831336bb6daf311f056cf3ce976a78540";

    #[test]
    fn chunk_id_hex_round_trip() {
        let id = ChunkId::of(&fleet(), b"x");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(
            serde_json::from_str::<ChunkId>(&serde_json::to_string(&id).unwrap()).unwrap(),
            id
        );
        assert!("zz".parse::<ChunkId>().is_err());
    }

    proptest! {
        #[test]
        fn open_chunk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), id in any::<[u8; 32]>()) {
            let _ = open_chunk(&fleet(), &ChunkId(id), &bytes);
        }

        #[test]
        fn open_chunk_never_panics_behind_a_valid_header(mut bytes in proptest::collection::vec(any::<u8>(), 32..256), flags in 0u8..2) {
            bytes[..4].copy_from_slice(&CHUNK_MAGIC);
            bytes[4] = FORMAT_VERSION;
            bytes[5] = flags;
            bytes[6] = 0;
            bytes[7] = 0;
            let _ = open_chunk(&fleet(), &ChunkId([0; 32]), &bytes);
        }
    }
}
