//! `clearframe redact`: decode and redact every clip the selection includes, into lossless PNG
//! frames and one redaction record per clip, then `redact.json`.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::{
    ClipInfo, ClipRedactionRecord, ClipStatus, REDACT_FORMAT, RecordRef, RedactStageRecord,
    RedactedFrameRecord, Shard, keys,
};
use crate::config::Config;
use crate::consent::{ConsentedClip, readmit_selection};
use crate::emit::ConsentBasis;
use crate::engine::{ClipError, Ctx, ModelIds, Models, StageTimes};
use crate::records::SelectRecord;
use crate::storage::ObjectRef;
use crate::storage::{Location, Sources, Store, StoreArgs, Uploader};

/// Arguments of `clearframe redact`.
#[derive(clap::Args, Debug)]
pub struct RedactArgs {
    /// Work folder: where `clearframe select --out` wrote `select.json` (a path, file:///path or
    /// s3://bucket/prefix). Redacted frames and records are written beside it.
    #[arg(long, value_name = "URL")]
    pub work: String,
    /// Where relative clip URIs resolve: the catalog's URL. Default: the catalog recorded in
    /// `select.json` (as it was given to `select`).
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
    /// Sample N frames per second of clip time: the frame on screen at 0, 1/N, 2/N ... s
    /// (overrides `sampling.fps` in the config).
    #[arg(long)]
    pub fps: Option<f32>,
    /// Configuration file (TOML), as for `clearframe run`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Redo every clip, even those whose record is up to date.
    #[arg(long)]
    pub force: bool,
    /// Hash every clip to decide whether its record is up to date, even when the catalog gives
    /// its blake3 (by default such a clip is not read again: decoding checks that hash anyway).
    #[arg(long)]
    pub rehash: bool,
    /// Where clips may be read from besides the catalog's own folder or S3 prefix
    /// (comma-separated URLs); a clip elsewhere fails when it is opened.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this shard's clips (`clearframe run --shard`); its record is
    /// `shards/redact-<I>-of-<N>.json`.
    #[arg(skip)]
    pub shard: Option<super::Shard>,
}

/// What `redact` did.
#[derive(Debug, Default)]
pub struct RedactOutcome {
    pub clips: usize,
    /// Clips whose up-to-date record was kept.
    pub reused: usize,
    pub failed: usize,
    pub excluded: usize,
    /// Frames redacted by this invocation.
    pub frames: u64,
    pub withheld: u64,
    /// Clips deleted because the selection no longer includes them.
    pub dropped: usize,
    /// Whether the models were loaded (not when every clip was up to date).
    pub models_loaded: bool,
}

/// The selection recorded in a work folder: `select.json`, its blake3, and the included clips.
pub(crate) struct RecordedSelection {
    pub record: SelectRecord,
    pub blake3: String,
    pub bytes: bytes::Bytes,
    pub included: Vec<ConsentedClip>,
}

/// Reads `select.json` and `selection.jsonl`, checks the one against the other.
pub(crate) fn read_selection(work: &Arc<dyn Store>) -> anyhow::Result<RecordedSelection> {
    let (record, blake3): (SelectRecord, String) = super::read_record(
        work,
        keys::SELECT,
        "run `clearframe select --out` on this work folder first",
    )?;
    let bytes = work
        .get(keys::SELECTION)
        .with_context(|| format!("cannot read {}", work.url(keys::SELECTION)))?;
    let included = readmit_selection(&bytes, &record.selection.blake3, record.included)
        .with_context(|| format!("{} cannot be re-admitted", work.url(keys::SELECTION)))?;
    Ok(RecordedSelection {
        record,
        blake3,
        bytes,
        included,
    })
}

/// The key of a clip's redaction: everything the redacted frames follow from (the clip's bytes
/// and catalog line, the settings, the models, the versions). The consent basis is not in it:
/// a consent change alone redoes no vision work, it only rewrites the record's basis.
fn clip_key(
    clip: &ConsentedClip,
    source_blake3: &str,
    config: &Config,
    models: &BTreeMap<String, String>,
    ffmpeg: &str,
    onnxruntime: &str,
) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        clearframe: &'a str,
        uri: &'a str,
        source_blake3: &'a str,
        clip: &'a crate::records::CatalogClip,
        config: &'a Config,
        models: &'a BTreeMap<String, String>,
        ffmpeg: &'a str,
        onnxruntime: &'a str,
    }
    crate::hashing::hash_bytes(
        &serde_json::to_vec(&Key {
            clearframe: env!("CARGO_PKG_VERSION"),
            uri: &clip.clip().uri,
            source_blake3,
            clip: clip.clip(),
            config,
            models,
            ffmpeg,
            onnxruntime,
        })
        .expect("keys serialise"),
    )
}

