//! The engine: the redaction [`stream`] every command shares (decode -> faces -> hold -> redact
//! -> gate), and around it, for catalog clips (`run` and `redact`), the loaded models, opening a
//! consented clip, its limits and provenance, and typed clip failures ([`ClipError`]).
//! Unredacted frames exist only in memory, in bounded channels; every decoded frame ends handed
//! on, withheld with its reason, or in the clip's failure.

mod error;
pub(crate) mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

pub(crate) use error::ClipError;
use stream::{Finders, Verify, redact_stream};

use crate::config::{Config, DetectConfig, FaceModel, LimitsConfig};
use crate::consent::ConsentedClip;
use crate::emit::clip::ClipInfo;
use crate::emit::{ConsentBasis, Provenance, WithheldFrame};
use crate::inference::ModelOptions;
use crate::media::{DecodeOptions, Decoder, Input, Sampling, SourceError, SourceFile};
use crate::records::{FailureCode, Placement};
use crate::redact::{IndoorPolicy, RedactOptions, RedactedFrame, Redactor, Zone};
use crate::storage::{self, Location, S3Options, Sources, Store};
use crate::vision::centerface::{CenterFaceConfig, CenterFaceVariant, FaceFinder};
use crate::vision::nanodet::{NanoDet, NanoDetConfig, Tiling};
use crate::vision::retinaface::{RetinaFace, RetinaFaceConfig};

/// The loaded models of a run.
pub(crate) struct Models {
    faces: FaceFinder,
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
        input: detect.input,
        tiling: (detect.tile_size > 0).then_some(Tiling {
            size: detect.tile_size,
            overlap: detect.tile_overlap,
        }),
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
pub(crate) fn single_thread_options(device: crate::inference::Device) -> ModelOptions {
    ModelOptions {
        intra_spinning: Some(false),
        intra_threads: Some(1),
        device,
        ..ModelOptions::default()
    }
}

/// What the models of a configuration are, without loading any: each model's manifest name and
/// pinned blake3 (a model is loaded only when its file has that hash), and the ONNX Runtime
/// version. A work-folder key made from this equals one made from the loaded models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelIds {
    pub provenance: BTreeMap<String, String>,
    pub onnxruntime: String,
}

impl ModelIds {
    /// The models `config` runs, from the manifest.
    pub(crate) fn of(config: &Config) -> anyhow::Result<ModelIds> {
        let face = match config.faces.model {
            FaceModel::Reference => CenterFaceVariant::Reference,
            FaceModel::Clean => CenterFaceVariant::Clean,
            FaceModel::Int8 | FaceModel::Fast => CenterFaceVariant::Int8,
        };
        Self::named(&[
            face.model_name(),
            crate::vision::retinaface::MODEL_NAME,
            config.detect.model.model_name(),
        ])
    }

    /// The object detector `detect` runs, from the manifest.
    pub(crate) fn of_detector(detect: &DetectConfig) -> anyhow::Result<ModelIds> {
        Self::named(&[detect.model.model_name()])
    }

    fn named(names: &[&str]) -> anyhow::Result<ModelIds> {
        let dir = crate::inference::models_dir();
        let manifest = crate::inference::Manifest::load(&dir)?;
        let mut provenance = BTreeMap::new();
        for name in names {
            let entry = manifest
                .models
                .get(*name)
                .ok_or_else(|| anyhow::anyhow!("model {name:?} is not in {}", dir.display()))?;
            provenance.insert((*name).to_owned(), entry.blake3.clone());
        }
        Ok(ModelIds {
            provenance,
            onnxruntime: crate::inference::runtime()?.version().to_owned(),
        })
    }
}

impl Models {
    /// The models' names, blake3 and runtime, as [`ModelIds`].
    pub(crate) fn ids(&self) -> ModelIds {
        ModelIds {
            provenance: self.provenance.clone(),
            onnxruntime: self.onnxruntime.clone(),
        }
    }

