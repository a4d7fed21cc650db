//! Packed capture throughput into a local directory store, on a generated machine, against
//! `tar -c | zstd -1 -T0` of the same profiles in the same run; then an unchanged re-capture
//! (metadata cache), a restore and a verify.
//!
//! `cargo run --release -p fleetmig-worker --example bench_packed_local -- \
//!     [files_total=30000] [users=3] [extra_text_mib=300] [keep_dir]`
//!
//! `extra_text_mib` adds compressible documents (mail archives, logs, 1–8 MiB each) to the
//! first user's profile on top of the generator's mix. With `keep_dir`, the machine is generated
//! once there and reused.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use fleetmig_format::{FleetKey, MigrationKey};
use fleetmig_state::{GenOptions, NoProgress};
use fleetmig_worker::packed::{self, DirStore, Keys};

#[path = "support/mod.rs"]
mod support;

use support::{add_text, du_bytes};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u32 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(30_000);
    let users: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let extra_mib: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(300);
    let keep: Option<PathBuf> = args.next().map(PathBuf::from);
    // `null`: only the pipeline into a null store, three times (for profiling).
    let only_null = args.next().as_deref() == Some("null");
    let temp = tempfile::tempdir()?;
    let base = keep.unwrap_or_else(|| temp.path().to_path_buf());
    let root = base.join("pc");
    if !root.exists() {
        let started = Instant::now();
        let opts = GenOptions {
            seed: 1,
            users,
            files_per_user: total / users,
            hostname: Some("BENCH-PC".into()),
        };
        let generated = fleetmig_state::generate_machine(&root, &opts)?;
        add_text(
            &root,
            &generated.users[0],
            extra_mib as u64 * 1024 * 1024,
            0,
        )?;
        println!(
            "generated {} files, {} MB (+{extra_mib} MiB of text) in {:.1}s",
            generated.files,
            generated.bytes / 1_000_000,
            started.elapsed().as_secs_f64()
        );
    }
    Command::new("sync").status()?;
    let run = std::process::id();

    // Baseline: tar | zstd -1 -T0 of the profiles (also warms the page cache for both).
    for round in 0..if only_null { 0 } else { 2 } {
        let out = base.join(format!("baseline-{run}.tar.zst"));
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -cf - 'Documents and Settings' | zstd -q -1 -T0 -o '{}'",
                root.display(),
                out.display()
            ))
            .stdout(Stdio::null())
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let input = du_bytes(&root.join("Documents and Settings"))?;
        println!(
            "tar | zstd -1 -T0 (round {round}): {:.2}s, {:.0} MB/s of {} MB -> {} MB ({status})",
            seconds,
            input as f64 / seconds / 1e6,
            input / 1_000_000,
            size / 1_000_000
        );
        std::fs::remove_file(&out)?;
    }

    let keys = Keys {
        fleet: FleetKey::from_bytes([7; 32]),
        migration: MigrationKey::from_bytes([8; 32]),
    };
    // Reader threads of the pipeline (`FLEETMIG_BENCH_READERS`, default: the pipeline's).
    let pipeline = match std::env::var("FLEETMIG_BENCH_READERS") {
        Ok(readers) => packed::PipelineConfig {
            readers: readers.parse()?,
            ..packed::PipelineConfig::default()
        },
        Err(_) => packed::PipelineConfig::default(),
    };
    // The pipeline alone: a store that lacks everything and discards what it gets.
    for _ in 0..if only_null { 2 } else { 0 } {
        let started = Instant::now();
        packed::capture(
            &root,
            &NullStore,
            &keys,
            &packed::CaptureOptions::default(),
            &NoProgress,
        )?;
        println!("null capture: {:.2}s", started.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let null = packed::capture(
        &root,
        &NullStore,
        &keys,
        &packed::CaptureOptions {
            capture: fleetmig_state::CaptureOptions::new("bench"),
            pipeline: pipeline.clone(),
            ..packed::CaptureOptions::default()
        },
        &NoProgress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "packed capture into a null store (read, chunk, hash, seal; no writes): {:.2}s = {:.0} MB/s",
        seconds,
        null.bytes as f64 / seconds / 1e6
    );
    if only_null {
        return Ok(());
    }
    let store_dir = base.join(format!("store-{run}"));
    let store = DirStore::create(&store_dir, "bench", "BENCH-PC", false)?;
    let options = packed::CaptureOptions {
        capture: fleetmig_state::CaptureOptions::new("bench"),
        cache: Some(base.join(format!("cache-{run}.bin"))),
        pipeline,
        ..packed::CaptureOptions::default()
    };
    let started = Instant::now();
    let first = packed::capture(&root, &store, &keys, &options, &NoProgress)?;
    let first_seconds = started.elapsed().as_secs_f64();
    println!(
        "packed capture: {} files, {} MB in {:.2}s = {:.0} MB/s; {} chunks, sealed {} MB ({:.0}%)",
        first.files,
        first.bytes / 1_000_000,
        first_seconds,
        first.bytes as f64 / first_seconds / 1e6,
        first.chunks,
        first.stats.sealed_bytes / 1_000_000,
        first.stats.sealed_bytes as f64 * 100.0 / first.bytes.max(1) as f64
    );

    let started = Instant::now();
    let second = packed::capture(&root, &store, &keys, &options, &NoProgress)?;
    let second_seconds = started.elapsed().as_secs_f64();
    println!(
        "unchanged re-capture: {:.3}s ({:.1}x faster), {} files from the cache, {} read, {} sealed",
        second_seconds,
        first_seconds / second_seconds,
        second.stats.cache_hits,
        second.stats.files_read,
        second.stats.chunks_sealed
    );

    let target = base.join(format!("win7-{run}"));
    std::fs::create_dir(&target)?;
    let (manifest, _) = packed::fetch_manifest(&store, &keys.migration)?;
    let started = Instant::now();
    let restored = packed::restore(
        &store,
        &target,
        &keys.fleet,
        &manifest,
        &packed::RestoreOptions::default(),
        &NoProgress,
    )?;
    let restore_seconds = started.elapsed().as_secs_f64();
    println!(
        "restore: {} files, {} MB in {:.2}s = {:.0} MB/s",
        restored.files_written,
        restored.bytes_written / 1_000_000,
        restore_seconds,
        restored.bytes_written as f64 / restore_seconds / 1e6
    );
    let started = Instant::now();
    let verified = packed::verify(&target, &manifest, &NoProgress)?;
    println!(
        "verify: {} files in {:.2}s, {} mismatches",
        verified.files_checked,
        started.elapsed().as_secs_f64(),
        verified.mismatches.len()
    );
    for dir in [&store_dir, &target] {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::remove_file(base.join(format!("cache-{run}.bin")))?;
    Ok(())
}

/// A store that holds nothing and discards every upload.
struct NullStore;

impl packed::ChunkStore for NullStore {
    fn location(&self) -> String {
        "null".to_owned()
    }
    fn missing(&self, ids: &[fleetmig_format::ChunkId]) -> fleetmig_worker::Result<Vec<u32>> {
        Ok((0..ids.len() as u32).collect())
    }
    fn upload(&self) -> fleetmig_worker::Result<Box<dyn packed::ChunkUpload + '_>> {
        Ok(Box::new(NullUpload))
    }
    fn commit(&self, _commit: &packed::Commit) -> fleetmig_worker::Result<()> {
        Ok(())
    }
    fn manifest(&self) -> fleetmig_worker::Result<bytes::Bytes> {
        Ok(bytes::Bytes::new())
    }
    fn fetch(
        &self,
        _ids: &[fleetmig_format::ChunkId],
        _sink: &mut dyn FnMut(
            fleetmig_format::ChunkId,
            bytes::Bytes,
        ) -> fleetmig_worker::Result<()>,
    ) -> fleetmig_worker::Result<()> {
        Ok(())
    }
    fn release(&self) -> fleetmig_worker::Result<()> {
        Ok(())
    }
}

struct NullUpload;

impl packed::ChunkUpload for NullUpload {
    fn put(&mut self, _chunk: packed::SealedChunk) -> fleetmig_worker::Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> fleetmig_worker::Result<packed::UploadStats> {
        Ok(packed::UploadStats::default())
    }
}
