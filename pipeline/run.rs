//! `clearframe run`: the whole pipeline in one streaming process — select, decode, redact,
//! detect, emit.
//!
//! The consent gate runs first and decides every catalog line; only its includes, as
//! [`ConsentedClip`]s, are decoded. Per clip a decoding thread (ffmpeg as a child process) feeds
//! face detection on a second thread; the main thread holds faces over short gaps, redacts,
//! lets the independent verifier withhold any frame with an uncovered face, runs object detection
//! on the redacted pixels and hands JPEGs to the emitter. Unredacted frames exist only in memory,
//! in bounded channels. One bad clip is recorded and the batch goes on; the exit status says so.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;

use crate::config::Config;
use crate::consent::{ConsentedClip, readmit_selection};
use crate::emit::clip::ClipInfo;
use crate::emit::clip::frame_entry;
use crate::emit::dest::Destination;
use crate::emit::output::DatasetWriter;
use crate::emit::{
    ClipFailure, DatasetInputs, DatasetRecord, FrameJpeg, ManifestEntry, encode_jpeg,
};
use crate::engine::{ClipError, Ctx, Models, StageTimes, process_clip};
use crate::media::ffmpeg_version;
use crate::staging::Staging;
use crate::storage::ObjectRef;
use crate::storage::{self, Location, Sources, Store, StoreArgs};
use crate::summary::{print_dataset_summary, progress_bar};

/// Arguments of `clearframe run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Catalog of clips (JSON Lines): a path, file:///path or s3://bucket/key. Relative clip URIs
    /// are resolved against its folder or prefix; `s3://bucket/key` clip URIs are read from S3.
    #[arg(long, value_name = "URL")]
    pub catalog: String,
    /// Consent ledger (JSON Lines): a path, file:///path or s3://bucket/key. Any invalid line
    /// stops the run before anything is decoded.
    #[arg(long, value_name = "URL")]
    pub ledger: String,
    /// Snapshot instant (RFC 3339 with an offset). Default: now.
    #[arg(long, value_parser = crate::stages::select::parse_timestamp)]
    pub as_of: Option<Timestamp>,
    /// Where the dataset goes: a folder, file:///path or s3://bucket/prefix (created; an earlier
    /// dataset ClearFrame wrote there is replaced; a folder or prefix holding anything else is
    /// refused).
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Where clips may be read from besides the catalog's own folder or S3 prefix
    /// (comma-separated URLs, e.g. s3://clips/2026/); a clip elsewhere is excluded with
    /// `source_not_allowed`.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Sample N frames per second of clip time: the frame on screen at 0, 1/N, 2/N ... s
    /// (overrides `sampling.fps` in the config).
    #[arg(long)]
    pub fps: Option<f32>,
    /// Configuration file (TOML). Every key is optional; unknown keys are an error.
    /// See the README's "Configuration" section.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub record: DatasetRecord,
    pub failed_clips: usize,
    pub frames: u64,
    pub wall: Duration,
    pub times: StageTimes,
}

