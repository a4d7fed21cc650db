//! The replace path's benchmark: packed capture of a generated machine to a real
//! `fleetmig-storage-node` on loopback, against `tar -c | zstd -1 -T0` of the same profiles in
//! the same run; an unchanged re-capture (metadata cache) against the first; a restore against
//! `zstd -d | tar -x`. Encryption, dedup and the node's durable writes are all on.
//!
//! Run it through `scripts/bench-packed.sh`, which builds the release binaries:
//!
//! `bench_packed_node NODE_BINARY WORK_DIR [size_mib=2048] [files_total=30000]`
//!
//! WORK_DIR holds the machine, the baselines' archive, the node's data and the restored
//! profiles, all on one filesystem; the machine is generated once and reused when present.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetmig_auth::TokenSigner;
use fleetmig_format::{FleetKey, MigrationKey};
use fleetmig_proto::v1::{self, CapabilityRole, ReserveRequest};
use fleetmig_state::{GenOptions, NoProgress};
use fleetmig_worker::packed::{self, Keys, NodeStore};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error>;

#[path = "support/mod.rs"]
mod support;

use support::{PROFILES, add_text, du_bytes};

/// Seed of the benchmark's token signer (the node trusts its public key).
const SIGNER_SEED: [u8; 32] = [42; 32];

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_packed_node NODE_BINARY WORK_DIR [size_mib] [files_total]";
    let node_binary = PathBuf::from(args.next().ok_or(usage)?);
    let work = PathBuf::from(args.next().ok_or(usage)?);
    let size_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2048);
    let files_total: u32 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(30_000);
    std::fs::create_dir_all(&work)?;
    let root = work.join("pc");
    if !root.exists() {
        generate(&root, size_mib, files_total)?;
    }
    let data = du_bytes(&root.join(PROFILES))?;
    println!(
        "machine: {} MB in {} files",
        data / 1_000_000,
        count_files(&root.join(PROFILES))?
    );
    run_sync()?;

    // Baselines, best of two (the first also warms the page cache for everyone).
    let archive = work.join("baseline.tar.zst");
    let tar_zstd = best_of(2, || {
        shell(&format!(
            "tar -C '{}' -cf - '{PROFILES}' | zstd -q -1 -T0 -f -o '{}' && sync",
            root.display(),
            archive.display()
        ))
    })?;
    let zstd1_size = std::fs::metadata(&archive)?.len();
    let untar_dir = work.join("untar");
    let untar = best_of(2, || {
        let _ = std::fs::remove_dir_all(&untar_dir);
        std::fs::create_dir_all(&untar_dir)?;
        shell(&format!(
            "zstd -q -d -c '{}' | tar -C '{}' -xf - && sync",
            archive.display(),
            untar_dir.display()
        ))
    })?;
    // Kept until the end: ext4 allocates inodes slowly right after mass deletions, and the
    // captures below should not pay for the baseline's clean-up.
    shell(&format!(
        "tar -C '{}' -cf - '{PROFILES}' | zstd -q -3 -T0 -f -o '{}'",
        root.display(),
        archive.display()
    ))?;
    let zstd3_size = std::fs::metadata(&archive)?.len();
    std::fs::remove_file(&archive)?;
    println!(
        "baseline tar | zstd -1 -T0: {:.2}s = {:.0} MB/s, archive {:.3} x data (zstd -3: {:.3} x)",
        tar_zstd,
        mbps(data, tar_zstd),
        zstd1_size as f64 / data as f64,
        zstd3_size as f64 / data as f64
    );
    println!(
        "baseline zstd -d | tar -x: {:.2}s = {:.0} MB/s",
        untar,
        mbps(data, untar)
    );

    let node_dir = work.join("node");
    let _ = std::fs::remove_dir_all(&node_dir);
    std::fs::create_dir_all(&node_dir)?;
    let node = Node::start(&node_binary, &node_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bench = Bench {
        node: &node,
        handle: runtime.handle().clone(),
        signer: TokenSigner::from_seed(SIGNER_SEED),
        keys: Keys {
            fleet: FleetKey::from_bytes([7; 32]),
            migration: MigrationKey::from_bytes([8; 32]),
        },
        reserve_bytes: data,
    };
    let cache = work.join("metadata-cache.bin");
    let _ = std::fs::remove_file(&cache);

    let cpu = Cpu::now(&node);
    let (first, first_seconds) = bench.capture("bench-first", &root, &cache)?;
    let stored = du_bytes(&node_dir.join("chunks"))?;
    println!(
        "first capture to the node: {:.2}s = {:.0} MB/s, {} chunks, {} sealed; {}",
        first_seconds,
        mbps(first.bytes, first_seconds),
        first.chunks,
        first.stats.chunks_sealed,
        cpu.since(&node)
    );
    let (second, second_seconds) = bench.capture("bench-second", &root, &cache)?;
    println!(
        "unchanged re-capture (new migration): {:.3}s, {} files from the cache, {} read, {} chunks sealed",
        second_seconds,
        second.stats.cache_hits,
        second.stats.files_read,
        second.stats.chunks_sealed
    );

    let target = work.join("win7");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target)?;
    let cpu = Cpu::now(&node);
    let (restored, manifest, restore_seconds) = bench.restore("bench-first", &target)?;
    let restore_cpu = cpu.since(&node);
    let started = Instant::now();
    let verified = packed::verify(&target, &manifest, &NoProgress)?;
    println!(
        "restore from the node: {:.2}s = {:.0} MB/s, {} files; {restore_cpu}; verify {:.2}s, {} mismatches",
        restore_seconds,
        mbps(restored.bytes_written, restore_seconds),
        restored.files_written,
        started.elapsed().as_secs_f64(),
        verified.mismatches.len()
    );
    std::fs::remove_dir_all(&target)?;
    std::fs::remove_dir_all(&untar_dir)?;
    let _ = std::fs::remove_file(&cache);

    let capture_ratio = tar_zstd / first_seconds;
    let stored_ratio = stored as f64 / data as f64;
    let recapture_ratio = first_seconds / second_seconds;
    let restore_ratio = untar / restore_seconds;
    let restore_vs_capture = restore_seconds / first_seconds;
    println!();
    println!(
        "first capture vs tar|zstd -1:   {capture_ratio:.2}x  (goal >= 1.5)  {}",
        verdict(capture_ratio >= 1.5)
    );
    println!(
        "stored on the node:            {stored_ratio:.3} x data, {} MB  (goal <= 0.51; zstd -3 {:.3})  {}",
        stored / 1_000_000,
        zstd3_size as f64 / data as f64,
        verdict(stored_ratio <= 0.51)
    );
    println!(
        "unchanged re-capture:          {recapture_ratio:.1}x faster  (goal >= 5)  {}",
        verdict(recapture_ratio >= 5.0)
    );
    println!(
        "restore vs zstd -d|tar -x:     {restore_ratio:.2}x  (goal >= 1.0)  {}",
        verdict(restore_ratio >= 1.0)
    );
    println!(
        "restore time / capture time:   {restore_vs_capture:.2}  (goal <= 1.2)  {}",
        verdict(restore_vs_capture <= 1.2)
    );
    if !verified.mismatches.is_empty() {
        return Err("the restored profiles do not match the manifest".into());
    }
    Ok(())
}

