//! `annotations/labelstudio.json` and `annotations/labelstudio.xml`: Label Studio image tasks with
//! pre-annotations, and the labelling config they match.
//!
//! Each task is `{"data": {"image", "video_id", "frame"}, "predictions": [{"model_version",
//! "score", "result": [...]}]}`; each result item is a `rectanglelabels` region with
//! `from_name: "label"`, `to_name: "image"`, `original_width/height` and `x/y/width/height` in
//! percent of the image (4 decimals), as Label Studio documents for its import format. The config
//! declares `<Image name="image" value="$image"/>` and `<RectangleLabels name="label"
//! toName="image">` with the classes used. `data.image` is the frame path behind
//! [`super::EmitOptions::labelstudio_image_prefix`] (by default Label Studio's local-files URL,
//! with the dataset folder as `LOCAL_FILES_DOCUMENT_ROOT`).

use serde_json::json;

use super::{EmitOptions, ManifestEntry, escape_xml, round};

/// `model_version` of the predictions: the models by name with the first 12 hex digits of their
/// blake3, joined by `+` (e.g. `nanodet-plus-m@1a2b3c4d5e6f`).
pub fn model_version(e: &ManifestEntry) -> String {
    let parts: Vec<String> = e
        .provenance
        .models
        .iter()
        .map(|(name, hash)| format!("{name}@{}", hash.get(..12).unwrap_or(hash)))
        .collect();
    if parts.is_empty() {
        "unknown".into()
    } else {
        parts.join("+")
    }
}

/// Renders the tasks for entries in manifest order (pretty JSON, trailing newline).
pub fn render(entries: &[&ManifestEntry], options: &EmitOptions) -> Vec<u8> {
    let tasks: Vec<_> = entries
        .iter()
        .map(|e| {
            let (w, h) = (f64::from(e.width.max(1)), f64::from(e.height.max(1)));
            let result: Vec<_> = e
                .detections
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let x0 = f64::from(d.bbox.x0).clamp(0.0, w);
                    let y0 = f64::from(d.bbox.y0).clamp(0.0, h);
                    let x1 = f64::from(d.bbox.x1).clamp(x0, w);
                    let y1 = f64::from(d.bbox.y1).clamp(y0, h);
                    json!({
                        "id": format!("{}-{:06}-{}", e.video_id, e.frame, i + 1),
                        "type": "rectanglelabels",
                        "from_name": "label",
                        "to_name": "image",
                        "original_width": e.width,
                        "original_height": e.height,
                        "image_rotation": 0,
                        "score": round(f64::from(d.score), 4),
                        "value": {
                            "x": round(x0 / w * 100.0, 4),
                            "y": round(y0 / h * 100.0, 4),
                            "width": round((x1 - x0) / w * 100.0, 4),
                            "height": round((y1 - y0) / h * 100.0, 4),
                            "rotation": 0,
                            "rectanglelabels": [d.class],
                        },
                    })
                })
                .collect();
            let score = if e.detections.is_empty() {
                0.0
            } else {
                e.detections.iter().map(|d| f64::from(d.score)).sum::<f64>()
                    / e.detections.len() as f64
            };
            json!({
                "data": {
                    "image": format!("{}{}", options.labelstudio_image_prefix, e.path),
                    "video_id": e.video_id,
                    "frame": e.frame,
                },
                "predictions": [{
                    "model_version": model_version(e),
                    "score": round(score, 4),
                    "result": result,
                }],
            })
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&tasks).expect("tasks serialise");
    out.push(b'\n');
    out
}

/// The labelling config for the tasks, with one `<Label>` per class.
pub fn config(classes: &[&str]) -> String {
    let mut s = String::from(
        "<View>\n  <Image name=\"image\" value=\"$image\"/>\n  <RectangleLabels name=\"label\" toName=\"image\">\n",
    );
    for c in classes {
        s.push_str(&format!("    <Label value=\"{}\"/>\n", escape_xml(c)));
    }
    s.push_str("  </RectangleLabels>\n</View>\n");
    s
}
