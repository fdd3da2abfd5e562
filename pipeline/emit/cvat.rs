//! `annotations/cvat/<video_id>.xml`: CVAT for video 1.1, one file per clip, in which detections
//! are linked across frames into tracks.
//!
//! CVAT frame numbers are the positions of the clip's emitted frames in manifest order (0, 1, ...),
//! which is the order CVAT gives them when a task is created from `frames/<video_id>/`; the
//! source frame index is in the manifest. The tracks come from [`super::track`] (constant-velocity
//! prediction, single-frame gaps filled, ids in order of first appearance); this module only
//! writes them. Every detection is a keyframe (`keyframe="1"`) with `source="auto"`; a frame a
//! track missed and the tracker bridged gets no box, because CVAT interpolates linearly between two
//! keyframes of a track (the box the tracker computed) and readers of the file that do not
//! interpolate (datumaro, FiftyOne) then see exactly the frame's detections. A track ends with an
//! `outside="1"` box at the first frame after its last sighting.

use std::fmt::Write;

use super::track::{self, BoxKind};
use super::{ManifestEntry, escape_xml};

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
    for (id, t) in track::tracks(frames, min_iou, track::MAX_GAP)
        .iter()
        .enumerate()
    {
        let _ = writeln!(
            s,
            "  <track id=\"{id}\" label=\"{}\" source=\"auto\">",
            escape_xml(&t.label)
        );
        for tb in &t.boxes {
            let outside = match tb.kind {
                BoxKind::Detected => false,
                BoxKind::Outside => true,
                BoxKind::Interpolated => continue,
            };
            let (frame, b) = (tb.frame, tb.bbox);
            let _ = writeln!(
                s,
                "    <box frame=\"{frame}\" keyframe=\"1\" outside=\"{}\" occluded=\"0\" xtl=\"{}\" ytl=\"{}\" xbr=\"{}\" ybr=\"{}\" z_order=\"0\"></box>",
                u8::from(outside),
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
    use crate::emit::track::tests::entry;

    #[test]
    fn a_bridged_gap_has_no_box_and_the_track_ends_outside() {
        // Fails on the old tracker: it wrote two tracks.
        let frames = [
            entry(0, &[("person", [0., 0., 20., 20.])]),
            entry(1, &[("person", [2., 0., 22., 20.])]),
            entry(2, &[]),
            entry(3, &[("person", [6., 0., 26., 20.])]),
            entry(4, &[]),
        ];
        let refs: Vec<_> = frames.iter().collect();
        let xml = render("v", &refs, &["person"], 0.3);
        assert_eq!(xml.matches("<track ").count(), 1, "{xml}");
        let boxes: Vec<&str> = xml.lines().filter(|l| l.contains("<box ")).collect();
        assert_eq!(boxes.len(), 4, "{xml}");
        for (line, (frame, outside)) in boxes.iter().zip([(0, 0), (1, 0), (3, 0), (4, 1)]) {
            assert!(
                line.contains(&format!(
                    "frame=\"{frame}\" keyframe=\"1\" outside=\"{outside}\""
                )),
                "{line}"
            );
        }
        assert!(boxes[3].contains("xtl=\"6.00\""), "{}", boxes[3]);
    }

    #[test]
    fn the_same_clip_gives_the_same_bytes() {
        let frames = [
            entry(
                0,
                &[
                    ("person", [0., 0., 20., 20.]),
                    ("person", [0., 0., 20., 20.]),
                ],
            ),
            entry(
                1,
                &[("car", [50., 0., 70., 20.]), ("person", [0., 0., 20., 20.])],
            ),
            entry(
                2,
                &[("person", [0., 0., 20., 20.]), ("car", [52., 0., 72., 20.])],
            ),
        ];
        let refs: Vec<_> = frames.iter().collect();
        let xml = render("v", &refs, &["person", "car"], 0.3);
        assert_eq!(xml, render("v", &refs, &["person", "car"], 0.3));
        assert!(xml.contains("<track id=\"0\" label=\"person\""), "{xml}");
        assert!(xml.contains("<track id=\"2\" label=\"car\""), "{xml}");
    }
}
