//! `clearframe evaluate`: the object detector, with a config's `[detect]` settings, on the images
//! of a labelled COCO file; writes COCO results (`[{image_id, category_id, bbox, score}]`) that
//! `pycocotools`' `loadRes` and `COCOeval` read (`benches/object_eval.py` reports per-class
//! recall, precision and mAP from them).
//!
//! It measures detection, not the pipeline: the images go to the detector as they are (the
//! pipeline detects on redacted frames, where faces are blurred), and ONNX Runtime may use every
//! core (the pipeline gives the detector one), so its milliseconds compare settings, not
//! pipelines. Images are regular files inside the images folder (no symlinks), decoded by the
//! `image` crate (PNG, JPEG) only when their real size is within the pipeline's
//! `limits.max_pixels` and equals the COCO file's.

#![allow(clippy::print_stderr, reason = "a command: its summary goes to stderr")]

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Arguments of `clearframe evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A COCO file whose `images` are to be detected (its annotations are not read here).
    #[arg(long, value_name = "FILE")]
    pub coco: PathBuf,
    /// Folder the images' `file_name`s are relative to [default: `images/` beside the COCO file].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Settings file (checked whole); `[detect]`, `[inference]` and `limits.max_pixels` are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the COCO results JSON (a new or regular file; written whole, at the end).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Deserialize)]
struct CocoImages {
    images: Vec<CocoImage>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

/// One COCO result.
#[derive(Serialize)]
struct Result_ {
    image_id: u64,
    category_id: u32,
    bbox: [f64; 4],
    score: f64,
}

fn round2(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

/// Runs `clearframe evaluate`.
pub fn run_cli(args: &EvaluateArgs) -> anyhow::Result<ExitCode> {
    let config = Config::effective(args.config.as_deref(), None)?;
    let text = std::fs::read(&args.coco)
        .with_context(|| format!("cannot read {}", args.coco.display()))?;
    let coco: CocoImages = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a COCO file with images", args.coco.display()))?;
    let dir = match &args.images {
        Some(d) => d.clone(),
        None => args.coco.parent().unwrap_or(Path::new(".")).join("images"),
    };
    let detector = crate::engine::object_detector(
        &config.detect,
        &crate::inference::ModelOptions {
            device: config.inference.device,
            ..crate::inference::ModelOptions::default()
        },
    )?;
    anyhow::ensure!(
        !coco.images.is_empty(),
        "{} lists no images",
        args.coco.display()
    );
    let mut ids = std::collections::BTreeSet::new();
    for im in &coco.images {
        anyhow::ensure!(
            ids.insert(im.id),
            "{}: image id {} is listed twice",
            args.coco.display(),
            im.id
        );
    }
    // The output is checked before any work: a new file or a plain one, never through a link.
    crate::storage::check_output_file(&args.out)?;
    let started = Instant::now();
    let mut results = Vec::new();
    for im in &coco.images {
        let name = Path::new(&im.file_name);
        anyhow::ensure!(
            name.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                && name.components().any(|c| matches!(c, Component::Normal(_))),
            "image {}: file_name {:?} must name a file inside {}",
            im.id,
            im.file_name,
            dir.display()
        );
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("image {}: cannot open {}", im.id, path.display()))?;
        anyhow::ensure!(
            meta.file_type().is_file(),
            "image {}: {} is not a regular file (a link, a folder, ...)",
            im.id,
            path.display()
        );
        let open = || -> anyhow::Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
            Ok(image::ImageReader::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?
                .with_guessed_format()?)
        };
        let (w, h) = open()?
            .into_dimensions()
            .with_context(|| format!("cannot read the size of {}", path.display()))?;
        anyhow::ensure!(
            (w, h) == (im.width, im.height),
            "{} is {w}x{h}, the COCO file says {}x{}",
            path.display(),
            im.width,
            im.height
        );
        anyhow::ensure!(
            u64::from(w) * u64::from(h) <= config.limits.max_pixels,
            "{}: {w}x{h} is over limits.max_pixels ({})",
            path.display(),
            config.limits.max_pixels
        );
        let img = open()?
            .decode()
            .with_context(|| format!("cannot decode {}", path.display()))?
            .into_rgb8();
        for d in detector.detect(&img)? {
            let b = d.bbox;
            results.push(Result_ {
                image_id: im.id,
                category_id: crate::vision::coco::CATEGORY_IDS[usize::from(d.class_id)],
                bbox: [
                    round2(b.x0),
                    round2(b.y0),
                    round2(b.width()),
                    round2(b.height()),
                ],
                score: (f64::from(d.score) * 1e4).round() / 1e4,
            });
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = serde_json::to_vec(&results)?;
    out.push(b'\n');
    // Whole or not at all: a temporary file beside the output, renamed over it.
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    crate::storage::set_file_mode(tmp.as_file())?;
    std::io::Write::write_all(&mut tmp, &out)?;
    tmp.persist(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "evaluate: {} images, {} detections, {:.1} ms per image; results in {}",
        coco.images.len(),
        results.len(),
        elapsed * 1e3 / coco.images.len().max(1) as f64,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