/// Where clips are opened from.
struct Opener {
    catalog_store: Arc<dyn Store>,
    sources: Sources,
    s3: crate::storage::S3Options,
}

/// The source's size and version tag as its store reports them (no byte read); `None` when the
/// store cannot say.
fn source_stamp(opener: &Opener, clip: &ConsentedClip) -> Option<String> {
    let (store, key) = opener
        .sources
        .resolve(&opener.catalog_store, &clip.clip().uri, &opener.s3)
        .ok()?;
    let meta = store.head(&key).ok()?;
    Some(format!("{}:{}", meta.size, meta.etag?))
}

/// blake3 of a clip's bytes, to decide whether its record is up to date: the catalog's; else the
/// one `old` recorded while the store reports the same size and version tag; else (or with
/// `rehash`) read from its store.
fn source_blake3(
    opener: &Opener,
    clip: &ConsentedClip,
    old: &ClipRedactionRecord,
    rehash: bool,
) -> anyhow::Result<String> {
    if !rehash {
        if let Some(b) = &clip.clip().blake3 {
            return Ok(b.to_ascii_lowercase());
        }
        if let (Some(b), Some(stamp)) = (&old.source_blake3, &old.source_stamp)
            && source_stamp(opener, clip).as_ref() == Some(stamp)
        {
            return Ok(b.clone());
        }
    }
    let (store, key) =
        opener
            .sources
            .resolve(&opener.catalog_store, &clip.clip().uri, &opener.s3)?;
    if let Location::Local(root) = store.location() {
        return Ok(crate::hashing::hash_file(&root.join(&key))?);
    }
    Ok(crate::hashing::hash_reader(store.reader(&key)?)?)
}

