//! `clearframe evaluate`: the object detector, with a config's `[detect]` settings, on the images
//! of a labelled COCO file; writes COCO results (`[{image_id, category_id, bbox, score}]`) that
//! `pycocotools`' `loadRes` and `COCOeval` read (`benches/object_eval.py` reports per-class
//! recall, precision and mAP from them).
//!
//! It measures detection, not the pipeline: the images go to the detector as they are (the
//! pipeline detects on redacted frames, where faces are blurred). Images are read from files the
//! user names, decoded by the `image` crate (PNG, JPEG), and refused above the pipeline's
//! `limits.max_pixels`.

#![allow(clippy::print_stderr, reason = "a command: its summary goes to stderr")]

use std::path::{Path, PathBuf};
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
    /// Settings file; only `[detect]` (and `limits.max_pixels`) matter here.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the COCO results JSON.
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
    let started = Instant::now();
    let mut results = Vec::new();
    for im in &coco.images {
        let name = Path::new(&im.file_name);
        anyhow::ensure!(
            name.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "image {}: file_name {:?} must be a relative path inside {}",
            im.id,
            im.file_name,
            dir.display()
        );
        let path = dir.join(name);
        anyhow::ensure!(
            u64::from(im.width) * u64::from(im.height) <= config.limits.max_pixels,
            "{}: {}x{} is over limits.max_pixels",
            path.display(),
            im.width,
            im.height
        );
        let img = image::ImageReader::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .with_guessed_format()?
            .decode()
            .with_context(|| format!("cannot decode {}", path.display()))?
            .into_rgb8();
        anyhow::ensure!(
            (img.width(), img.height()) == (im.width, im.height),
            "{} is {}x{}, the COCO file says {}x{}",
            path.display(),
            img.width(),
            img.height(),
            im.width,
            im.height
        );
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
    std::fs::write(&args.out, out)
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
