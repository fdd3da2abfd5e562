//! `clearframe detect`: object detection on the redacted frames `redact` wrote, one detections
//! record per clip, then `detect.json`.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::{
    ClipDetectionsRecord, ClipRedactionRecord, DETECT_FORMAT, DetectStageRecord, FrameDetections,
    RecordRef, RedactStageRecord, keys,
};
use crate::config::{Config, DetectConfig};
use crate::emit::EmittedDetection;
use crate::redact::RedactedFrame;
use crate::storage::{self, Location, StoreArgs};
use crate::vision::nanodet::NanoDet;

/// Arguments of `clearframe detect`.
#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// Work folder that `clearframe redact` wrote (a path, file:///path or s3://bucket/prefix).
    #[arg(long, value_name = "URL")]
    pub work: String,
    /// Configuration file (TOML). Only its `[detect]` section may differ from the settings
    /// `redact` ran with (recorded in `redact.json`, the default); the others must match.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Redo every clip, even those whose record is up to date.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this shard's clips (`clearframe run --shard`): reads
    /// `shards/redact-<I>-of-<N>.json`, writes `shards/detect-<I>-of-<N>.json`.
    #[arg(skip)]
    pub shard: Option<super::Shard>,
}

/// What `detect` did.
#[derive(Debug, Default)]
pub struct DetectOutcome {
    pub clips: usize,
    pub reused: usize,
    /// Frames detected on by this invocation.
    pub frames: u64,
    pub detections: u64,
    /// Whether the object detector was loaded (not when every clip was up to date).
    pub model_loaded: bool,
}

/// The settings `detect` runs with: `redact`'s, with the file's `[detect]` when one is given.
fn effective_config(redact: &Config, file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let Some(path) = file else {
        return Ok(redact.clone());
    };
    let given = Config::load(path)?;
    given
        .validate()
        .with_context(|| format!("invalid config {}", path.display()))?;
    let mut differ = Vec::new();
    if given.sampling != redact.sampling {
        differ.push("[sampling]");
    }
    if given.faces != redact.faces {
        differ.push("[faces]");
    }
    if given.verifier != redact.verifier {
        differ.push("[verifier]");
    }
    if given.indoor != redact.indoor {
        differ.push("[indoor]");
    }
    anyhow::ensure!(
        differ.is_empty(),
        "{}: {} differ from the settings `redact` ran with; only [detect] may change between redact and detect (rerun redact with this config)",
        path.display(),
        differ.join(", ")
    );
    Ok(Config {
        detect: given.detect,
        ..redact.clone()
    })
}

fn clip_key(redaction: &str, detect: &DetectConfig, model_blake3: &str) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        clearframe: &'a str,
        redaction: &'a str,
        detect: &'a DetectConfig,
        model: &'a str,
    }
    crate::hashing::hash_bytes(
        &serde_json::to_vec(&Key {
            clearframe: env!("CARGO_PKG_VERSION"),
            redaction,
            detect,
            model: model_blake3,
        })
        .expect("keys serialise"),
    )
}

/// Object detection for the dataset, as `run` and this stage do it: on a verified redacted frame
/// only, its detections in the dataset's form.
pub(crate) fn detect_frame(
    detector: &NanoDet,
    frame: &RedactedFrame,
) -> anyhow::Result<Vec<EmittedDetection>> {
    Ok(detector
        .detect(frame.image())?
        .iter()
        .map(EmittedDetection::from_detection)
        .collect::<Result<_, _>>()?)
}