/// Runs the stage. A missing or inconsistent selection, or a bad config, stops it before anything
/// is written; a bad clip is recorded (status `failed`) and the others go on.
pub fn redact(args: &RedactArgs, progress: bool) -> anyhow::Result<RedactOutcome> {
    let s3 = args.store.to_options()?;
    let work = crate::storage::open(&args.work, &s3)?;
    let selection = read_selection(&work)?;
    let catalog_url = args
        .catalog
        .clone()
        .unwrap_or_else(|| selection.record.catalog.uri.clone());
    let catalog = ObjectRef::open(&catalog_url, &s3)?;
    let sources = Sources::new(catalog.store.location(), &args.sources)?;
    let config = Config::effective(args.config.as_deref(), args.fps)?;
    // The models' identities come from the manifest: a rebuild with nothing to redo loads none.
    let ids = ModelIds::of(&config)?;
    let mut models: Option<Models> = None;
    let shard = args.shard;

    // Writes will be accepted (S3: a probe object, SSE confirmed) before anything is deleted.
    work.probe_write()
        .with_context(|| format!("a probe write to {} was refused", work.location()))?;
    // From here on the work folder's redaction is not complete.
    let stage_key = keys::redact_record(shard);
    super::delete_if_present(&work, &stage_key)?;
    super::clear_other_records(&work, "redact", shard)?;
    let mine: Vec<&ConsentedClip> = selection
        .included
        .iter()
        .filter(|c| Shard::owns(shard, &c.clip().video_id))
        .collect();
    let mut outcome = RedactOutcome {
        clips: mine.len(),
        ..RedactOutcome::default()
    };
    let included: std::collections::BTreeSet<&str> = selection
        .included
        .iter()
        .map(|c| c.clip().video_id.as_str())
        .collect();
    crate::audit::note_input("catalog", &selection.record.catalog.blake3);
    crate::audit::note_input("ledger", &selection.record.ledger.blake3);
    crate::audit::note_selection(
        &std::collections::BTreeMap::from([
            ("include".to_owned(), selection.record.included),
            ("exclude".to_owned(), selection.record.excluded),
        ]),
        included.iter().copied(),
    );
    for gone in super::listed_clips(&work, keys::REDACTED)? {
        if !included.contains(gone.as_str()) && Shard::owns(shard, &gone) {
            tracing::info!(video_id = %gone, "the selection no longer includes this clip; its frames are deleted");
            super::delete_clip_frames(&work, &gone)?;
            super::delete_if_present(&work, &keys::clip_redaction(&gone))?;
            crate::audit::note_erased(&gone, &work.location().to_string());
            outcome.dropped += 1;
        }
    }

    let opener = Opener {
        catalog_store: Arc::clone(&catalog.store),
        sources,
        s3: s3.clone(),
    };
    let ffmpeg = crate::media::ffmpeg_version();
    let bar = crate::summary::progress_bar(mine.len() as u64, "clips", progress);
    let mut clips = BTreeMap::new();
    for clip in mine {
        let id = clip.clip().video_id.clone();
        bar.set_message(id.clone());
        let _span = tracing::info_span!("clip", video_id = %id).entered();
        let record_key = keys::clip_redaction(&id);
        let kept = if args.force {
            None
        } else {
            up_to_date(&opener, &ids, &config, &ffmpeg, &work, clip, args.rehash)?
        };
        let record = match kept {
            Some(mut record) => {
                tracing::info!("up to date; kept");
                outcome.reused += 1;
                match record.status {
                    ClipStatus::Redacted => {}
                    ClipStatus::Failed => outcome.failed += 1,
                    ClipStatus::Excluded => outcome.excluded += 1,
                }
                // A consent change alone: the same frames, on the new basis.
                let basis = ConsentBasis::from(clip.basis());
                if record.consent != basis {
                    if let Some(info) = &mut record.info {
                        info.provenance.consent = basis.clone();
                    }
                    record.consent = basis;
                }
                record
            }
            None => {
                if models.is_none() {
                    let loaded = Models::load(&config)?;
                    anyhow::ensure!(
                        loaded.ids() == ids,
                        "the loaded models differ from the manifest's (a bug)"
                    );
                    models = Some(loaded);
                    outcome.models_loaded = true;
                }
                let mut ctx = Ctx {
                    models: models.as_ref().expect("loaded above"),
                    config_blake3: config.blake3(),
                    config: &config,
                    ffmpeg: ffmpeg.clone(),
                    catalog_store: Arc::clone(&opener.catalog_store),
                    sources: opener.sources.clone(),
                    s3: opener.s3.clone(),
                    times: StageTimes::default(),
                };
                let record = redact_one(&mut ctx, &work, clip)?;
                match record.status {
                    ClipStatus::Redacted => {}
                    ClipStatus::Failed => outcome.failed += 1,
                    ClipStatus::Excluded => outcome.excluded += 1,
                }
                outcome.frames += record.frames.len() as u64;
                outcome.withheld += record.withheld.len() as u64;
                record
            }
        };
        let bytes = super::record_bytes(&record);
        let blake3 = crate::hashing::hash_bytes(&bytes);
        work.put_record(&record_key, bytes.into())
            .with_context(|| format!("cannot write {}", work.url(&record_key)))?;
        clips.insert(
            id,
            RecordRef {
                key: record_key,
                blake3,
            },
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stage = RedactStageRecord {
        format: REDACT_FORMAT.into(),
        clearframe_version: env!("CARGO_PKG_VERSION").into(),
        select_blake3: selection.blake3,
        config_blake3: config.blake3(),
        config: config.clone(),
        clips,
    };
    work.put_record(&stage_key, super::record_bytes(&stage).into())
        .with_context(|| format!("cannot write {}", work.url(&stage_key)))?;
    Ok(outcome)
}

/// The clip's existing record, if it was made from the same inputs and settings, finished, and
/// every frame it lists is still there.
fn up_to_date(
    opener: &Opener,
    ids: &ModelIds,
    config: &Config,
    ffmpeg: &str,
    work: &Arc<dyn Store>,
    clip: &ConsentedClip,
    rehash: bool,
) -> anyhow::Result<Option<ClipRedactionRecord>> {
    let id = &clip.clip().video_id;
    let key = keys::clip_redaction(id);
    let old: ClipRedactionRecord = match work.get(&key) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable redaction record; redoing the clip");
                return Ok(None);
            }
        },
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("cannot read {}", work.url(&key))));
        }
    };
    // A finished clip, or one that would fail the same way again (same bytes, same settings).
    let settled = match old.status {
        ClipStatus::Redacted => true,
        ClipStatus::Failed | ClipStatus::Excluded => {
            old.code.is_some_and(crate::records::FailureCode::repeats)
        }
    };
    if !settled || old.key.is_empty() {
        return Ok(None);
    }
    let Ok(source) = source_blake3(opener, clip, &old, rehash) else {
        return Ok(None);
    };
    let expected = clip_key(
        clip,
        &source,
        config,
        &ids.provenance,
        ffmpeg,
        &ids.onnxruntime,
    );
    if old.key != expected {
        return Ok(None);
    }
    let present: std::collections::BTreeSet<String> = work
        .list(&keys::clip_frames(id))?
        .into_iter()
        .map(|m| m.key)
        .collect();
    Ok(old
        .frames
        .iter()
        .all(|f| present.contains(&f.path))
        .then_some(old))
}

