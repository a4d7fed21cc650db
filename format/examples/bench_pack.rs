//! Packing throughput: chunk + id + zstd + seal over a generated buffer (half compressible
//! text, half random), single-threaded and with rayon. Run with
//! `cargo run --release -p fleetmig-format --example bench_pack [MiB]`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use fleetmig_format::chunker::pseudo_random_bytes;
use fleetmig_format::{FleetKey, SealedChunk, chunks, seal_chunk};
use rayon::prelude::*;

fn generated_buffer(mib: usize) -> Vec<u8> {
    let half = mib * 1024 * 1024 / 2;
    let line = b"2009-11-02 08:15:31 INFO user=alice action=open file=Quarterly Report.doc\n";
    let mut data = Vec::with_capacity(half * 2);
    let noise = pseudo_random_bytes(7, half);
    // Interleave 1 MiB of text and 1 MiB of noise so both kinds of chunk occur throughout.
    for (index, block) in noise.chunks(1024 * 1024).enumerate() {
        let mut text = Vec::with_capacity(block.len());
        while text.len() < block.len() {
            text.extend_from_slice(line);
            text.extend_from_slice(format!("{index} {}\n", text.len()).as_bytes());
        }
        text.truncate(block.len());
        data.extend_from_slice(&text);
        data.extend_from_slice(block);
    }
    data
}

fn report(label: &str, bytes: usize, seconds: f64, sealed: &[SealedChunk]) {
    let stored: usize = sealed.iter().map(|chunk| chunk.bytes.len()).sum();
    let compressed = sealed.iter().filter(|chunk| chunk.is_compressed()).count();
    println!(
        "{label:<24} {:>8.1} MB/s  ({} chunks, {compressed} compressed, stored {:.1}% of input)",
        bytes as f64 / seconds / 1e6,
        sealed.len(),
        stored as f64 * 100.0 / bytes as f64
    );
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(256);
    let data = generated_buffer(mib);
    let fleet = FleetKey::from_bytes([1; 32]);
    println!(
        "packing {} MiB (half text, half random)",
        data.len() / (1024 * 1024)
    );

    let start = Instant::now();
    let ranges: Vec<_> = chunks(&data).collect();
    let chunk_seconds = start.elapsed().as_secs_f64();
    println!(
        "{:<24} {:>8.1} MB/s",
        "chunking only",
        data.len() as f64 / chunk_seconds / 1e6
    );

    let start = Instant::now();
    let sealed: Vec<SealedChunk> = chunks(&data)
        .map(|range| seal_chunk(&fleet, &data[range]))
        .collect();
    report(
        "pack, 1 thread",
        data.len(),
        start.elapsed().as_secs_f64(),
        &sealed,
    );

    {
        let threads = 2;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool");
        let start = Instant::now();
        let sealed: Vec<SealedChunk> = pool.install(|| {
            ranges
                .par_iter()
                .map(|range| seal_chunk(&fleet, &data[range.clone()]))
                .collect()
        });
        // Chunking is sequential; count it in so the figure is end to end.
        let seconds = start.elapsed().as_secs_f64() + chunk_seconds;
        report(
            &format!("pack, rayon {threads} threads"),
            data.len(),
            seconds,
            &sealed,
        );
    }
}
