//! Upload throughput over loopback (ignored by default; run with
//! `cargo test -p fleetmig-storage-node --release --test integration throughput -- --ignored --nocapture`).

use std::time::Instant;

use crate::support::{TestNode, chunk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: writes 512 MiB"]
async fn throughput() {
    let node = TestNode::start().await;
    let streams = 4;
    let per_stream = 128;
    let chunks: Vec<Vec<_>> = (0..streams)
        .map(|s| {
            (0..per_stream)
                .map(|n| chunk(s * 1000 + n, 1 << 20))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let uploads = chunks.iter().enumerate().map(|(s, chunks)| {
        let node = &node;
        async move {
            let refs: Vec<_> = chunks.iter().collect();
            for batch in refs.chunks(64) {
                node.put(&format!("bench-{s}"), batch).await.expect("put");
            }
        }
    });
    futures::future::join_all(uploads).await;
    let elapsed = started.elapsed();
    let bytes = (streams * per_stream) as f64 * (1 << 20) as f64;
    eprintln!(
        "{streams} streams: {:.0} MiB in {:.2?}: {:.0} MiB/s",
        bytes / (1 << 20) as f64,
        elapsed,
        bytes / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    let more: Vec<_> = (0..256).map(|n| chunk(90_000 + n, 1 << 20)).collect();
    let more_refs: Vec<_> = more.iter().collect();
    let started = Instant::now();
    node.put("bench-single", &more_refs).await.expect("put");
    let elapsed = started.elapsed();
    eprintln!(
        "1 stream: 256 MiB in {:.2?}: {:.0} MiB/s",
        elapsed,
        256.0 / elapsed.as_secs_f64()
    );
    node.stop().await.expect("stop");
}
