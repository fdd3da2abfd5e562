//! The per-clip engine that `run` and `redact` share: open the clip, decode, find faces, hold
//! them over short gaps, redact, verify, then hand each redacted frame to the caller's work on a
//! thread of its own. Unredacted frames exist only in memory, in bounded channels; every decoded
//! frame ends handed on, withheld with its reason, or in the clip's failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::bounded;
use serde::Serialize;

use crate::config::{Config, DetectConfig, FaceModel, LimitsConfig};
use crate::consent::ConsentedClip;
use crate::emit::clip::ClipInfo;
use crate::emit::{ConsentBasis, Provenance, WithheldFrame};
use crate::inference::ModelOptions;
use crate::media::{
    DecodeOptions, Decoder, Frame, Input, MediaError, Sampling, SourceError, SourceFile,
};
use crate::records::{FailureCode, Placement};
use crate::redact::{IndoorPolicy, RedactOptions, Redactor, TemporalHold, Verdict, Zone};
use crate::storage::{self, Location, S3Options, Sources, Store};
use crate::vision::centerface::{CenterFace, CenterFaceConfig, CenterFaceVariant};
use crate::vision::nanodet::{NanoDet, NanoDetConfig};
use crate::vision::retinaface::{RetinaFace, RetinaFaceConfig};
use crate::vision::{BBox, Detection};

/// The loaded models of a run.
pub(crate) struct Models {
    faces: CenterFace,
    fast: bool,
    verifier: RetinaFace,
    pub objects: NanoDet,
    /// Model name -> blake3, of every model loaded.
    pub provenance: BTreeMap<String, String>,
    pub onnxruntime: String,
}

/// The object detector with the `[detect]` thresholds.
pub(crate) fn object_detector(
    detect: &DetectConfig,
    options: &ModelOptions,
) -> anyhow::Result<NanoDet> {
    let mut nd = NanoDetConfig {
        variant: detect.model,
        ..NanoDetConfig::default()
    };
    nd.thresholds = [detect.threshold; 80];
    for (name, t) in &detect.class_thresholds {
        let i = crate::vision::coco::index_of(name).ok_or_else(|| {
            anyhow::anyhow!("detect.class_thresholds: {name:?} is not a COCO class")
        })?;
        nd.thresholds[i] = *t;
    }
    NanoDet::new(options, nd).context("cannot load the object detector")
}

/// How the verifier and the object detector run: on pipeline threads of their own, beside face
/// detection, one intra-op thread each (no thread hand-offs on small models).
pub(crate) fn single_thread_options() -> ModelOptions {
    ModelOptions {
        intra_spinning: Some(false),
        intra_threads: Some(1),
        ..ModelOptions::default()
    }
}

impl Models {
    pub(crate) fn load(config: &Config) -> anyhow::Result<Models> {
        let f = &config.faces;
        let (variant, fast) = match f.model {
            FaceModel::Reference => (CenterFaceVariant::Reference, false),
            FaceModel::Clean => (CenterFaceVariant::Clean, false),
            FaceModel::Int8 => (CenterFaceVariant::Int8, false),
            FaceModel::Fast => (CenterFaceVariant::Int8, true),
        };
        let cf_config = CenterFaceConfig {
            threshold: f.threshold,
            scale: f.scale.map(|[w, h]| (w, h)),
            variant,
        };
        // Face detection may use both cores when the other pipeline threads wait (measured: a
        // little faster than one thread).
        let opts = ModelOptions {
            intra_spinning: Some(false),
            ..ModelOptions::default()
        };
        let faces = CenterFace::new(&opts, cf_config).context("cannot load the face detector")?;
        let single = single_thread_options();
        let verifier = RetinaFace::new(
            &single,
            RetinaFaceConfig {
                threshold: config.verifier.threshold,
                ..RetinaFaceConfig::default()
            },
        )
        .context("cannot load the verifier")?;
        let objects = object_detector(&config.detect, &single)?;
        let mut provenance = BTreeMap::new();
        for p in [
            faces.provenance(),
            verifier.provenance(),
            objects.provenance(),
        ] {
            provenance.insert(p.name.clone(), p.blake3.clone());
        }
        let onnxruntime = faces.provenance().onnxruntime.clone();
        Ok(Models {
            faces,
            fast,
            verifier,
            objects,
            provenance,
            onnxruntime,
        })
    }

    fn face_boxes(&self, img: &image::RgbImage) -> anyhow::Result<Vec<BBox>> {
        let dets = if self.fast {
            let c = CenterFaceConfig::fast(img.dimensions());
            self.faces
                .detect_at(img, c.scale.unwrap_or(img.dimensions()), c.threshold)?
        } else {
            self.faces.detect(img)?
        };
        Ok(dets.into_iter().map(|d| d.bbox).collect())
    }