/// Runs the whole pipeline. A bad ledger or config stops before anything is written; a bad clip
/// is recorded in `dataset.json` and the others go on.
pub fn run(args: &RunArgs, progress: bool) -> anyhow::Result<RunOutcome> {
    let started = Instant::now();
    let config = Config::effective(args.config.as_deref(), args.fps)?;
    let as_of = args.as_of.unwrap_or_else(Timestamp::now);

    let s3 = args.store.to_options()?;
    let catalog = ObjectRef::open(&args.catalog, &s3)?;
    let ledger = ObjectRef::open(&args.ledger, &s3)?;
    let out = storage::open(&args.out, &s3)?;
    let sources = Sources::new(catalog.store.location(), &args.sources)?;

    // 1. select, into a private scratch folder: the dataset keeps its own copy of the selection.
    let t = Instant::now();
    let scratch = Staging::create("scratch").context("cannot create a scratch folder")?;
    let scratch_store: Arc<dyn Store> =
        Arc::new(storage::LocalStore::new(scratch.path().to_path_buf()));
    let selected = crate::stages::select::run_select_store(
        &catalog,
        &ledger,
        as_of,
        &scratch_store,
        0,
        &sources,
    )?;
    let selection_jsonl = std::fs::read(scratch.path().join("selection.jsonl"))?;
    drop(scratch);
    let included: Vec<ConsentedClip> = readmit_selection(
        &selection_jsonl,
        &selected.record.selection.blake3,
        selected.record.included,
    )
    .context("the selection just made cannot be re-admitted (a bug)")?;
    let select_time = t.elapsed();

    // 2. The destination, before anything is computed or deleted: refused if it holds anything
    // ClearFrame did not write, and (S3) a probe write must be accepted.
    let dest = Destination::inspect(Arc::clone(&out))?;
    let models = Models::load(&config)?;
    let inputs = DatasetInputs {
        catalog_blake3: selected.record.catalog.blake3.clone(),
        ledger_blake3: selected.record.ledger.blake3.clone(),
        as_of: as_of.to_string(),
        selection_jsonl,
    };
    // A local dataset is written in place. One for S3 is emitted into a private temporary folder
    // (redacted outputs only) and uploaded from there: frames as they are emitted, overlapping
    // the compute, then the other files, and `dataset.json` last.
    let clips: BTreeSet<String> = included.iter().map(|c| c.clip().video_id.clone()).collect();
    let mut dataset = DatasetWriter::start(dest, &clips, inputs)?;
    let mut ctx = Ctx {
        models: &models,
        config_blake3: config.blake3(),
        config: &config,
        ffmpeg: ffmpeg_version(),
        catalog_store: Arc::clone(&catalog.store),
        sources,
        s3: s3.clone(),
        times: StageTimes::default(),
    };
    ctx.times.select = select_time;

    let bar = progress_bar(included.len() as u64, "clips", progress);
    let (mut failed, mut frames) = (0usize, 0u64);
    // Object detection, JPEG encoding and the manifest entry on the pipeline's third thread.
    let work = |video_id: &str,
                info: &ClipInfo,
                red: &crate::redact::RedactedFrame,
                masks: u32,
                found: u32|
     -> anyhow::Result<(ManifestEntry, FrameJpeg, Duration, Duration)> {
        let t = Instant::now();
        let detections = crate::stages::detect::detect_frame(&models.objects, red)?;
        let detect_time = t.elapsed();
        let t = Instant::now();
        let jpeg = encode_jpeg(red)?;
        let entry = frame_entry(
            video_id,
            info,
            red.index(),
            red.pts(),
            masks,
            found,
            detections,
        );
        Ok((entry, jpeg, detect_time, t.elapsed()))
    };
    for clip in &included {
        if dataset.failed() {
            break; // the first refused upload stops the run
        }
        let id = clip.clip().video_id.clone();
        bar.set_message(id.clone());
        let _span = tracing::info_span!("clip", video_id = %id).entered();
        let mut consume = |times: &mut StageTimes,
                           (entry, jpeg, detect_time, encode_time): (
            ManifestEntry,
            FrameJpeg,
            Duration,
            Duration,
        )|
         -> anyhow::Result<()> {
            let t = Instant::now();
            dataset.add_frame(entry, jpeg)?;
            times.object_detect += detect_time;
            times.emit += encode_time + t.elapsed();
            Ok(())
        };
        let r = process_clip(&mut ctx, clip, &work, &mut consume);
        frames += r.frames;
        for w in r.withheld {
            dataset.withhold(w);
        }
        match r.outcome {
            Ok(()) => tracing::info!(frames = r.frames, "clip done"),
            Err(e) => {
                if let ClipError::Policy(reason) = &e {
                    tracing::info!(%reason, "clip left out by policy");
                } else {
                    failed += 1;
                    tracing::error!(
                        code = e.code().as_str(),
                        reason = e.reason(),
                        "clip failed; the batch goes on"
                    );
                }
                dataset.clip_failed(ClipFailure {
                    video_id: id,
                    code: e.code(),
                    reason: e.reason().to_owned(),
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let t = Instant::now();
    let record = dataset.finish()?;
    ctx.times.emit += t.elapsed();
    Ok(RunOutcome {
        record,
        failed_clips: failed,
        frames,
        wall: started.elapsed(),
        times: ctx.times,
    })
}

/// Runs `clearframe run`: exit 0 when every included clip went through, 1 when some failed
/// (they are listed in `dataset.json`), 2 when the run could not start.
pub fn run_cli(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let progress = std::io::stderr().is_terminal();
    let o = run(args, progress)?;
    let out = Location::parse(&args.out)?;
    print_dataset_summary(&o.record, &out, o.failed_clips);
    let secs = o.wall.as_secs_f64();
    println!(
        "  {:.1} s, {:.1} frames/s end to end",
        secs,
        o.frames as f64 / secs.max(1e-9)
    );
    let t = &o.times;
    let stages = [
        ("select", t.select),
        ("decode (wait)", t.decode_wait),
        ("face detect", t.face_detect),
        ("redact", t.redact),
        ("verify", t.verify),
        ("object detect", t.object_detect),
        ("emit", t.emit),
    ];
    let total: f64 = stages
        .iter()
        .map(|(_, d)| d.as_secs_f64())
        .sum::<f64>()
        .max(1e-9);
    let shares: Vec<String> = stages
        .iter()
        .map(|(n, d)| format!("{n} {:.0}%", 100.0 * d.as_secs_f64() / total))
        .collect();
    println!(
        "  stage time shares (face detection overlaps the rest): {}",
        shares.join(", ")
    );
    println!("report: {}", out.join("report.html"));
    Ok(if o.failed_clips > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