/// Decodes and redacts one clip into the work folder; returns its record (not yet written).
fn redact_one(
    ctx: &mut Ctx<'_>,
    work: &Arc<dyn Store>,
    clip: &ConsentedClip,
) -> anyhow::Result<ClipRedactionRecord> {
    let c = clip.clip();
    // A clip is redone as a whole: its earlier frames go first, so no stale frame survives.
    super::delete_clip_frames(work, &c.video_id)?;
    let uploader = Uploader::new(Arc::clone(work), 8);
    let mut frames: Vec<RedactedFrameRecord> = Vec::new();
    let work_fn = |video_id: &str,
                   _: &ClipInfo,
                   red: &crate::redact::RedactedFrame,
                   masks: u32,
                   found: u32|
     -> anyhow::Result<(RedactedFrameRecord, Vec<u8>)> {
        let png = red.to_png()?;
        Ok((
            RedactedFrameRecord {
                frame: red.index(),
                timestamp_s: red.pts(),
                path: keys::frame(video_id, red.index()),
                blake3: crate::hashing::hash_bytes(&png),
                faces_masked: masks,
                verifier_faces: found,
            },
            png,
        ))
    };
    let mut consume = |_: &mut StageTimes, (rec, png): (RedactedFrameRecord, Vec<u8>)| {
        // The first refused upload stops the clip (and `finish` below stops the stage).
        anyhow::ensure!(!uploader.failed(), "an upload to the work folder failed");
        uploader.submit(rec.path.clone(), png);
        frames.push(rec);
        Ok(())
    };
    // The source's stamp before a byte of it is read: a rewrite during the read shows next time.
    let stamp = source_stamp(
        &Opener {
            catalog_store: Arc::clone(&ctx.catalog_store),
            sources: ctx.sources.clone(),
            s3: ctx.s3.clone(),
        },
        clip,
    );
    let r = crate::engine::process_clip(ctx, clip, &work_fn, &mut consume);
    uploader
        .finish()
        .with_context(|| format!("cannot write the redacted frames of {}", c.video_id))?;
    let (status, code, reason) = match &r.outcome {
        Ok(()) => (ClipStatus::Redacted, None, None),
        Err(e @ ClipError::Policy(reason)) => {
            tracing::info!(%reason, "clip left out by policy");
            (ClipStatus::Excluded, Some(e.code()), Some(reason.clone()))
        }
        Err(e) => {
            tracing::error!(
                code = e.code().as_str(),
                reason = e.reason(),
                "clip failed; the batch goes on"
            );
            (
                ClipStatus::Failed,
                Some(e.code()),
                Some(e.reason().to_owned()),
            )
        }
    };
    // The bytes' hash, as opened; for a clip left out before it was opened (the indoor policy),
    // the catalog's. Without one the clip is tried again next time.
    let source = r
        .source_blake3
        .clone()
        .or_else(|| c.blake3.as_ref().map(|b| b.to_ascii_lowercase()));
    let source_blake3 = source.clone();
    let key = source.map_or_else(String::new, |source| {
        clip_key(
            clip,
            &source,
            ctx.config,
            &ctx.models.provenance,
            &ctx.ffmpeg,
            &ctx.models.onnxruntime,
        )
    });
    Ok(ClipRedactionRecord {
        video_id: c.video_id.clone(),
        uri: c.uri.clone(),
        consent: ConsentBasis::from(clip.basis()),
        key,
        source_stamp: stamp.filter(|_| r.source_blake3.is_some()),
        source_blake3,
        status,
        code,
        reason,
        info: r.info,
        frames,
        withheld: r.withheld,
        report: r.report,
    })
}

/// Runs `clearframe redact`: exit 0 when every included clip was redacted (or left out by
/// policy), 1 when some failed (recorded in their records), 2 when the stage could not run.
pub fn run_cli(args: &RedactArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let o = redact(args, std::io::stderr().is_terminal())?;
    let work = Location::parse(&args.work)?;
    println!(
        "redacted {} clips into {}: {} redone ({} frames, {} withheld by the verifier), {} up to date, {} failed, {} excluded by policy, {} dropped (no longer selected)",
        o.clips,
        work,
        o.clips - o.reused,
        o.frames,
        o.withheld,
        o.reused,
        o.failed,
        o.excluded,
        o.dropped
    );
    println!(
        "  {:.1} s; next: clearframe detect --work {}",
        started.elapsed().as_secs_f64(),
        args.work
    );
    Ok(if o.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