    fn persons(&self, img: &image::RgbImage) -> anyhow::Result<Vec<BBox>> {
        Ok(self
            .objects
            .detect(img)?
            .into_iter()
            .filter(|d| d.class_id == 0)
            .map(|d| d.bbox)
            .collect())
    }
}

/// Time spent per stage, summed over the run (the threads overlap, so these add up to more
/// than the wall time).
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageTimes {
    pub select: Duration,
    pub decode_wait: Duration,
    pub face_detect: Duration,
    pub redact: Duration,
    pub verify: Duration,
    pub object_detect: Duration,
    pub emit: Duration,
}

pub(crate) struct Ctx<'a> {
    pub models: &'a Models,
    pub config: &'a Config,
    pub config_blake3: String,
    pub ffmpeg: String,
    pub catalog_store: Arc<dyn Store>,
    /// Where clips may be read from.
    pub sources: Sources,
    pub s3: S3Options,
    /// Frames go here as they are emitted when the dataset is written to S3.
    pub upload: Option<crossbeam_channel::Sender<(String, bytes::Bytes)>>,
    pub times: StageTimes,
}

/// Why a selected clip is not (wholly) in the dataset: a stable code and a short message built
/// from ClearFrame's own checks and ffmpeg's error lines only.
#[derive(Debug)]
pub(crate) enum ClipError {
    /// Left out on purpose (the indoor policy `exclude`): not a failure.
    Policy(String),
    Failed {
        code: FailureCode,
        reason: String,
    },
}

impl ClipError {
    pub(crate) fn failed(code: FailureCode, reason: impl Into<String>) -> Self {
        ClipError::Failed {
            code,
            reason: reason.into(),
        }
    }
    /// A failure of ClearFrame's own machinery (an output that could not be written, a thread).
    pub(crate) fn internal(e: anyhow::Error) -> Self {
        Self::failed(FailureCode::Internal, format!("{e:#}"))
    }
    pub(crate) fn model(e: anyhow::Error) -> Self {
        Self::failed(FailureCode::Model, format!("{e:#}"))
    }
    pub(crate) fn code(&self) -> FailureCode {
        match self {
            ClipError::Policy(_) => FailureCode::IndoorExcluded,
            ClipError::Failed { code, .. } => *code,
        }
    }
    pub(crate) fn reason(&self) -> &str {
        match self {
            ClipError::Policy(r) | ClipError::Failed { reason: r, .. } => r,
        }
    }
}

fn source_code(e: &SourceError) -> FailureCode {
    match e {
        SourceError::NotFound { .. } => FailureCode::SourceMissing,
        SourceError::NotRegular { .. } => FailureCode::SourceNotRegular,
        SourceError::Escapes { .. } => FailureCode::SourceOutsideFolder,
        SourceError::TooLarge { .. } => FailureCode::LimitBytes,
        SourceError::Changed { .. } => FailureCode::SourceChanged,
        SourceError::Io { .. } => FailureCode::SourceUnreadable,
    }
}

impl From<SourceError> for ClipError {
    fn from(e: SourceError) -> Self {
        Self::failed(source_code(&e), e.to_string())
    }
}

impl From<MediaError> for ClipError {
    fn from(e: MediaError) -> Self {
        use crate::media::Limit;
        let code = match &e {
            MediaError::Source(s) => source_code(s),
            MediaError::Decode { .. } => FailureCode::NotAVideo,
            MediaError::Truncated { .. } => FailureCode::Truncated,
            MediaError::NoVideo { .. } => FailureCode::NoVideoStream,
            MediaError::NoFrames { .. } => FailureCode::NoFrames,
            MediaError::Stream { .. } => FailureCode::StreamInconsistent,
            MediaError::Unsupported { .. } => FailureCode::Unsupported,
            MediaError::Limit { limit, .. } => match limit {
                Limit::Pixels => FailureCode::LimitPixels,
                Limit::Duration => FailureCode::LimitDuration,
                Limit::Frames => FailureCode::LimitFrames,
                Limit::Bytes => FailureCode::LimitBytes,
            },
            MediaError::Spawn { .. }
            | MediaError::FrameSize { .. }
            | MediaError::Encode { .. }
            | MediaError::Io { .. } => FailureCode::Internal,
        };
        Self::failed(code, e.to_string())
    }
}