/// Runs the stage.
pub fn detect(args: &DetectArgs, progress: bool) -> anyhow::Result<DetectOutcome> {
    let s3 = args.store.to_options()?;
    let work = storage::open(&args.work, &s3)?;
    let shard = args.shard;
    let (redact, redact_blake3): (RedactStageRecord, String) = super::read_record(
        &work,
        &keys::redact_record(shard),
        "run `clearframe redact` on this work folder first",
    )?;
    let config = effective_config(&redact.config, args.config.as_deref())?;
    // The detector's identity comes from the manifest; it is loaded only for a clip to redo.
    let ids = crate::engine::ModelIds::of_detector(&config.detect)?;
    let (model_name, model_blake3) = ids
        .provenance
        .iter()
        .next()
        .map(|(n, b)| (n.clone(), b.clone()))
        .expect("one model");
    let mut detector: Option<NanoDet> = None;

    // Writes will be accepted (S3: a probe object, SSE confirmed) before anything is deleted.
    work.probe_write()
        .with_context(|| format!("a probe write to {} was refused", work.location()))?;
    let stage_key = keys::detect_record(shard);
    super::delete_if_present(&work, &stage_key)?;
    super::clear_other_records(&work, "detect", shard)?;
    let mut records = Vec::new();
    for (id, r) in &redact.clips {
        let record: ClipRedactionRecord = super::read_listed(&work, r, "redact")?;
        if let Some(info) = &record.info {
            if let Some(recorded) = info.provenance.models.get(&model_name) {
                anyhow::ensure!(
                    *recorded == model_blake3,
                    "{id}: redact ran model {model_name} with blake3 {recorded}, this one is {model_blake3}; rerun redact"
                );
            }
            anyhow::ensure!(
                info.provenance.onnxruntime_version == ids.onnxruntime,
                "{id}: redact ran ONNX Runtime {}, detect runs {}; run both stages with one runtime",
                info.provenance.onnxruntime_version,
                ids.onnxruntime
            );
        }
        if !record.frames.is_empty() {
            records.push((id.clone(), r.blake3.clone(), record));
        }
    }
    let keep: std::collections::BTreeSet<&str> =
        records.iter().map(|(id, ..)| id.as_str()).collect();
    for gone in super::listed_clips(&work, keys::DETECTED)? {
        if !keep.contains(gone.as_str()) && super::Shard::owns(shard, &gone) {
            super::delete_if_present(&work, &keys::clip_detections(&gone))?;
        }
    }

    let total: u64 = records.iter().map(|(.., r)| r.frames.len() as u64).sum();
    let bar = crate::summary::progress_bar(total, "frames", progress);
    let mut outcome = DetectOutcome {
        clips: records.len(),
        ..DetectOutcome::default()
    };
    let mut clips = BTreeMap::new();
    for (id, _, record) in &records {
        bar.set_message(id.clone());
        let _span = tracing::info_span!("clip", video_id = %id).entered();
        // Keyed by what detection sees (the redaction's key and every frame's blake3), not the
        // record's bytes: a consent change alone rewrites the record, not the pixels.
        let pixels = crate::hashing::hash_bytes(
            &serde_json::to_vec(&(
                &record.key,
                record
                    .frames
                    .iter()
                    .map(|f| (f.frame, f.blake3.as_str()))
                    .collect::<Vec<_>>(),
            ))
            .expect("keys serialise"),
        );
        let key = clip_key(&pixels, &config.detect, &model_blake3);
        let record_key = keys::clip_detections(id);
        let old: Option<ClipDetectionsRecord> = if args.force {
            None
        } else {
            work.get(&record_key)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        };
        let dets = match old.filter(|o| o.key == key) {
            Some(o) => {
                tracing::info!("up to date; kept");
                outcome.reused += 1;
                bar.inc(record.frames.len() as u64);
                o
            }
            None => {
                if detector.is_none() {
                    detector = Some(crate::engine::object_detector(
                        &config.detect,
                        &crate::engine::single_thread_options(config.inference.device),
                    )?);
                    outcome.model_loaded = true;
                }
                let detector = detector.as_ref().expect("loaded above");
                // Fetching and decoding on one thread, detection on this one.
                let frames = std::thread::scope(|s| -> anyhow::Result<Vec<FrameDetections>> {
                    let (tx, rx) = crossbeam_channel::bounded(4);
                    let work = &work;
                    s.spawn(move || {
                        for f in &record.frames {
                            if tx.send((f.frame, super::read_frame(work, f))).is_err() {
                                break;
                            }
                        }
                    });
                    let mut out = Vec::with_capacity(record.frames.len());
                    for (frame, red) in rx {
                        let detections = detect_frame(detector, &red?)?;
                        outcome.detections += detections.len() as u64;
                        out.push(FrameDetections { frame, detections });
                        bar.inc(1);
                    }
                    Ok(out)
                })?;
                outcome.frames += frames.len() as u64;
                ClipDetectionsRecord {
                    video_id: id.clone(),
                    key,
                    frames,
                }
            }
        };
        let bytes = super::record_bytes(&dets);
        let blake3 = crate::hashing::hash_bytes(&bytes);
        work.put_record(&record_key, bytes.into())
            .with_context(|| format!("cannot write {}", work.url(&record_key)))?;
        clips.insert(
            id.clone(),
            RecordRef {
                key: record_key,
                blake3,
            },
        );
    }
    bar.finish_and_clear();
    let stage = DetectStageRecord {
        format: DETECT_FORMAT.into(),
        clearframe_version: env!("CARGO_PKG_VERSION").into(),
        redact_blake3,
        config_blake3: config.blake3(),
        config,
        model: model_name,
        model_blake3,
        clips,
    };
    work.put_record(&stage_key, super::record_bytes(&stage).into())
        .with_context(|| format!("cannot write {}", work.url(&stage_key)))?;
    Ok(outcome)
}

/// Runs `clearframe detect`.
pub fn run_cli(args: &DetectArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let o = detect(args, std::io::stderr().is_terminal())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "detected on {} clips in {}: {} redone ({} frames, {} detections), {} up to date",
        o.clips,
        Location::parse(&args.work)?,
        o.clips - o.reused,
        o.frames,
        o.detections,
        o.reused
    );
    println!(
        "  {secs:.1} s, {:.1} frames/s; next: clearframe emit --work {} --out DATASET",
        o.frames as f64 / secs.max(1e-9),
        args.work
    );
    Ok(ExitCode::SUCCESS)
}
