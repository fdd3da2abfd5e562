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
//! (2000), SIZE (24576), FRAMES (300), COMPUTE_MS (20), REPS (3). Runs alternate between the
//! backends and figures are medians, but other load on the machine still shows: compare only
//! figures from one run.

#![allow(clippy::print_stdout, reason = "benchmarks and tests report on stdout")]

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
    (f64::from(rounds) * ms as f64 / start.elapsed().as_secs_f64() / 1000.0).max(1.0) as usize
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

/// User + system CPU seconds of a process so far, from `/proc/PID/stat` (100 ticks a second).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall seconds, this process's CPU seconds and the server's CPU seconds spent by `f`.
fn measure(server_pid: &str, f: impl FnOnce() -> f64) -> [f64; 3] {
    let (me0, srv0) = (cpu_secs("self"), cpu_secs(server_pid));
    let wall = f();
    [wall, cpu_secs("self") - me0, cpu_secs(server_pid) - srv0]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn medians(runs: &[[f64; 3]]) -> [f64; 3] {
    [0, 1, 2].map(|i| median(runs.iter().map(|r| r[i]).collect()))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let scale = |n: usize, smoke: usize| if full { n } else { smoke };
    let (objects, size) = (env("OBJECTS", scale(2000, 50)), env("SIZE", 24 * 1024));
    let (frames, compute_ms, reps) = (
        env("FRAMES", scale(300, 10)),
        env("COMPUTE_MS", 20),
        env("REPS", scale(3, 1)),
    );
    if !full {
        println!("(smoke run; `cargo bench --bench storage` for figures)");
    }
    let s3 = server::S3sServer::start();
    let pid = s3.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let local = storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let remote = s3.store("bench", "run");

    // Local and S3 runs alternate and each figure is the median of REPS runs, so load from other
    // processes hits both sides alike. CPU seconds (this process + the s3s-fs server) are less
    // sensitive to that load than wall time.
    println!(
        "# many small objects: {objects} x {size} B, median of {reps} (s3s-fs on 127.0.0.1, same cores)"
    );
    println!(
        "{:>9} {:>12} {:>10} {:>10} | {:>10} {:>10} {:>10} {:>10} | {:>9}",
        "in flight",
        "local obj/s",
        "client s",
        "",
        "s3 obj/s",
        "client s",
        "server s",
        "",
        "s3/local"
    );
    for in_flight in [1, 8, 32] {
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            l.push(measure(&pid, || {
                put_throughput(
                    &local,
                    &format!("t{in_flight}-{rep}"),
                    objects,
                    size,
                    in_flight,
                )
            }));
            r.push(measure(&pid, || {
                put_throughput(
                    &remote,
                    &format!("t{in_flight}-{rep}"),
                    objects,
                    size,
                    in_flight,
                )
            }));
        }
        let ([lw, lc, _], [rw, rc, rs]) = (medians(&l), medians(&r));
        println!(
            "{in_flight:>9} {:>12.0} {lc:>10.2} {:>10} | {:>10.0} {rc:>10.2} {rs:>10.2} {:>10} | {:>8.2}x",
            objects as f64 / lw,
            "",
            objects as f64 / rw,
            "",
            rw / lw
        );
    }

    let buf = vec![7u8; 64 * 1024];
    let rounds = calibrate(compute_ms, &buf);
    println!(
        "\n# frame loop: {frames} frames x ~{compute_ms} ms compute, {size} B each, 8 uploads in flight, median of {reps}"
    );
    let (mut none, mut l, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        none.push(measure(&pid, || run(None, "none", frames, size, rounds)));
        l.push(measure(&pid, || {
            run(Some(&local), &format!("loop-{rep}"), frames, size, rounds)
        }));
        r.push(measure(&pid, || {
            run(Some(&remote), &format!("loop-{rep}"), frames, size, rounds)
        }));
    }
    let (n, l, r) = (medians(&none), medians(&l), medians(&r));
    for (name, [wall, client, server]) in [("no store", n), ("local", l), ("s3", r)] {
        println!(
            "{name:>8}: wall {wall:6.2} s, cpu {client:6.2} s (this process) + {server:5.2} s (s3s-fs)"
        );
    }
    let cpu = |x: [f64; 3]| x[1] + x[2];
    println!(
        "s3 vs local: wall {:+.1}%, cpu {:+.1}% (local vs no store: wall {:+.1}%, cpu {:+.1}%)",
        (r[0] / l[0] - 1.0) * 100.0,
        (cpu(r) / cpu(l) - 1.0) * 100.0,
        (l[0] / n[0] - 1.0) * 100.0,
        (cpu(l) / cpu(n) - 1.0) * 100.0
    );
}
