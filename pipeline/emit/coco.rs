//! `annotations/coco.json`: COCO 1.0 object detection, the format pycocotools, datumaro (CVAT's
//! importer), FiftyOne and most trainers read.
//!
//! - `images[].file_name` is relative to the dataset's `frames/` folder (`<video_id>/<frame:06>.jpg`),
//!   so `frames/` is the image root (FiftyOne: `data_path="frames"`).
//! - Image and annotation ids count from 1 in manifest order.
//! - `bbox` is `[x, y, width, height]` in absolute pixels (2 decimals), `area` is
//!   `width * height`, `iscrowd` is 0, `segmentation` is `[]`, and `score` carries the detector's
//!   confidence.
//! - `categories` lists all 80 COCO classes with their official ids and supercategories.

use serde_json::json;

use super::{ManifestEntry, paths, round};
use crate::vision::coco as names;

/// Renders the COCO file for entries in manifest order (pretty JSON, trailing newline).
pub fn render(entries: &[&ManifestEntry]) -> Vec<u8> {
    let prefix = format!("{}/", paths::FRAMES_DIR);
    let mut images = Vec::with_capacity(entries.len());
    let mut annotations = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let image_id = i as u64 + 1;
        images.push(json!({
            "id": image_id,
            "file_name": e.path.strip_prefix(&prefix).unwrap_or(&e.path),
            "width": e.width,
            "height": e.height,
            "video_id": e.video_id,
            "frame": e.frame,
            "license": 0,
        }));
        for d in &e.detections {
            let x = round(f64::from(d.bbox.x0), 2);
            let y = round(f64::from(d.bbox.y0), 2);
            let w = round(f64::from(d.bbox.x1 - d.bbox.x0).max(0.0), 2);
            let h = round(f64::from(d.bbox.y1 - d.bbox.y0).max(0.0), 2);
            annotations.push(json!({
                "id": annotations.len() as u64 + 1,
                "image_id": image_id,
                "category_id": d.category_id,
                "bbox": [x, y, w, h],
                "area": round(w * h, 2),
                "iscrowd": 0,
                "segmentation": [],
                "score": round(f64::from(d.score), 4),
            }));
        }
    }
    let categories: Vec<_> = (0..names::NAMES.len())
        .map(|i| {
            json!({
                "id": names::CATEGORY_IDS[i],
                "name": names::NAMES[i],
                "supercategory": names::SUPERCATEGORIES[i],
            })
        })
        .collect();
    let doc = json!({
        "info": {
            "description": "ClearFrame redacted dataset; file_name is relative to frames/",
            "version": "1.0",
            "contributor": "clearframe",
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("COCO document serialises");
    out.push(b'\n');
    out
}
