//! `clearframe emit`: the dataset (frames as JPEG, manifest, annotations, report, `dataset.json`)
//! from a work folder that `select`, `redact` and `detect` wrote.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::{ClipDetectionsRecord, ClipRedactionRecord, ClipStatus};
use crate::emit::dest::Destination;
use crate::emit::{
    ClipFailure, DatasetInputs, DatasetRecord, FrameJpeg, ManifestEntry, encode_jpeg,
};
use crate::storage::{self, Location, StoreArgs};

/// Arguments of `clearframe emit`.
#[derive(clap::Args, Debug)]
pub struct EmitArgs {
    /// Work folder that `clearframe detect` wrote (a path, file:///path or s3://bucket/prefix).
    #[arg(long, value_name = "URL")]
    pub work: String,
    /// Where the dataset goes: a folder, file:///path or s3://bucket/prefix, outside the work
    /// folder (created; an earlier dataset ClearFrame wrote there is replaced; a folder or prefix
    /// holding anything else is refused).
    #[arg(long, value_name = "URL")]
    pub out: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What `emit` produced.
#[derive(Debug)]
pub struct EmitOutcome {
    pub record: DatasetRecord,
    /// Clips that failed in `redact` (not those left out by policy).
    pub failed_clips: usize,
    /// The destination already held this dataset: nothing was written.
    pub unchanged: bool,
}

/// Runs the stage: checks the chain of stage records, then writes the dataset, `dataset.json`
/// last.
pub fn emit(args: &EmitArgs, progress: bool) -> anyhow::Result<EmitOutcome> {
    let s3 = args.store.to_options()?;
    let work = storage::open(&args.work, &s3)?;
    let out = storage::open(&args.out, &s3)?;
    anyhow::ensure!(
        !work.location().overlaps(out.location()),
        "--out {} and the work folder {} overlap (one is, or lies inside, the other): the \
         dataset goes outside the work folder",
        out.location(),
        work.location()
    );
    let selection = super::redact::read_selection(&work)?;
    let included: Vec<String> = selection
        .included
        .iter()
        .map(|c| c.clip().video_id.clone())
        .collect();
    // `redact.json` and `detect.json`, or every shard's pair; refused while a clip is missing.
    let stages = super::read_stage_records(&work, &selection.blake3, &included)?;
    // Nothing derived from a clip the selection no longer includes stays in the work folder,
    // whichever shard had it (a shard that did not run again cannot have dropped it).
    work.probe_write()
        .with_context(|| format!("a probe write to {} was refused", work.location()))?;
    let keep: std::collections::BTreeSet<&str> = included.iter().map(String::as_str).collect();
    let mut held = super::listed_clips(&work, super::keys::REDACTED)?;
    held.extend(super::listed_clips(&work, super::keys::DETECTED)?);
    for gone in held.iter().filter(|id| !keep.contains(id.as_str())) {
        tracing::info!(video_id = %gone, "the selection no longer includes this clip; its frames and records are deleted");
        super::delete_clip_frames(&work, gone)?;
        super::delete_if_present(&work, &super::keys::clip_redaction(gone))?;
        super::delete_if_present(&work, &super::keys::clip_detections(gone))?;
        crate::audit::note_erased(gone, &work.location().to_string());
    }

    let inputs = DatasetInputs {
        catalog_blake3: selection.record.catalog.blake3.clone(),
        ledger_blake3: selection.record.ledger.blake3.clone(),
        as_of: selection.record.as_of.to_string(),
        selection_jsonl: selection.bytes.to_vec(),
    };
    // The destination is checked (and, on S3, probed) before anything is deleted or written.
    let dest = Destination::inspect(Arc::clone(&out))?;
    // Everything the dataset's bytes follow from; when the destination already holds the
    // dataset this work folder last emitted from the same, there is nothing to write.
    let emit_key = emit_key(&selection.blake3, &stages);
    if let Some(record) = unchanged(&work, &dest, &emit_key)? {
        tracing::info!("the dataset is up to date; nothing written");
        return Ok(EmitOutcome {
            failed_clips: record
                .failed_clips
                .iter()
                .filter(|f| f.code != crate::records::FailureCode::IndoorExcluded)
                .count(),
            record,
            unchanged: true,
        });
    }
    super::delete_if_present(&work, super::keys::EMITTED)?;
    let clips: std::collections::BTreeSet<String> = included.into_iter().collect();
    // Why the previous version's clips are gone: the ledger select read, if it is still there
    // unchanged; otherwise the selection's reason codes only (with a warning).
    let removal = match ledger_as_selected(&selection.record.ledger, &s3) {
        Ok(bytes) => super::removal_reasons(
            dest.previous(),
            &clips,
            &bytes,
            &selection.record.ledger.uri,
            selection.record.as_of,
        )?,
        Err(e) => {
            if dest.previous().is_some() {
                tracing::warn!(error = %crate::storage::error_chain(&e), "removed.jsonl gives selection reason codes only, no ledger events");
            }
            std::collections::BTreeMap::new()
        }
    };
    let mut dataset = crate::emit::output::DatasetWriter::start(dest, &clips, inputs, removal)?;

    // Every frame's entry, checked against the detections, before any pixel is read.
    let mut jobs: Vec<(ManifestEntry, super::RedactedFrameRecord)> = Vec::new();
    let mut failed = 0;
    for (id, r) in &stages.redacted {
        let record: ClipRedactionRecord = super::read_listed(&work, r, "redact")?;
        for w in &record.withheld {
            dataset.withhold(w.clone());
        }
        match record.status {
            ClipStatus::Redacted => {}
            ClipStatus::Failed | ClipStatus::Excluded => {
                failed += usize::from(record.status == ClipStatus::Failed);
                dataset.clip_failed(ClipFailure {
                    video_id: id.clone(),
                    code: record.code.unwrap_or(crate::records::FailureCode::Internal),
                    reason: record.reason.clone().unwrap_or_default(),
                });
            }
        }
        if record.frames.is_empty() {
            continue;
        }
        let (Some(info), Some(d)) = (&record.info, stages.detected.get(id)) else {
            anyhow::bail!(
                "{id} has redacted frames but no detections in detect.json; rerun detect"
            );
        };
        let dets: ClipDetectionsRecord = super::read_listed(&work, d, "detect")?;
        anyhow::ensure!(
            dets.frames.len() == record.frames.len()
                && dets
                    .frames
                    .iter()
                    .zip(&record.frames)
                    .all(|(d, f)| d.frame == f.frame),
            "{}: its frames differ from the redacted ones; rerun detect",
            work.url(&d.key)
        );
        let mut info = info.clone();
        info.provenance
            .config_blake3
            .clone_from(&stages.config_blake3);
        // The models that made the frame: redact's (faces, verifier, and the object detector
        // that kept persons sharp indoors) and detect's (the same one unless [detect] changed it).
        info.provenance
            .models
            .insert(stages.model.clone(), stages.model_blake3.clone());
        for (f, d) in record.frames.into_iter().zip(dets.frames) {
            let entry = crate::emit::clip::frame_entry(
                id,
                &info,
                f.frame,
                f.timestamp_s,
                f.faces_masked,
                f.verifier_faces,
                d.detections,
            );
            jobs.push((entry, f));
        }
    }

    // Two threads fetch, check, decode and encode; this one writes.
    let bar = crate::summary::progress_bar(jobs.len() as u64, "frames", progress);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let (job_tx, job_rx) =
            crossbeam_channel::bounded::<(ManifestEntry, super::RedactedFrameRecord)>(8);
        let (done_tx, done_rx) =
            crossbeam_channel::bounded::<anyhow::Result<(ManifestEntry, FrameJpeg)>>(8);
        for _ in 0..2 {
            let (job_rx, done_tx, work) = (job_rx.clone(), done_tx.clone(), &work);
            s.spawn(move || {
                for (entry, f) in job_rx {
                    let item =
                        super::read_frame(work, &f).and_then(|red| Ok((entry, encode_jpeg(&red)?)));
                    if done_tx.send(item).is_err() {
                        break;
                    }
                }
            });
        }
        drop((job_rx, done_tx));
        s.spawn(move || {
            for job in jobs {
                if job_tx.send(job).is_err() {
                    break;
                }
            }
        });
        for item in done_rx {
            let (entry, jpeg) = item?;
            if let Err(e) = dataset.add_frame(entry, jpeg) {
                if dataset.failed() {
                    break; // the first refused upload stops the stage: reported by `finish`
                }
                return Err(e);
            }
            bar.inc(1);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let record = dataset.finish()?;
    let written = out
        .get(crate::emit::paths::DATASET)
        .with_context(|| format!("cannot read back {}", out.url(crate::emit::paths::DATASET)))?;
    let emitted = EmittedRecord {
        format: EMITTED_FORMAT.into(),
        key: emit_key,
        out: out.location().to_string(),
        dataset_blake3: crate::hashing::hash_bytes(&written),
    };
    work.put_record(super::keys::EMITTED, super::record_bytes(&emitted).into())
        .with_context(|| format!("cannot write {}", work.url(super::keys::EMITTED)))?;
    Ok(EmitOutcome {
        record,
        failed_clips: failed,
        unchanged: false,
    })
}

/// The ledger `select` read, by its recorded URI, if its bytes still have the recorded blake3.
fn ledger_as_selected(
    recorded: &crate::records::InputRef,
    s3: &crate::storage::S3Options,
) -> anyhow::Result<bytes::Bytes> {
    let ledger = crate::storage::ObjectRef::open(&recorded.uri, s3)?;
    let bytes = ledger.get()?;
    anyhow::ensure!(
        crate::hashing::hash_bytes(&bytes) == recorded.blake3,
        "{} changed since `clearframe select` read it",
        ledger.url
    );
    Ok(bytes)
}

/// Format id of `emitted.json`.
const EMITTED_FORMAT: &str = "clearframe-emitted/1";

/// `emitted.json` in the work folder: which dataset this folder last emitted, and where.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmittedRecord {
    format: String,
    /// blake3 of everything the dataset's bytes follow from (see [`emit_key`]).
    key: String,
    /// The destination, as a location URL.
    out: String,
    /// blake3 of the `dataset.json` written there.
    dataset_blake3: String,
}

/// The key of a dataset: the selection, every clip's redaction and detections records (by
/// blake3: they name every frame's PNG by blake3), the detect settings and model, the version.
fn emit_key(select_blake3: &str, stages: &super::StageRecords) -> String {
    #[derive(serde::Serialize)]
    struct Key<'a> {
        clearframe: &'a str,
        format: &'a str,
        select: &'a str,
        redacted: &'a std::collections::BTreeMap<String, super::RecordRef>,
        detected: &'a std::collections::BTreeMap<String, super::RecordRef>,
        config: &'a str,
        model: &'a str,
        model_blake3: &'a str,
    }
    crate::hashing::hash_bytes(
        &serde_json::to_vec(&Key {
            clearframe: env!("CARGO_PKG_VERSION"),
            format: crate::emit::DATASET_FORMAT,
            select: select_blake3,
            redacted: &stages.redacted,
            detected: &stages.detected,
            config: &stages.config_blake3,
            model: &stages.model,
            model_blake3: &stages.model_blake3,
        })
        .expect("keys serialise"),
    )
}

