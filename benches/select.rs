//! Benchmark of the consent gate at production scale (not a timed test): generates a catalog of
//! 1,000,000 clips and a ledger of 2,000,000 events, then runs the whole `select` stage on them
//! (read, hash, parse, check, index, decide, write) and reports wall time and peak memory.
//!
//! `cargo bench --bench select` (sizes: CLIPS=… EVENTS=… env vars; default 1e6 / 2e6).

#![allow(clippy::print_stdout, reason = "benchmarks and tests report on stdout")]

use std::io::{BufWriter, Write};
use std::time::Instant;

/// A small deterministic generator (SplitMix64), so every run selects the same data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn instant(day: u64, sec: u64) -> String {
    let ts = jiff::Timestamp::from_second(1_735_689_600 + (day * 86_400 + sec) as i64).unwrap();
    ts.to_string()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> std::io::Result<()> {
    // `cargo bench` passes --bench: full size. `cargo test --all-targets` runs a small smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let (c, e) = if full {
        (1_000_000, 2_000_000)
    } else {
        (10_000, 20_000)
    };
    let clips: u64 = std::env::var("CLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(c);
    let events: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(e);
    let owners = (clips / 5).max(1);
    let dir = tempfile::tempdir()?;
    let (catalog, ledger) = (
        dir.path().join("catalog.jsonl"),
        dir.path().join("ledger.jsonl"),
    );
    let t0 = Instant::now();
    let mut rng = Rng(42);
    let mut w = BufWriter::new(std::fs::File::create(&catalog)?);
    for i in 0..clips {
        let owner = i % owners;
        let placement = if rng.below(5) == 0 {
            "indoor"
        } else {
            "outdoor"
        };
        writeln!(
            w,
            r#"{{"video_id":"v-{i:07}","uri":"videos/{owner}/v-{i:07}.mp4","owner_id":"acct-{owner}","device_id":"dev-{owner}-{}","placement":"{placement}","captured_at":"{}"}}"#,
            rng.below(3),
            instant(200 + rng.below(300), rng.below(86_400))
        )?;
    }
    w.flush()?;
    let mut w = BufWriter::new(std::fs::File::create(&ledger)?);
    let mut last_grant: Vec<Option<u64>> = vec![None; owners as usize];
    let doc = "c".repeat(64);
    for e in 0..events {
        let owner = rng.below(owners);
        let at = instant(rng.below(680), rng.below(86_400));
        match rng.below(100) {
            0..=34 => {
                last_grant[owner as usize] = Some(e);
                let devices = if rng.below(2) == 0 {
                    r#""*""#.to_string()
                } else {
                    format!(r#""dev-{owner}-{}""#, rng.below(3))
                };
                writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"consent.granted","owner_id":"acct-{owner}","at":"{at}","scope":["ml_training"],"devices":[{devices}],"placements":["outdoor","indoor"],"captured_from":"{}","expires_at":"{}","document":{{"uri":"consent-docs/acct-{owner}/e-{e}.pdf","blake3":"{doc}"}}}}"#,
                    instant(100, 0),
                    instant(500 + rng.below(400), 0)
                )?;
            }
            35..=44 => match last_grant[owner as usize].filter(|_| rng.below(2) == 0) {
                Some(g) => writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"consent.revoked","owner_id":"acct-{owner}","at":"{at}","grant_id":"e-{g}"}}"#
                )?,
                None => writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"consent.revoked","owner_id":"acct-{owner}","at":"{at}"}}"#
                )?,
            },
            45..=74 => {
                let video = owner + owners * rng.below(5);
                let vis = if rng.below(4) == 0 {
                    "neighbors"
                } else {
                    "public"
                };
                writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"neighbors.shared","owner_id":"acct-{owner}","video_id":"v-{video:07}","at":"{at}","visibility":"{vis}"}}"#
                )?;
            }
            75..=89 => {
                let video = owner + owners * rng.below(5);
                writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"neighbors.unshared","owner_id":"acct-{owner}","video_id":"v-{video:07}","at":"{at}"}}"#
                )?;
            }
            90..=98 => {
                let video = owner + owners * rng.below(5);
                writeln!(
                    w,
                    r#"{{"event_id":"e-{e}","type":"video.deleted","owner_id":"acct-{owner}","video_id":"v-{video:07}","at":"{at}"}}"#
                )?;
            }
            _ => writeln!(
                w,
                r#"{{"event_id":"e-{e}","type":"account.deleted","owner_id":"acct-{owner}","at":"{at}"}}"#
            )?,
        }
    }
    w.flush()?;
    drop(last_grant);
    let sizes = (
        std::fs::metadata(&catalog)?.len(),
        std::fs::metadata(&ledger)?.len(),
    );
    eprintln!(
        "generated {clips} clips ({:.0} MiB) and {events} events ({:.0} MiB) in {:.1} s; peak RSS before select {:.0} MiB",
        sizes.0 as f64 / 1048576.0,
        sizes.1 as f64 / 1048576.0,
        t0.elapsed().as_secs_f64(),
        peak_rss_mib()
    );

    let as_of: jiff::Timestamp = instant(600, 0).parse().unwrap();
    let out = dir.path().join("out");
    let t1 = Instant::now();
    let outcome =
        clearframe::select::run_select(&catalog, &ledger, as_of, &out, 0).expect("select succeeds");
    let wall = t1.elapsed().as_secs_f64();
    println!(
        "select: {clips} clips x {events} events in {wall:.2} s wall, peak RSS {:.0} MiB, {} included, excluded by reason {:?}",
        peak_rss_mib(),
        outcome.record.included,
        outcome.record.excluded_by_reason
    );

    // Where the time goes, phase by phase (in memory, no output written).
    let t = Instant::now();
    let ledger_bytes = std::fs::read(&ledger)?;
    let catalog_bytes = std::fs::read(&catalog)?;
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let parsed = clearframe::consent::Ledger::parse(&ledger_bytes, "ledger").unwrap();
    let parse_ledger = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let index = parsed.index(as_of);
    let build_index = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let clips_parsed = clearframe::select::ParsedCatalog::parse(&catalog_bytes);
    let parse_catalog = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let lines = clips_parsed.decide(0..clips_parsed.len(), &index);
    let decide = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bytes = clearframe::select::to_jsonl(&lines);
    let serialize = t.elapsed().as_secs_f64();
    println!(
        "phases: read {read:.2} s, parse ledger {parse_ledger:.2} s, index {build_index:.2} s, parse catalog {parse_catalog:.2} s, decide {decide:.2} s, serialize {serialize:.2} s ({} MiB)",
        bytes.len() >> 20
    );
    Ok(())
}
