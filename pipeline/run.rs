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
    /// refused). Not with --shard: a shard writes no dataset.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "shard",
        conflicts_with = "shard"
    )]
    pub out: Option<String>,
    /// Keep every clip's results in this work folder (the layout of `select`, `redact` and
    /// `detect`) and reuse each clip whose bytes, settings, models and versions are unchanged: a
    /// nightly rebuild redoes only what changed, drops clips that lost their consent basis from
    /// the folder, and gives the same dataset bytes as a run without it.
    #[arg(long, value_name = "URL")]
    pub work: Option<String>,
    /// With --work: process only shard I of N (clips by a stable hash of their video id) into the
    /// work folder and write no dataset; `env/N` takes I from JOB_COMPLETION_INDEX (Kubernetes
    /// Indexed Job) or AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job). Needs --as-of, so that
    /// every shard selects the same clips. Then `clearframe emit --work W --out D`.
    #[arg(long, value_name = "I/N", requires = "work", requires = "as_of", value_parser = crate::stages::Shard::parse)]
    pub shard: Option<crate::stages::Shard>,
    /// With --work: hash every clip to decide whether it changed, even when the catalog gives its
    /// blake3.
    #[arg(long, requires = "work")]
    pub rehash: bool,
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
    let out_url = args
        .out
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--out is required without --shard"))?;
    let out = storage::open(out_url, &s3)?;
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
    let ledger_bytes = ledger
        .get()
        .with_context(|| format!("cannot read consent ledger {}", ledger.url))?;
    anyhow::ensure!(
        crate::hashing::hash_bytes(&ledger_bytes) == inputs.ledger_blake3,
        "the consent ledger {} changed while the run read it; nothing was written",
        ledger.url
    );
    let removal =
        crate::stages::removal_reasons(dest.previous(), &clips, &ledger_bytes, &ledger.url, as_of)?;
    drop(ledger_bytes);
    let mut dataset = DatasetWriter::start(dest, &clips, inputs, removal)?;
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
        // A frame the dataset cannot store (a full disk, a read-only folder, a refused upload) is
        // the output's failure, not the clip's: it stops the run; the earlier version stays
        // whole.
        let mut output_failed: Option<String> = None;
        let mut consume = |times: &mut StageTimes,
                           (entry, jpeg, detect_time, encode_time): (
            ManifestEntry,
            FrameJpeg,
            Duration,
            Duration,
        )|
         -> anyhow::Result<()> {
            let t = Instant::now();
            if let Err(e) = dataset.add_frame(entry, jpeg) {
                // A frame the emitter refuses as input (given twice, not selected) is the clip's
                // failure; anything else is the output's.
                if !matches!(
                    e.downcast_ref::<crate::emit::EmitError>(),
                    Some(crate::emit::EmitError::Input { .. })
                ) {
                    output_failed = Some(storage::error_chain(&e));
                }
                return Err(e);
            }
            times.object_detect += detect_time;
            times.emit += encode_time + t.elapsed();
            Ok(())
        };
        let r = process_clip(&mut ctx, clip, &work, &mut consume);
        if let Some(e) = output_failed {
            // A refused upload's own error says more than the channel that stopped.
            let cause = match dataset.failed().then(|| dataset.finish()) {
                Some(Err(upload)) => storage::error_chain(&upload),
                _ => e,
            };
            anyhow::bail!(
                "{cause}\nnothing was replaced: the dataset's earlier version, if any, is whole, and the next run finishes or clears what this one wrote"
            );
        }
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
    if let Some(work) = &args.work {
        return run_in_work_cli(args, work, progress);
    }
    let o = run(args, progress)?;
    let out = Location::parse(args.out.as_deref().unwrap_or_default())?;
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
    println!(
        "report: {}",
        out.join(&o.record.path(crate::emit::paths::REPORT))
    );
    Ok(if o.failed_clips > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `run --work` did: each stage's outcome, and the dataset unless it ran one shard.
#[derive(Debug)]
pub struct WorkOutcome {
    pub redact: crate::stages::redact::RedactOutcome,
    pub detect: crate::stages::detect::DetectOutcome,
    pub emit: Option<crate::stages::emit::EmitOutcome>,
    pub wall: Duration,
}

/// `run --work W`: the stages in sequence over `W` (select, redact, detect, then emit unless
/// `--shard`), each reusing what is up to date. The stages give the same dataset bytes as `run`
/// without a work folder; models are loaded only when a clip must be redone.
pub fn run_in_work(args: &RunArgs, work: &str, progress: bool) -> anyhow::Result<WorkOutcome> {
    let started = Instant::now();
    let as_of = args.as_of.unwrap_or_else(Timestamp::now);
    let s3 = args.store.to_options()?;
    // The settings are checked before anything is written.
    Config::effective(args.config.as_deref(), args.fps)?;
    let catalog = ObjectRef::open(&args.catalog, &s3)?;
    let ledger = ObjectRef::open(&args.ledger, &s3)?;
    let sources = Sources::new(catalog.store.location(), &args.sources)?;
    let work_store = storage::open(work, &s3)?;
    if let Some(out) = &args.out {
        let out = Location::parse(out)?;
        anyhow::ensure!(
            !work_store.location().overlaps(&out),
            "--out {out} and --work {} overlap (one is, or lies inside, the other): the dataset goes outside the work folder",
            work_store.location()
        );
    }
    crate::stages::select::run_select_store(&catalog, &ledger, as_of, &work_store, 0, &sources)?;
    let redact = crate::stages::redact::redact(
        &crate::stages::redact::RedactArgs {
            work: work.to_owned(),
            catalog: Some(args.catalog.clone()),
            fps: args.fps,
            config: args.config.clone(),
            force: false,
            rehash: args.rehash,
            sources: args.sources.clone(),
            store: args.store.clone(),
            shard: args.shard,
        },
        progress,
    )?;
    // `detect` runs the settings `redact` recorded (the same file, with --fps applied).
    let detect = crate::stages::detect::detect(
        &crate::stages::detect::DetectArgs {
            work: work.to_owned(),
            config: None,
            force: false,
            store: args.store.clone(),
            shard: args.shard,
        },
        progress,
    )?;
    let emit = match &args.out {
        None => None,
        Some(out) => Some(crate::stages::emit::emit(
            &crate::stages::emit::EmitArgs {
                work: work.to_owned(),
                out: out.clone(),
                store: args.store.clone(),
            },
            progress,
        )?),
    };
    Ok(WorkOutcome {
        redact,
        detect,
        emit,
        wall: started.elapsed(),
    })
}

fn run_in_work_cli(args: &RunArgs, work: &str, progress: bool) -> anyhow::Result<ExitCode> {
    let o = run_in_work(args, work, progress)?;
    let r = &o.redact;
    let shard = args
        .shard
        .map(|s| format!(" (shard {s})"))
        .unwrap_or_default();
    println!(
        "work folder {}{shard}: {} clips, {} redone ({} frames), {} up to date, {} failed, {} dropped (no longer selected); models {}",
        Location::parse(work)?,
        r.clips,
        r.clips - r.reused,
        r.frames,
        r.reused,
        r.failed,
        r.dropped,
        if r.models_loaded || o.detect.model_loaded {
            "loaded"
        } else {
            "not loaded (nothing to redo)"
        }
    );
    println!(
        "  detections: {} clips redone ({} frames), {} up to date",
        o.detect.clips - o.detect.reused,
        o.detect.frames,
        o.detect.reused
    );
    let failed = match &o.emit {
        Some(e) => {
            let out = Location::parse(args.out.as_deref().unwrap_or_default())?;
            print_dataset_summary(&e.record, &out, e.failed_clips);
            if e.unchanged {
                println!("  up to date: {out} already holds this dataset; nothing written");
            }
            println!(
                "report: {}",
                out.join(&e.record.path(crate::emit::paths::REPORT))
            );
            e.failed_clips
        }
        None => {
            println!(
                "  no dataset written by a shard; when every shard is done: clearframe emit --work {work} --out DATASET"
            );
            r.failed
        }
    };
    println!("  {:.1} s", o.wall.as_secs_f64());
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