/// The destination's dataset, when it is the one this work folder last emitted with `key` and
/// is complete (its seal, manifest and every listed object checked by [`Destination::inspect`]).
fn unchanged(
    work: &Arc<dyn crate::storage::Store>,
    dest: &Destination,
    key: &str,
) -> anyhow::Result<Option<DatasetRecord>> {
    if !dest.is_complete() {
        return Ok(None);
    }
    let Ok(bytes) = work.get(super::keys::EMITTED) else {
        return Ok(None);
    };
    let Ok(prev) = serde_json::from_slice::<EmittedRecord>(&bytes) else {
        return Ok(None);
    };
    let out = dest.store();
    if prev.format != EMITTED_FORMAT || prev.key != key || prev.out != out.location().to_string() {
        return Ok(None);
    }
    let dataset = out
        .get(crate::emit::paths::DATASET)
        .with_context(|| format!("cannot read {}", out.url(crate::emit::paths::DATASET)))?;
    if crate::hashing::hash_bytes(&dataset) != prev.dataset_blake3 {
        return Ok(None);
    }
    // Every file must still have the bytes its record lists (a frame overwritten there, by
    // anyone, makes the dataset be written again).
    let Some(version) = dest.previous() else {
        return Ok(None);
    };
    let listed = version
        .clips
        .values()
        .flat_map(|c| c.frames.iter())
        .chain(version.files.iter());
    for (path, blake3) in listed {
        match out.get(path) {
            Ok(bytes) if crate::hashing::hash_bytes(&bytes) == *blake3 => {}
            _ => {
                tracing::info!(file = %out.url(path), "changed since it was written; the dataset is written again");
                return Ok(None);
            }
        }
    }
    Ok(serde_json::from_slice(&dataset).ok())
}

/// Runs `clearframe emit`: exit 0, or 1 when the dataset lists clips that failed in `redact`.
pub fn run_cli(args: &EmitArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let o = emit(args, std::io::stderr().is_terminal())?;
    let out = Location::parse(&args.out)?;
    crate::summary::print_dataset_summary(&o.record, &out, o.failed_clips);
    if o.unchanged {
        println!("  up to date: {out} already holds this dataset; nothing written");
    }
    println!("  {:.1} s", started.elapsed().as_secs_f64());
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