/// Opens a consented clip once, as a descriptor ffmpeg will read: relative URIs beneath the
/// catalog's folder (a local file: a regular file only, symlinks resolved inside that folder)
/// or in the catalog's store, `s3://` URIs in S3 (streamed once into a sealed memory file). The
/// blake3 is over exactly the bytes decoded; messages name the clip by its catalog URI, so a
/// failure reads the same whatever store it came from.
pub(crate) fn open_clip(ctx: &Ctx<'_>, clip: &ConsentedClip) -> Result<SourceFile, ClipError> {
    let uri = &clip.clip().uri;
    let max = ctx.config.limits.max_clip_bytes;
    let (store, key) = ctx
        .sources
        .resolve(&ctx.catalog_store, uri, &ctx.s3)
        .map_err(|e| match e {
            storage::StorageError::SourceNotAllowed { url, allowed } => ClipError::failed(
                FailureCode::SourceNotAllowed,
                format!("{uri}: {url} is outside the allowed sources ({allowed})"),
            ),
            e => {
                tracing::debug!(error = %e, "cannot resolve the clip");
                ClipError::failed(
                    FailureCode::SourceUnreadable,
                    format!("{uri}: cannot resolve the clip's location"),
                )
            }
        })?;
    if let Location::Local(root) = store.location() {
        return Ok(SourceFile::open_beneath(root, &key, uri, max)?);
    }
    let reader = store.reader(&key).map_err(|e| {
        tracing::debug!(error = %e, "cannot read the clip");
        if e.is_not_found() {
            ClipError::failed(FailureCode::SourceMissing, format!("{uri}: no such object"))
        } else {
            ClipError::failed(
                FailureCode::SourceUnreadable,
                format!("{uri}: the store refused to serve the clip"),
            )
        }
    })?;
    SourceFile::from_reader(reader, uri, max).map_err(|e| match e {
        SourceError::Io { source, .. } => {
            tracing::debug!(error = %source, "reading the clip failed");
            ClipError::failed(
                FailureCode::SourceUnreadable,
                format!("{uri}: reading the clip from the store failed"),
            )
        }
        e => e.into(),
    })
}

/// How one clip went: what was learnt about it, the frames withheld, the redaction numbers, and
/// whether it finished. Frames handed on before a failure stay handed on; every other decoded
/// frame is withheld with its reason, or the clip's failure accounts for it.
pub(crate) struct ClipResult {
    pub info: Option<ClipInfo>,
    pub withheld: Vec<WithheldFrame>,
    pub report: crate::redact::RedactionReport,
    pub frames: u64,
    pub outcome: Result<(), ClipError>,
}

/// The work a caller does on each redacted frame, on a pipeline thread of its own: object
/// detection and JPEG encoding (`run`), or lossless encoding (`redact`). Receives the clip, the
/// frame, the number of face masks on it and the number of faces the verifier found (all covered).
pub(crate) type FrameWork<'w, T> = dyn Fn(&str, &ClipInfo, &crate::redact::RedactedFrame, u32, u32) -> anyhow::Result<T>
    + Sync
    + 'w;

