//! Content-defined chunking, frozen for format version 1.
//!
//! FastCDC 2020 (`fastcdc` crate, pinned to an exact version) with minimum 256 KiB, average
//! 1 MiB, maximum 4 MiB, normalization level 1 and gear seed 0. Data no longer than the minimum
//! is one chunk; empty data has no chunks. These parameters decide chunk boundaries and so chunk
//! ids: changing any of them (or the crate's algorithm) silently stops dedup against everything
//! stored before, so it requires a new format version.

use std::io::Read;
use std::ops::Range;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

/// Minimum chunk size (bytes) of format version 1.
pub const CHUNK_MIN_SIZE: usize = 256 * 1024;
/// Average (normal) chunk size (bytes) of format version 1.
pub const CHUNK_AVG_SIZE: usize = 1024 * 1024;
/// Maximum chunk size (bytes) of format version 1.
pub const CHUNK_MAX_SIZE: usize = 4 * 1024 * 1024;
/// FastCDC normalization level of format version 1.
const NORMALIZATION: Normalization = Normalization::Level1;
/// FastCDC gear-table seed of format version 1 (0: the published gear table).
const GEAR_SEED: u64 = 0;

/// The chunk boundaries of `data`, in order, covering it exactly.
pub fn chunks(data: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    FastCDC::with_level_and_seed(
        data,
        CHUNK_MIN_SIZE,
        CHUNK_AVG_SIZE,
        CHUNK_MAX_SIZE,
        NORMALIZATION,
        GEAR_SEED,
    )
    .map(|chunk| chunk.offset..chunk.offset + chunk.length)
}

/// The chunks of a stream, as owned buffers, with the same boundaries as [`chunks`] would give
/// over the whole stream. Reads through a buffer of [`CHUNK_MAX_SIZE`] bytes.
pub fn stream_chunks<R: Read>(reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    StreamCDC::with_level_and_seed(
        reader,
        CHUNK_MIN_SIZE,
        CHUNK_AVG_SIZE,
        CHUNK_MAX_SIZE,
        NORMALIZATION,
        GEAR_SEED,
    )
    .map(|chunk| chunk.map(|chunk| chunk.data).map_err(std::io::Error::from))
}

/// Deterministic pseudo-random bytes (SplitMix64), for tests and benchmarks that must not
/// depend on the version of any random-number crate.
#[doc(hidden)]
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Pins format version 1's boundaries. If this fails after a dependency update, the chunker
    /// changed: revert the update, or introduce a new format version. Never edit the numbers.
    #[test]
    fn golden_boundaries_of_v1() {
        let data = pseudo_random_bytes(0x0F1E_E7D1_6000_0001, 8 * 1024 * 1024);
        let ends: Vec<usize> = chunks(&data).map(|range| range.end).collect();
        assert_eq!(ends, GOLDEN_ENDS, "chunk boundaries of format v1 changed");
    }

    const GOLDEN_ENDS: &[usize] = &[
        1_485_451, 2_996_857, 3_865_236, 4_991_968, 7_983_956, 8_388_608,
    ];

    #[test]
    fn chunks_cover_the_data_and_respect_sizes() {
        let data = pseudo_random_bytes(1, 20 * 1024 * 1024);
        let ranges: Vec<_> = chunks(&data).collect();
        let mut next = 0;
        for (index, range) in ranges.iter().enumerate() {
            assert_eq!(range.start, next);
            assert!(range.len() <= CHUNK_MAX_SIZE);
            if index + 1 < ranges.len() {
                assert!(range.len() >= CHUNK_MIN_SIZE);
            }
            next = range.end;
        }
        assert_eq!(next, data.len());
    }

    #[test]
    fn small_and_empty_inputs() {
        assert_eq!(chunks(&[]).count(), 0);
        let small = vec![5u8; CHUNK_MIN_SIZE];
        assert_eq!(chunks(&small).collect::<Vec<_>>(), vec![0..CHUNK_MIN_SIZE]);
        let one = [1u8];
        assert_eq!(chunks(&one).collect::<Vec<_>>(), vec![0..1]);
    }

    #[test]
    fn streaming_matches_slices() {
        let data = pseudo_random_bytes(2, 9 * 1024 * 1024 + 17);
        let from_slice: Vec<&[u8]> = chunks(&data).map(|range| &data[range]).collect();
        let streamed: Vec<Vec<u8>> = stream_chunks(&data[..]).map(Result::unwrap).collect();
        assert_eq!(from_slice.len(), streamed.len());
        for (a, b) in from_slice.iter().zip(&streamed) {
            assert_eq!(*a, b.as_slice());
        }
        assert_eq!(stream_chunks(&[][..]).count(), 0);
    }

    /// Inserting bytes at the front only moves the first boundaries: most chunks are shared.
    #[test]
    fn insertion_at_the_front_shifts_boundaries_only_locally() {
        let original = pseudo_random_bytes(3, 32 * 1024 * 1024);
        let mut shifted = b"a few new bytes at the very front".to_vec();
        shifted.extend_from_slice(&original);
        let contents = |data: &[u8]| -> HashSet<blake3::Hash> {
            chunks(data)
                .map(|range| blake3::hash(&data[range]))
                .collect()
        };
        let before = contents(&original);
        let after = contents(&shifted);
        let shared = before.intersection(&after).count();
        assert!(
            shared + 2 >= before.len(),
            "only {shared} of {} chunks shared after a front insertion",
            before.len()
        );
    }
}