/// The node, the token signer and the keys of one benchmark run.
struct Bench<'a> {
    node: &'a Node,
    handle: tokio::runtime::Handle,
    signer: TokenSigner,
    keys: Keys,
    reserve_bytes: u64,
}

impl Bench<'_> {
    fn token(&self, migration: &str, role: CapabilityRole) -> v1::SignedCapability {
        let now = now_ms();
        self.signer.sign(&v1::Capability {
            machine_id: "bench-pc".into(),
            migration_id: migration.into(),
            node_id: self.node.id.clone(),
            role: role as i32,
            issued_unix_ms: now,
            expires_unix_ms: now + 3_600_000,
            fence: 1,
        })
    }

    fn store(&self, migration: &str, role: CapabilityRole) -> Result<NodeStore, BoxError> {
        let client = packed::node_store::connect_lazy(&self.node.url, &self.handle)?;
        Ok(NodeStore::new(
            client,
            self.token(migration, role),
            &self.node.id,
            &self.node.url,
            migration,
            self.handle.clone(),
            CancellationToken::new(),
        ))
    }

    /// Reserves, captures (timed), and releases one migration.
    fn capture(
        &self,
        migration: &str,
        root: &Path,
        cache: &Path,
    ) -> Result<(packed::CaptureReport, f64), BoxError> {
        let mut client = packed::node_store::connect_lazy(&self.node.url, &self.handle)?;
        let request = ReserveRequest {
            token: Some(self.token(migration, CapabilityRole::Reserve)),
            bytes: self.reserve_bytes,
            lease_ms: 3_600_000,
        };
        self.handle.block_on(client.reserve(request))?;
        let store = self.store(migration, CapabilityRole::Capture)?;
        let options = packed::CaptureOptions {
            capture: fleetmig_state::CaptureOptions::new(migration),
            cache: Some(cache.to_path_buf()),
            ..packed::CaptureOptions::default()
        };
        let started = Instant::now();
        let report = packed::capture(root, &store, &self.keys, &options, &NoProgress)?;
        let seconds = started.elapsed().as_secs_f64();
        packed::ChunkStore::release(&store)?;
        Ok((report, seconds))
    }

    /// The opened manifest of a released migration.
    fn manifest(
        &self,
        migration: &str,
    ) -> Result<(NodeStore, fleetmig_format::PackedManifest), BoxError> {
        let store = self.store(migration, CapabilityRole::Restore)?;
        let (manifest, _) = packed::fetch_manifest(&store, &self.keys.migration)?;
        Ok((store, manifest))
    }

    /// Restores a released migration into `target` (timed: manifest fetch included, verify
    /// not).
    fn restore(
        &self,
        migration: &str,
        target: &Path,
    ) -> Result<(packed::RestoreReport, fleetmig_format::PackedManifest, f64), BoxError> {
        let started = Instant::now();
        let (store, manifest) = self.manifest(migration)?;
        let report = packed::restore(
            &store,
            target,
            &self.keys.fleet,
            &manifest,
            &packed::RestoreOptions::default(),
            &NoProgress,
        )?;
        run_sync()?;
        Ok((report, manifest, started.elapsed().as_secs_f64()))
    }
}