/// One clip: decode -> faces -> hold -> redact -> verify, then `work` on a third thread and
/// `consume` (in frame order) on this one.
pub(crate) fn process_clip<T: Send>(
    ctx: &mut Ctx<'_>,
    clip: &ConsentedClip,
    work: &FrameWork<'_, T>,
    consume: &mut dyn FnMut(&mut Ctx<'_>, T) -> anyhow::Result<()>,
) -> ClipResult {
    let mut result = ClipResult {
        info: None,
        withheld: Vec::new(),
        report: Default::default(),
        frames: 0,
        outcome: Ok(()),
    };
    result.outcome = redact_clip(ctx, clip, work, consume, &mut result);
    result
}

/// Checks the clip's privacy zones against `[limits]` before any work is done on it.
fn check_zones(c: &crate::records::CatalogClip, limits: &LimitsConfig) -> Result<(), ClipError> {
    if c.privacy_zones.len() > limits.max_zones {
        return Err(ClipError::failed(
            FailureCode::LimitZones,
            format!(
                "{}: {} privacy zones, over the limit of {}",
                c.uri,
                c.privacy_zones.len(),
                limits.max_zones
            ),
        ));
    }
    if let Some((i, z)) = c
        .privacy_zones
        .iter()
        .enumerate()
        .find(|(_, z)| z.len() > limits.max_zone_points)
    {
        return Err(ClipError::failed(
            FailureCode::LimitZones,
            format!(
                "{}: privacy zone {i} has {} points, over the limit of {}",
                c.uri,
                z.len(),
                limits.max_zone_points
            ),
        ));
    }
    Ok(())
}

/// What a withheld frame's record says when the clip failed before the frame could be finished.
const HELD_AT_FAILURE: &str =
    "the clip failed to decode before this frame's face hold could be completed";

fn redact_clip<T: Send>(
    ctx: &mut Ctx<'_>,
    clip: &ConsentedClip,
    work: &FrameWork<'_, T>,
    consume: &mut dyn FnMut(&mut Ctx<'_>, T) -> anyhow::Result<()>,
    result: &mut ClipResult,
) -> Result<(), ClipError> {
    let c = clip.clip();
    let indoor = (c.placement == Placement::Indoor).then_some(ctx.config.indoor.policy);
    let f = &ctx.config.faces;
    check_zones(c, &ctx.config.limits)?;
    let zones: Vec<Zone> = c
        .privacy_zones
        .iter()
        .map(|p| Zone {
            points: p.iter().map(|[x, y]| [*x as f32, *y as f32]).collect(),
        })
        .collect();
    let opts = RedactOptions {
        shape: f.shape,
        mask_scale: f.mask_scale,
        fill: f.fill,
        hold_frames: f.hold_frames,
        zones,
        indoor,
    };
    let mut redactor = match Redactor::new(opts) {
        Ok(r) => r,
        Err(crate::redact::RedactError::Excluded) => {
            return Err(ClipError::Policy(
                "indoor clip excluded by the indoor policy `exclude`".into(),
            ));
        }
        Err(e) => return Err(ClipError::internal(e.into())),
    };
    let source = open_clip(ctx, clip)?;
    let source_blake3 = source.blake3().to_owned();
    if let Some(expected) = &c.blake3
        && !expected.eq_ignore_ascii_case(&source_blake3)
    {
        return Err(ClipError::failed(
            FailureCode::Tampered,
            format!(
                "{}: blake3 {source_blake3} differs from the catalog's {}; not decoded",
                c.uri,
                expected.to_ascii_lowercase()
            ),
        ));
    }
    let sampling = ctx
        .config
        .sampling
        .fps
        .map(Sampling::Fps)
        .unwrap_or(Sampling::All);
    let decoder = Decoder::open(
        Input::Source {
            name: c.uri.clone(),
            source,
        },
        &DecodeOptions {
            sampling,
            limits: ctx.config.limits.decode(),
            ..DecodeOptions::default()
        },
    )?;
    let info = ClipInfo {
        width: decoder.info().width,
        height: decoder.info().height,
        zones: (0..c.privacy_zones.len())
            .map(|i| format!("zone-{i}"))
            .collect(),
        indoor_policy: match indoor {
            None => "none".to_string(),
            Some(p) => serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        },
        provenance: Provenance {
            source_blake3,
            consent: ConsentBasis::from(clip.basis()),
            models: ctx.models.provenance.clone(),
            config_blake3: ctx.config_blake3.clone(),
            clearframe_version: env!("CARGO_PKG_VERSION").to_string(),
            ffmpeg_version: ctx.ffmpeg.clone(),
            onnxruntime_version: ctx.models.onnxruntime.clone(),
        },
    };
    result.info = Some(info.clone());
    let models = ctx.models;
    let need_persons = indoor == Some(IndoorPolicy::BlurBackground);

    type Detected = (Frame, Vec<BBox>, Vec<BBox>);
    let (tx, rx) = bounded::<Result<Detected, ClipError>>(4);
    let mut hold: TemporalHold<(Frame, Vec<BBox>)> = TemporalHold::new(f.hold_frames);
    let mut face_time = Duration::ZERO;
    let withheld = &mut result.withheld;
    let emitted = &mut result.frames;
    let mut lost_in_hold: Vec<WithheldFrame> = Vec::new();
    let outcome: Result<(), ClipError> = std::thread::scope(|s| {
        let rx = rx;
        let detector = s.spawn(move || {
            let mut spent = Duration::ZERO;
            for frame in decoder {
                let item = frame.map_err(ClipError::from).and_then(|frame| {
                    crate::fault::point("face_detect", frame.index());
                    let t = Instant::now();
                    let faces = models.face_boxes(frame.image()).map_err(ClipError::model)?;
                    let persons = if need_persons {
                        models.persons(frame.image()).map_err(ClipError::model)?
                    } else {
                        Vec::new()
                    };
                    spent += t.elapsed();
                    Ok((frame, faces, persons))
                });
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    break;
                }
            }
            spent
        });
        // The caller's work on a third thread: redacted frames only. Results come back
        // unbounded (small) so neither side can block the other.
        let (otx, orx) = bounded::<(crate::redact::RedactedFrame, u32, u32)>(4);
        let (dtx, drx) = crossbeam_channel::unbounded::<anyhow::Result<T>>();
        let info = &info;
        let worker = s.spawn(move || {
            for (red, masks, found) in orx {
                if dtx
                    .send(work(&c.video_id, info, &red, masks, found))
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut handed_on = 0u64;
        let mut add = |ctx: &mut Ctx<'_>, item: anyhow::Result<T>| -> Result<(), ClipError> {
            consume(ctx, item.map_err(ClipError::internal)?).map_err(ClipError::internal)?;
            *emitted += 1;
            Ok(())
        };
        let mut finish_one = |ctx: &mut Ctx<'_>,
                              (frame, persons): (Frame, Vec<BBox>),
                              faces: Vec<BBox>,
                              held: usize|
         -> Result<(), ClipError> {
            let t = Instant::now();
            let cand = redactor.redact(frame, &faces, held, &persons);
            ctx.times.redact += t.elapsed();
            let t = Instant::now();
            let found: Vec<Detection> = models
                .verifier
                .detect(cand.image())
                .map_err(|e| ClipError::model(e.into()))?;
            let masks = cand.masks().len() as u32;
            let verdict = redactor.verify(cand, &found);
            ctx.times.verify += t.elapsed();
            match verdict {
                Verdict::Withheld { index, uncovered } => {
                    tracing::warn!(
                        frame = index,
                        faces = uncovered.len(),
                        "verifier found an uncovered face; frame withheld"
                    );
                    withheld.push(WithheldFrame {
                        video_id: c.video_id.clone(),
                        frame: index,
                        reason: format!(
                            "verifier found {} face(s) no mask covers",
                            uncovered.len()
                        ),
                    });
                }
                Verdict::Pass(red) => {
                    if otx.send((red, masks, found.len() as u32)).is_err() {
                        return Err(ClipError::internal(anyhow::anyhow!(
                            "the frame work thread stopped"
                        )));
                    }
                    handed_on += 1;
                }
            }
            Ok(())
        };
        let mut wait = Duration::ZERO;
        let mut received = 0u64;
        let mut go = || -> Result<(), ClipError> {
            loop {
                let t = Instant::now();
                let Ok(item) = rx.recv() else { break };
                wait += t.elapsed();
                let (frame, faces, persons) = match item {
                    Ok(d) => d,
                    Err(e) => {
                        // Frames waiting for their hold are not finished: withheld, with why.
                        for ((frame, _), _, _) in hold.flush() {
                            lost_in_hold.push(WithheldFrame {
                                video_id: c.video_id.clone(),
                                frame: frame.index(),
                                reason: HELD_AT_FAILURE.into(),
                            });
                        }
                        return Err(e);
                    }
                };
                if let Some((item, boxes, held)) = hold.push((frame, persons), faces) {
                    finish_one(ctx, item, boxes, held)?;
                }
                for done in drx.try_iter() {
                    received += 1;
                    add(ctx, done)?;
                }
            }
            for (item, boxes, held) in hold.flush() {
                finish_one(ctx, item, boxes, held)?;
            }
            Ok(())
        };
        let decoded = go();
        drop(otx);
        drop(rx);
        // Frames already redacted are handed on even when decoding failed later.
        let mut handed = Ok(());
        let mut returned = received;
        for done in drx.iter() {
            returned += 1;
            if handed.is_ok() {
                handed = add(ctx, done);
            }
        }
        ctx.times.decode_wait += wait;
        // A thread that panicked loses frames: the clip fails, it is never reported done.
        let detector_ok = match detector.join() {
            Ok(spent) => {
                face_time = spent;
                Ok(())
            }
            Err(_) => Err(ClipError::failed(
                FailureCode::Internal,
                format!("{}: face detection stopped unexpectedly (a bug)", c.uri),
            )),
        };
        let worker_ok = match worker.join() {
            Ok(()) if returned == handed_on => Ok(()),
            _ => Err(ClipError::failed(
                FailureCode::Internal,
                format!(
                    "{}: frame work stopped unexpectedly after {returned} of {handed_on} frames (a bug)",
                    c.uri
                ),
            )),
        };
        decoded.and(detector_ok).and(worker_ok).and(handed)
    });
    ctx.times.face_detect += face_time;
    result.withheld.append(&mut lost_in_hold);
    result.report = redactor.report().clone();
    tracing::debug!(
        frames = result.report.frames,
        masked = result.report.faces_masked,
        withheld = result.report.frames_withheld,
        "redaction"
    );
    outcome
}
