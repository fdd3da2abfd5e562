//! `clearframe emit`: the dataset (frames as JPEG, manifest, annotations, report, `dataset.json`)
//! from a work folder that `select`, `redact` and `detect` wrote.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use super::{
    ClipDetectionsRecord, ClipRedactionRecord, ClipStatus, DetectStageRecord, RedactStageRecord,
    keys,
};
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
    let (redact, redact_blake3): (RedactStageRecord, String) = super::read_record(
        &work,
        keys::REDACT,
        "run `clearframe redact` on this work folder first",
    )?;
    anyhow::ensure!(
        redact.select_blake3 == selection.blake3,
        "select.json changed after `clearframe redact` ran; rerun redact and detect"
    );
    let (detect, _): (DetectStageRecord, String) = super::read_record(
        &work,
        keys::DETECT,
        "run `clearframe detect` on this work folder first",
    )?;
    anyhow::ensure!(
        detect.redact_blake3 == redact_blake3,
        "redact.json changed after `clearframe detect` ran; rerun detect"
    );

    let inputs = DatasetInputs {
        catalog_blake3: selection.record.catalog.blake3.clone(),
        ledger_blake3: selection.record.ledger.blake3.clone(),
        as_of: selection.record.as_of.to_string(),
        selection_jsonl: selection.bytes.to_vec(),
    };
    // The destination is checked (and, on S3, probed) before anything is deleted or written.
    let dest = Destination::inspect(Arc::clone(&out))?;
    let clips: std::collections::BTreeSet<String> = selection
        .included
        .iter()
        .map(|c| c.clip().video_id.clone())
        .collect();
    let mut dataset = crate::emit::output::DatasetWriter::start(dest, &clips, inputs)?;

    // Every frame's entry, checked against the detections, before any pixel is read.
    let mut jobs: Vec<(ManifestEntry, super::RedactedFrameRecord)> = Vec::new();
    let mut failed = 0;
    for (id, r) in &redact.clips {
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
        let (Some(info), Some(d)) = (&record.info, detect.clips.get(id)) else {
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
        info.provenance.config_blake3 = detect.config_blake3.clone();
        // The models that made the frame: redact's (faces, verifier, and the object detector
        // that kept persons sharp indoors) and detect's (the same one unless [detect] changed it).
        info.provenance
            .models
            .insert(detect.model.clone(), detect.model_blake3.clone());
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
    Ok(EmitOutcome {
        record,
        failed_clips: failed,
    })
}

/// Runs `clearframe emit`: exit 0, or 1 when the dataset lists clips that failed in `redact`.
pub fn run_cli(args: &EmitArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let o = emit(args, std::io::stderr().is_terminal())?;
    let out = Location::parse(&args.out)?;
    crate::summary::print_dataset_summary(&o.record, &out, o.failed_clips);
    println!("  {:.1} s", started.elapsed().as_secs_f64());
    println!("report: {}", out.join("report.html"));
    Ok(if o.failed_clips > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