    pub(crate) fn load(config: &Config) -> anyhow::Result<Models> {
        let f = &config.faces;
        // Face detection may use both cores when the other pipeline threads wait (measured: a
        // little faster than one thread).
        let opts = ModelOptions {
            intra_spinning: Some(false),
            device: config.inference.device,
            ..ModelOptions::default()
        };
        let variant = match f.model {
            FaceModel::Reference => Some(CenterFaceVariant::Reference),
            FaceModel::Clean => Some(CenterFaceVariant::Clean),
            FaceModel::Int8 => Some(CenterFaceVariant::Int8),
            FaceModel::Fast => None,
        };
        let faces = match variant {
            Some(variant) => FaceFinder::new(
                &opts,
                CenterFaceConfig {
                    threshold: f.threshold,
                    scale: f.scale.map(|[w, h]| (w, h)),
                    variant,
                },
            ),
            None => FaceFinder::fast(&opts),
        }
        .context("cannot load the face detector")?;
        let single = single_thread_options(config.inference.device);
        let verifier = RetinaFace::new(
            &single,
            RetinaFaceConfig {
                threshold: config.verifier.threshold,
                ..RetinaFaceConfig::default()
            },
        )
        .context("cannot load the verifier")?;
        // The object detector's input is 416x416 whatever the frame size: on small frames it is
        // the slowest step of the stream, so it may use both cores (ONNX Runtime's pool, not
        // spinning) when the other threads leave one idle.
        let objects = object_detector(
            &config.detect,
            &ModelOptions {
                intra_threads: None,
                ..single.clone()
            },
        )?;
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
            verifier,
            objects,
            provenance,
            onnxruntime,
        })
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
    pub times: StageTimes,
}

/// Opens a consented clip once, as a descriptor ffmpeg will read: relative URIs beneath the
/// catalog's folder (a local file: a regular file only, symlinks resolved inside that folder)
/// or in the catalog's store, `s3://` URIs in S3 (streamed once into a sealed memory file). The
/// blake3 is over exactly the bytes decoded; messages name the clip by its catalog URI, so a
/// failure reads the same whatever store it came from.
pub(crate) fn open_clip(ctx: &Ctx<'_>, clip: &ConsentedClip) -> Result<SourceFile, ClipError> {
    crate::audit::note_clip_read(&clip.clip().video_id);
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
    /// blake3 of the clip's bytes, once it was opened (also when decoding then failed).
    pub source_blake3: Option<String>,
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
    consume: &mut dyn FnMut(&mut StageTimes, T) -> anyhow::Result<()>,
) -> ClipResult {
    let mut result = ClipResult {
        info: None,
        source_blake3: None,
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

fn redact_clip<T: Send>(
    ctx: &mut Ctx<'_>,
    clip: &ConsentedClip,
    work: &FrameWork<'_, T>,
    consume: &mut dyn FnMut(&mut StageTimes, T) -> anyhow::Result<()>,
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
        stride: f.stride,
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
    result.source_blake3 = Some(source_blake3.clone());
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
    let sampling = ctx.config.sampling.fps.map_or(Sampling::All, Sampling::Fps);
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
    let finders = Finders {
        faces: &ctx.models.faces,
        persons: (indoor == Some(IndoorPolicy::BlurBackground)).then_some(&ctx.models.objects),
        // Sampled frames (`--fps`) are far apart in time: each one is looked at.
        stride: if ctx.config.sampling.fps.is_some() {
            1
        } else {
            f.stride
        },
    };
    let video_id = c.video_id.as_str();
    let info = &info;
    let mut frame_work = |red: RedactedFrame, found: u32| {
        let masks = red.masks() as u32;
        work(video_id, info, &red, masks, found)
    };
    let times = &mut ctx.times;
    let mut take = |item: T| consume(times, item);
    let streamed = redact_stream(
        decoder,
        &finders,
        &mut redactor,
        f.hold_frames,
        &Verify(&ctx.models.verifier),
        &mut frame_work,
        &mut take,
    );
    let t = streamed.times;
    ctx.times.decode_wait += t.wait;
    ctx.times.face_detect += t.face_detect;
    ctx.times.redact += t.redact;
    ctx.times.verify += t.gate;
    result.frames = streamed.consumed;
    result.withheld.extend(
        streamed
            .withheld
            .into_iter()
            .map(|(frame, reason)| WithheldFrame {
                video_id: c.video_id.clone(),
                frame,
                reason,
            }),
    );
    result.report = redactor.report().clone();
    tracing::debug!(
        frames = result.report.frames,
        masked = result.report.faces_masked,
        withheld = result.report.frames_withheld,
        "redaction"
    );
    streamed.result
}