/// A `fleetmig-storage-node` process on loopback, killed on drop.
struct Node {
    child: Child,
    url: String,
    id: String,
}

impl Node {
    fn start(binary: &Path, dir: &Path) -> Result<Self, BoxError> {
        let signer = TokenSigner::from_seed(SIGNER_SEED);
        let key = dir.join("token.pub");
        std::fs::write(&key, hex::encode(signer.public_key()))?;
        let ready = dir.join("ready");
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--controller",
                "http://127.0.0.1:9",
            ])
            .arg("--data-dir")
            .arg(dir)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--token-public-key")
            .arg(&key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut node = Node {
            child,
            url: String::new(),
            id: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && text.ends_with('\n')
            {
                node.url = format!("http://{}", text.trim());
                break;
            }
            if Instant::now() > deadline {
                return Err("the storage node never became ready (see node.log)".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        node.id = std::fs::read_to_string(dir.join("node-id"))?
            .trim()
            .to_owned();
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generates the machine: the generator's profile mix, topped up to `size_mib` with a mix of
/// compressible documents (mail archives, logs) and incompressible media.
fn generate(root: &Path, size_mib: u64, files_total: u32) -> Result<(), BoxError> {
    let started = Instant::now();
    let opts = GenOptions {
        seed: 1,
        users: 3,
        files_per_user: files_total / 3,
        hostname: Some("BENCH-PC".into()),
    };
    let generated = fleetmig_state::generate_machine(root, &opts)?;
    let target = size_mib * 1024 * 1024;
    let missing = target.saturating_sub(generated.bytes);
    // Two thirds text, one third media; the run prints what zstd -3 achieves on the mix.
    let text = missing * 2 / 3;
    for (index, user) in generated.users.iter().enumerate() {
        let share = |total: u64| total / generated.users.len() as u64;
        add_text(root, user, share(text), index as u64)?;
        add_media(root, user, share(missing - text), index as u64)?;
    }
    println!(
        "generated {} files for {} users (+{} MiB of documents and media) in {:.1}s",
        generated.files,
        generated.users.len(),
        missing / 1024 / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Adds about `bytes` of incompressible photos (2–6 MiB each) to `user`'s pictures.
fn add_media(root: &Path, user: &str, bytes: u64, seed: u64) -> std::io::Result<()> {
    use rand::{RngCore, SeedableRng};
    let dir = root
        .join(PROFILES)
        .join(user)
        .join("My Documents/My Pictures/Camera");
    std::fs::create_dir_all(&dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut written = 0u64;
    let mut index = 0u64;
    while written < bytes {
        let size = (2 + (index as usize * 3) % 5) * 1024 * 1024;
        let mut photo = vec![0u8; size];
        rng.fill_bytes(&mut photo);
        std::fs::write(dir.join(format!("DSC{index:05}.JPG")), &photo)?;
        written += size as u64;
        index += 1;
    }
    Ok(())
}

/// CPU seconds used so far by this process and by the node.
struct Cpu {
    own: f64,
    node: f64,
}

impl Cpu {
    fn now(node: &Node) -> Self {
        Self {
            own: cpu_seconds("self"),
            node: cpu_seconds(&node.child.id().to_string()),
        }
    }

    /// "cpu: worker Xs, node Ys" since `self`.
    fn since(&self, node: &Node) -> String {
        let now = Cpu::now(node);
        format!(
            "cpu: worker {:.1}s, node {:.1}s",
            now.own - self.own,
            now.node - self.node
        )
    }
}

/// utime + stime of a process from /proc (0 where unavailable).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// The best wall time of `rounds` runs of `run`.
fn best_of(rounds: usize, mut run: impl FnMut() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        run()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn shell(script: &str) -> Result<(), BoxError> {
    let status = Command::new("sh").arg("-c").arg(script).status()?;
    if !status.success() {
        return Err(format!("`{script}` failed: {status}").into());
    }
    Ok(())
}

fn run_sync() -> Result<(), BoxError> {
    shell("sync")
}

fn mbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e6
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn count_files(path: &Path) -> std::io::Result<u64> {
    let mut count = 0;
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        if entry.map_err(std::io::Error::other)?.file_type().is_file() {
            count += 1;
        }
    }
    Ok(count)
}
