//! `annotations/cvat/<video_id>.xml`: CVAT for video 1.1, one file per clip, in which detections
//! are linked across frames into tracks.
//!
//! CVAT frame numbers are the positions of the clip's emitted frames in manifest order (0, 1, ...),
//! which is the order CVAT gives them when a task is created from `frames/<video_id>/`; the
//! source frame index is in the manifest. Tracks are built greedily per class: between two
//! consecutive emitted frames, the (track, detection) pairs of one class are taken in order of
//! decreasing IoU (ties: lower track id, then lower detection index) while IoU >= the threshold
//! and neither side is taken yet. An unmatched detection starts a new track; a track that finds no
//! match gets an `outside="1"` box at that frame and ends. Every detection is a keyframe with
//! `source="auto"`.

use std::fmt::Write;

use super::{ManifestEntry, escape_xml};
use crate::vision::BBox;

/// One track: label and `(cvat frame, box, outside)` triples.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Class name.
    pub label: String,
    /// Boxes in frame order; the last may be an `outside` marker.
    pub boxes: Vec<(u64, BBox, bool)>,
}

/// Links the detections of a clip's frames (in order) into tracks, as documented above.
pub fn tracks(frames: &[&ManifestEntry], min_iou: f32) -> Vec<Track> {
    let mut tracks: Vec<Track> = Vec::new();
    // Indices of tracks that have a box in the previous frame.
    let mut active: Vec<usize> = Vec::new();
    for (k, e) in frames.iter().enumerate() {
        let k = k as u64;
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for &t in &active {
            let (_, last, _) = *tracks[t].boxes.last().expect("tracks are never empty");
            for (j, d) in e.detections.iter().enumerate() {
                if d.class == tracks[t].label {
                    let iou = last.iou(&d.bbox);
                    if iou >= min_iou {
                        pairs.push((iou, t, j));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut det_taken = vec![false; e.detections.len()];
        let mut track_taken: Vec<usize> = Vec::new();
        for (_, t, j) in pairs {
            if det_taken[j] || track_taken.contains(&t) {
                continue;
            }
            det_taken[j] = true;
            track_taken.push(t);
            tracks[t].boxes.push((k, e.detections[j].bbox, false));
        }
        let mut next_active = track_taken.clone();
        for &t in &active {
            if !track_taken.contains(&t) {
                let (_, last, _) = *tracks[t].boxes.last().expect("tracks are never empty");
                tracks[t].boxes.push((k, last, true));
            }
        }
        for (j, d) in e.detections.iter().enumerate() {
            if !det_taken[j] {
                tracks.push(Track {
                    label: d.class.clone(),
                    boxes: vec![(k, d.bbox, false)],
                });
                next_active.push(tracks.len() - 1);
            }
        }
        next_active.sort_unstable();
        active = next_active;
    }
    tracks
}

/// A coordinate to two decimals, rounded from the value the manifest prints (the f32's shortest
/// decimal form, which is what every reader of the manifest parses), not from the f32's binary
/// expansion: 138.775 is written 138.775 in the manifest and must not become 138.77 here. The
/// rounding is the exact decimal one with ties to even, as `{:.2}` (and Python's `round`) do.
fn coord(v: f32) -> String {
    let shown: f64 = v.to_string().parse().unwrap_or(f64::from(v));
    match format!("{shown:.2}") {
        z if z == "-0.00" => "0.00".to_owned(),
        s => s,
    }
}

#[cfg(test)]
mod coord_tests {
    #[test]
    fn coordinates_round_like_the_manifest_reads() {
        // Regression: CVAT said 138.77 where the manifest's 138.775 reads 138.78.
        assert_eq!(super::coord(138.775), "138.78");
        assert_eq!(super::coord(1.0), "1.00");
        assert_eq!(super::coord(0.125), "0.12");
        assert_eq!(super::coord(8.875), "8.88");
        assert_eq!(super::coord(-0.001), "0.00");
    }
}

/// Renders one clip's XML. `frames` are the clip's entries in manifest order; `labels` the
/// label set declared in the task meta.
pub fn render(video_id: &str, frames: &[&ManifestEntry], labels: &[&str], min_iou: f32) -> String {
    let (w, h) = frames.first().map_or((0, 0), |e| (e.width, e.height));
    let size = frames.len();
    let mut s = String::new();
    s.push_str(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<annotations>\n  <version>1.1</version>\n",
    );
    s.push_str("  <meta>\n    <task>\n      <id>1</id>\n");
    let _ = writeln!(s, "      <name>{}</name>", escape_xml(video_id));
    let _ = writeln!(s, "      <size>{size}</size>");
    s.push_str("      <mode>interpolation</mode>\n      <overlap>0</overlap>\n");
    s.push_str("      <start_frame>0</start_frame>\n");
    let _ = writeln!(
        s,
        "      <stop_frame>{}</stop_frame>",
        size.saturating_sub(1)
    );
    s.push_str("      <frame_filter></frame_filter>\n      <labels>\n");
    for l in labels {
        let _ = writeln!(
            s,
            "        <label>\n          <name>{}</name>\n          <type>rectangle</type>\n          <attributes></attributes>\n        </label>",
            escape_xml(l)
        );
    }
    s.push_str("      </labels>\n");
    let _ = writeln!(
        s,
        "      <original_size>\n        <width>{w}</width>\n        <height>{h}</height>\n      </original_size>"
    );
    s.push_str("    </task>\n  </meta>\n");
    for (id, t) in tracks(frames, min_iou).iter().enumerate() {
        let _ = writeln!(
            s,
            "  <track id=\"{id}\" label=\"{}\" source=\"auto\">",
            escape_xml(&t.label)
        );
        for (frame, b, outside) in &t.boxes {
            let _ = writeln!(
                s,
                "    <box frame=\"{frame}\" keyframe=\"1\" outside=\"{}\" occluded=\"0\" xtl=\"{}\" ytl=\"{}\" xbr=\"{}\" ybr=\"{}\" z_order=\"0\"></box>",
                u8::from(*outside),
                coord(b.x0),
                coord(b.y0),
                coord(b.x1),
                coord(b.y1)
            );
        }
        s.push_str("  </track>\n");
    }
    s.push_str("</annotations>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::*;

    fn entry(frame: u64, dets: &[(&str, u32, [f32; 4])]) -> ManifestEntry {
        ManifestEntry {
            video_id: "v".into(),
            frame,
            timestamp_s: frame as f64,
            width: 100,
            height: 100,
            path: String::new(),
            blake3: String::new(),
            detections: dets
                .iter()
                .map(|(c, id, b)| EmittedDetection {
                    class: (*c).into(),
                    category_id: *id,
                    score: 0.9,
                    bbox: BBox {
                        x0: b[0],
                        y0: b[1],
                        x1: b[2],
                        y1: b[3],
                    },
                })
                .collect(),
            redaction: RedactionSummary {
                faces_masked: 0,
                zones: vec![],
                indoor_policy: "none".into(),
                verifier: VerifierResult {
                    passed: true,
                    faces_found: 0,
                },
            },
            provenance: Provenance {
                source_blake3: String::new(),
                consent: ConsentBasis {
                    kind: "k".into(),
                    event_id: "e".into(),
                    event_blake3: "h".into(),
                },
                models: Default::default(),
                config_blake3: String::new(),
                clearframe_version: String::new(),
                ffmpeg_version: String::new(),
                onnxruntime_version: String::new(),
            },
        }
    }

    #[test]
    fn greedy_iou_links_per_class_and_closes_tracks() {
        let a = entry(
            0,
            &[
                ("person", 1, [0., 0., 10., 10.]),
                ("car", 3, [50., 50., 90., 90.]),
            ],
        );
        // Person moved a little; a car box overlapping the person must not join its track.
        let b = entry(
            5,
            &[
                ("car", 3, [1., 1., 11., 11.]),
                ("person", 1, [1., 0., 11., 10.]),
            ],
        );
        let c = entry(10, &[("person", 1, [2., 0., 12., 10.])]);
        let t = tracks(&[&a, &b, &c], 0.3);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].label, "person");
        assert_eq!(
            t[0].boxes.iter().map(|b| (b.0, b.2)).collect::<Vec<_>>(),
            [(0, false), (1, false), (2, false)]
        );
        assert_eq!(t[1].label, "car");
        assert_eq!(
            t[1].boxes.iter().map(|b| (b.0, b.2)).collect::<Vec<_>>(),
            [(0, false), (1, true)]
        );
        assert_eq!(t[2].label, "car");
        assert_eq!(
            t[2].boxes.iter().map(|b| (b.0, b.2)).collect::<Vec<_>>(),
            [(1, false), (2, true)]
        );
    }

    #[test]
    fn greedy_prefers_the_highest_iou() {
        let a = entry(
            0,
            &[
                ("person", 1, [0., 0., 10., 10.]),
                ("person", 1, [8., 0., 18., 10.]),
            ],
        );
        let b = entry(1, &[("person", 1, [8., 0., 18., 10.])]);
        let t = tracks(&[&a, &b], 0.1);
        // The second track (exact match) wins; the first closes.
        assert_eq!(t[1].boxes.len(), 2);
        assert!(!t[1].boxes[1].2);
        assert!(t[0].boxes[1].2);
    }
}
