//! Benchmark of the store's cost for many small objects (frames), local folder vs S3 on a local
//! S3-compatible server (`s3s-fs` on loopback, started here as in the tests; run
//! `scripts/install-s3s.sh` first). Not a timed test: it prints figures.
//!
//! 1. Raw put throughput: OBJECTS objects of SIZE bytes through an `Uploader` with 1, 8 and 32
//!    uploads in flight, local vs S3.
//! 2. Overlap with compute: FRAMES frames that each cost COMPUTE_MS of CPU (blake3 over a buffer,
//!    standing in for inference), each frame handed to an `Uploader` (8 in flight) as it is made;
//!    wall time with no store, local and S3. The ratio is what S3 adds to a run.
//!
//! `cargo bench --bench storage` (or `--profile dev` to reuse the test build). Env: OBJECTS
//! (2000), SIZE (24576), FRAMES (300), COMPUTE_MS (20).

#[path = "../tests/storage/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clearframe::storage::{self, S3Options, Store, Uploader};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frame(i: usize, size: usize) -> Bytes {
    let mut data = vec![0u8; size];
    for (j, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
    }
    Bytes::from(data)
}

/// Puts `count` objects under a fresh prefix with `in_flight` uploads; returns the seconds.
fn put_throughput(
    store: &Arc<dyn Store>,
    prefix: &str,
    count: usize,
    size: usize,
    in_flight: usize,
) -> f64 {
    let frames: Vec<Bytes> = (0..count).map(|i| frame(i, size)).collect();
    let start = Instant::now();
    let uploader = Uploader::new(Arc::clone(store), in_flight);
    for (i, data) in frames.into_iter().enumerate() {
        uploader.submit(format!("{prefix}/{i:06}.jpg"), data);
    }
    let stats = uploader.finish().expect("uploads");
    assert_eq!(stats.objects as usize, count);
    start.elapsed().as_secs_f64()
}

/// Busy work of about `ms` milliseconds (calibrated blake3 rounds).
fn compute(rounds: usize, buf: &[u8]) -> blake3::Hash {
    let mut h = blake3::hash(buf);
    for _ in 1..rounds {
        h = blake3::hash(&[h.as_bytes().as_slice(), buf].concat());
    }
    h
}

fn calibrate(ms: usize, buf: &[u8]) -> usize {
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_millis(300) {
        std::hint::black_box(compute(10, buf));
        rounds += 10;
    }
    (rounds as f64 * ms as f64 / start.elapsed().as_secs_f64() / 1000.0).max(1.0) as usize
}

/// A frame loop with uploads overlapping compute; returns the seconds.
fn run(
    store: Option<&Arc<dyn Store>>,
    prefix: &str,
    frames: usize,
    size: usize,
    rounds: usize,
) -> f64 {
    let buf = vec![7u8; 64 * 1024];
    let start = Instant::now();
    let uploader = store.map(|s| Uploader::new(Arc::clone(s), 8));
    for i in 0..frames {
        std::hint::black_box(compute(rounds, &buf));
        let data = frame(i, size);
        if let Some(u) = &uploader {
            u.submit(format!("{prefix}/{i:06}.jpg"), data);
        }
    }
    if let Some(u) = uploader {
        u.finish().expect("uploads");
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let (objects, size) = (env("OBJECTS", 2000), env("SIZE", 24 * 1024));
    let (frames, compute_ms) = (env("FRAMES", 300), env("COMPUTE_MS", 20));
    let s3 = server::S3sServer::start();
    let dir = tempfile::tempdir().unwrap();
    let local = storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let remote = s3.store("bench", "run");

    println!("# many small objects: {objects} x {size} B (s3s-fs on 127.0.0.1, same 2 cores)");
    println!(
        "{:>9} {:>14} {:>14} {:>10}",
        "in flight", "local obj/s", "s3 obj/s", "s3/local"
    );
    for in_flight in [1, 8, 32] {
        let l = put_throughput(&local, &format!("t{in_flight}"), objects, size, in_flight);
        let r = put_throughput(&remote, &format!("t{in_flight}"), objects, size, in_flight);
        println!(
            "{in_flight:>9} {:>14.0} {:>14.0} {:>9.1}x",
            objects as f64 / l,
            objects as f64 / r,
            r / l
        );
    }

    let buf = vec![7u8; 64 * 1024];
    let rounds = calibrate(compute_ms, &buf);
    println!(
        "\n# frame loop: {frames} frames x {compute_ms} ms compute, {size} B each, 8 uploads in flight"
    );
    let none = run(None, "none", frames, size, rounds);
    let l = run(Some(&local), "loop", frames, size, rounds);
    let r = run(Some(&remote), "loop", frames, size, rounds);
    println!("no store {none:.2} s | local {l:.2} s | s3 {r:.2} s");
    println!(
        "s3 vs local: {:+.1}% wall time (local vs no store: {:+.1}%)",
        (r / l - 1.0) * 100.0,
        (l / none - 1.0) * 100.0
    );
}
