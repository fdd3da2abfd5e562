//! What the commands print: progress bars on a terminal and the dataset summary.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use crate::emit::DatasetRecord;
use crate::storage::Location;

/// A progress bar on stderr when `enabled` (a terminal), else a hidden one.
pub(crate) fn progress_bar(len: u64, unit: &str, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed}}]"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// `n` and `noun`, plural unless `n` is 1.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Prints what a dataset holds and what it left out (`run` and `emit`).
pub(crate) fn print_dataset_summary(r: &DatasetRecord, out: &Location, failed_clips: usize) {
    println!(
        "dataset {} at {}: {}, {}, {} withheld by the verifier, {} failed",
        &r.merkle_root,
        out,
        count(r.frames, "frame"),
        count(r.counts.clips.len() as u64, "clip"),
        r.withheld.len(),
        count(failed_clips as u64, "clip"),
    );
    println!(
        "  version {}: annotations, manifest and report in {}",
        r.version,
        out.join(&r.path(""))
    );
    for (decision, n) in &r.counts.decisions {
        println!("  {decision:<8} {}", count(*n, "clip"));
    }
    for f in &r.failed_clips {
        println!(
            "  not in dataset: {} ({} {}: {})",
            f.video_id,
            f.code.class().as_str(),
            f.code.as_str(),
            f.reason
        );
    }
}
