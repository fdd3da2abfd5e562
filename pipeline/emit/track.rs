//! A small multi-object tracker: links the detections of one clip's emitted frames into tracks,
//! for the CVAT files ([`super::cvat`] renders them).
//!
//! Time is counted in emitted frames: frame `k` is the clip's `k`-th entry in manifest order,
//! which is CVAT's frame number. The tracker is SORT-like, written small:
//!
//! - **Motion.** Each track keeps its last detected box and a constant-velocity estimate of the
//!   box's centre and size, per emitted frame. The estimate is an alpha-beta filter with
//!   `alpha = 1` (the position is the detection itself: the boxes written are the detector's) and
//!   `beta =` [`VELOCITY_GAIN`]: on a match, `v += beta * ((z - last) / dt - v)`; the second
//!   sighting sets `v = (z - last) / dt`. A track with no estimate yet is predicted to stay where it
//!   was last seen.
//! - **Association.** Each live track is predicted to the current frame. Per class, the (track,
//!   detection) pairs whose IoU between the *predicted* box and the detection is at least the
//!   threshold (`track_iou`) are taken in order of decreasing IoU (ties: lower track id, then lower
//!   detection index) while neither side is taken yet.
//! - **Young tracks.** A track without a velocity estimate (one sighting) cannot predict a fast
//!   object, whose boxes in consecutive frames need not overlap at all. So, second, an unmatched
//!   track without an estimate may take an unmatched detection of its class when the constant
//!   velocity through the two (last box -> detection) predicts, one frame on, a box that a
//!   detection of the next frame overlaps by at least the threshold (three sightings in a line):
//!   greedy by that IoU, same tie-breaks. A static newcomer next to a lost track is not linked
//!   this way: the extrapolated box lies as far beyond it as the lost box lies before it.
//! - **Gaps.** A track that finds no detection stays live for up to `max_gap` frames
//!   ([`MAX_GAP`] in the dataset: it fills single-frame gaps). Matched again, the frames in
//!   between get the box interpolated linearly between the two sightings, corner by corner, which
//!   is what CVAT shows between two keyframes. Unmatched for more than `max_gap` frames, the
//!   track ends: an `outside` box at the first frame after its last sighting; a track whose last
//!   sighting is before the clip's last frame ends the same way at the end of the clip.
//! - **Jumps in source time.** Gaps are counted in emitted frames, never in source frames: the
//!   clip's expected step is the smallest difference between the source frame indices (the
//!   manifest's `frame`) of consecutive emitted frames, and a step more than [`JUMP_FACTOR`] times
//!   it (withheld frames, a discontinuity in sampling) is a jump. A gap is not bridged across a
//!   jump (the interpolated box would stand for time nobody saw): tracks in a gap end before it.
//!   Tracks seen in the frame just before a jump may continue across it, by IoU with their last
//!   box (no prediction across the jump), and start a new velocity estimate after it.
//!
//! Track ids are the order of first appearance (frame, then detection index in the manifest); the
//! same input gives the same tracks, and so byte-identical XML.

use super::ManifestEntry;
use crate::vision::BBox;

/// Frames a track may miss and still continue (the dataset's setting): single-frame gaps, such as
/// one missed detection, are filled; a track missing two frames in a row ends.
pub const MAX_GAP: u64 = 1;

/// A step in source frame index more than this many times the clip's smallest step is a jump.
pub const JUMP_FACTOR: u64 = 2;

/// `beta` of the alpha-beta velocity filter: how much of the newly measured velocity is taken.
pub const VELOCITY_GAIN: f32 = 0.5;

/// What a box of a track is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxKind {
    /// A detection of the frame (a CVAT keyframe).
    Detected,
    /// Interpolated over a gap between two detections (CVAT computes it from the keyframes; not
    /// written).
    Interpolated,
    /// The track ended: it is outside from this frame on (the box is the last detection).
    Outside,
}

/// One box of a track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackBox {
    /// Emitted frame number (CVAT frame).
    pub frame: u64,
    /// The box.
    pub bbox: BBox,
    /// What it is.
    pub kind: BoxKind,
}

/// One track: a label and its boxes in frame order, one per frame from its first sighting; the
/// last may be [`BoxKind::Outside`].
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Class name.
    pub label: String,
    /// Boxes in frame order.
    pub boxes: Vec<TrackBox>,
}

/// Centre x, centre y, width, height.
type State = [f32; 4];

fn state(b: &BBox) -> State {
    [
        (b.x0 + b.x1) / 2.0,
        (b.y0 + b.y1) / 2.0,
        b.x1 - b.x0,
        b.y1 - b.y0,
    ]
}

fn from_state(s: State) -> BBox {
    let (hw, hh) = (s[2].max(0.0) / 2.0, s[3].max(0.0) / 2.0);
    BBox {
        x0: s[0] - hw,
        y0: s[1] - hh,
        x1: s[0] + hw,
        y1: s[1] + hh,
    }
}

/// `s + v * dt`.
fn advance(s: State, v: State, dt: f32) -> State {
    std::array::from_fn(|i| s[i] + v[i] * dt)
}

/// Velocity per frame from `a` to `b`, `dt` frames apart.
fn velocity(a: &BBox, b: &BBox, dt: u64) -> State {
    let (a, b) = (state(a), state(b));
    std::array::from_fn(|i| (b[i] - a[i]) / dt as f32)
}

fn lerp(a: &BBox, b: &BBox, t: f32) -> BBox {
    let l = |u: f32, v: f32| u + (v - u) * t;
    BBox {
        x0: l(a.x0, b.x0),
        y0: l(a.y0, b.y0),
        x1: l(a.x1, b.x1),
        y1: l(a.y1, b.y1),
    }
}

/// A track that can still be matched.
struct Live {
    /// Index in the output (the track id).
    id: usize,
    /// Last detected box and its frame.
    last: BBox,
    seen: u64,
    /// Per-frame velocity of `state`, once estimated.
    velocity: Option<State>,
}

impl Live {
    fn predict(&self, k: u64) -> BBox {
        match self.velocity {
            None => self.last,
            Some(v) => from_state(advance(state(&self.last), v, (k - self.seen) as f32)),
        }
    }
}

/// Takes `(score, track id, detection index)` candidates greedily: decreasing score, then lower
/// track id, then lower detection index; each side at most once.
fn greedy(mut pairs: Vec<(f32, usize, usize)>) -> Vec<(usize, usize)> {
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut taken: Vec<(usize, usize)> = Vec::new();
    for (_, t, j) in pairs {
        if !taken.iter().any(|&(u, i)| u == t || i == j) {
            taken.push((t, j));
        }
    }
    taken
}

/// `jump[k]`: the source step from frame `k - 1` to frame `k` is a jump (see the module docs).
fn jumps(frames: &[&ManifestEntry]) -> Vec<bool> {
    let steps: Vec<u64> = frames
        .windows(2)
        .map(|w| w[1].frame.saturating_sub(w[0].frame))
        .collect();
    let expected = steps.iter().copied().filter(|&s| s > 0).min().unwrap_or(1);
    std::iter::once(false)
        .chain(
            steps
                .iter()
                .map(|&s| s > JUMP_FACTOR.saturating_mul(expected)),
        )
        .collect()
}

/// Links the detections of a clip's frames (in manifest order) into tracks, as documented above:
/// IoU threshold `min_iou`, gaps of up to `max_gap` frames filled.
pub fn tracks(frames: &[&ManifestEntry], min_iou: f32, max_gap: u64) -> Vec<Track> {
    let n = frames.len() as u64;
    let jump = jumps(frames);
    let mut out: Vec<Track> = Vec::new();
    // Sorted by id.
    let mut live: Vec<Live> = Vec::new();
    let end = |out: &mut Vec<Track>, l: &Live| {
        if l.seen + 1 < n {
            out[l.id].boxes.push(TrackBox {
                frame: l.seen + 1,
                bbox: l.last,
                kind: BoxKind::Outside,
            });
        }
    };
    for (k, e) in frames.iter().enumerate() {
        let jumped = jump[k];
        let k = k as u64;
        if jumped {
            // No gap is bridged across a jump, nor is motion extrapolated over it.
            for l in live.iter().filter(|l| l.seen + 1 < k) {
                end(&mut out, l);
            }
            live.retain(|l| l.seen + 1 == k);
            for l in &mut live {
                l.velocity = None;
            }
        }
        let dets = &e.detections;
        let label = |l: &Live| out[l.id].label.as_str();

        // Predicted boxes against detections.
        let mut pairs = Vec::new();
        for (t, l) in live.iter().enumerate() {
            let p = l.predict(k);
            for (j, d) in dets.iter().enumerate() {
                if d.class == label(l) {
                    let iou = p.iou(&d.bbox);
                    if iou >= min_iou {
                        pairs.push((iou, t, j));
                    }
                }
            }
        }
        let mut matched = greedy(pairs);

        // Tracks without a velocity: a constant velocity confirmed by the next frame.
        let next = frames
            .get(k as usize + 1)
            .filter(|_| !jumped && !jump[k as usize + 1]);
        if let Some(next) = next {
            let mut pairs = Vec::new();
            for (t, l) in live.iter().enumerate() {
                if l.velocity.is_some() || matched.iter().any(|&(u, _)| u == t) {
                    continue;
                }
                for (j, d) in dets.iter().enumerate() {
                    if d.class != label(l) || matched.iter().any(|&(_, i)| i == j) {
                        continue;
                    }
                    let v = velocity(&l.last, &d.bbox, k - l.seen);
                    let ahead = from_state(advance(state(&d.bbox), v, 1.0));
                    let best = next
                        .detections
                        .iter()
                        .filter(|d2| d2.class == d.class)
                        .map(|d2| ahead.iou(&d2.bbox))
                        .fold(0.0f32, f32::max);
                    if best >= min_iou {
                        pairs.push((best, t, j));
                    }
                }
            }
            matched.extend(greedy(pairs));
        }

        let mut det_taken = vec![false; dets.len()];
        for &(t, j) in &matched {
            det_taken[j] = true;
            let l = &mut live[t];
            let z = dets[j].bbox;
            let track = &mut out[l.id];
            let dt = k - l.seen;
            for g in l.seen + 1..k {
                track.boxes.push(TrackBox {
                    frame: g,
                    bbox: lerp(&l.last, &z, (g - l.seen) as f32 / dt as f32),
                    kind: BoxKind::Interpolated,
                });
            }
            track.boxes.push(TrackBox {
                frame: k,
                bbox: z,
                kind: BoxKind::Detected,
            });
            let measured = velocity(&l.last, &z, dt);
            l.velocity = if jumped {
                None
            } else {
                Some(match l.velocity {
                    None => measured,
                    Some(v) => std::array::from_fn(|i| v[i] + VELOCITY_GAIN * (measured[i] - v[i])),
                })
            };
            l.last = z;
            l.seen = k;
        }
        // Tracks unmatched for more than `max_gap` frames end, and so does every track unmatched
        // at a jump (a gap there would be filled across the jump when it is matched after it).
        let ends = |l: &Live| k - l.seen > max_gap || (jumped && l.seen != k);
        for l in live.iter().filter(|l| ends(l)) {
            end(&mut out, l);
        }
        live.retain(|l| !ends(l));
        for (j, d) in dets.iter().enumerate() {
            if !det_taken[j] {
                live.push(Live {
                    id: out.len(),
                    last: d.bbox,
                    seen: k,
                    velocity: None,
                });
                out.push(Track {
                    label: d.class.clone(),
                    boxes: vec![TrackBox {
                        frame: k,
                        bbox: d.bbox,
                        kind: BoxKind::Detected,
                    }],
                });
            }
        }
    }
    for l in &live {
        end(&mut out, l);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    //! Which of these fail on the tracker this replaced (greedy IoU between the boxes of
    //! consecutive frames, no gaps, no prediction): `a_missed_frame_is_filled`,
    //! `a_fast_box_stays_one_track`, `crossing_objects_keep_their_ids` and
    //! `classes_are_tracked_apart` (the person's missed frame). `a_gap_of_two_ends_the_track`,
    //! `a_gap_is_not_bridged_across_a_jump`, the determinism test and the two greedy tests pin
    //! behaviour both share. The XML's determinism is tested in [`super::super::cvat`].
    use super::*;
    use crate::emit::*;

    pub(crate) fn entry(frame: u64, dets: &[(&str, [f32; 4])]) -> ManifestEntry {
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
                .map(|(c, b)| EmittedDetection {
                    class: (*c).into(),
                    category_id: if *c == "person" { 1 } else { 3 },
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

    fn run(frames: &[ManifestEntry]) -> Vec<Track> {
        tracks(&frames.iter().collect::<Vec<_>>(), 0.3, MAX_GAP)
    }

    /// `(frame, kind)` of a track's boxes.
    fn kinds(t: &Track) -> Vec<(u64, BoxKind)> {
        t.boxes.iter().map(|b| (b.frame, b.kind)).collect()
    }

    fn bx(x0: f32, x1: f32) -> [f32; 4] {
        [x0, 0., x1, 20.]
    }

    use BoxKind::{Detected as D, Interpolated as I, Outside as O};

    #[test]
    fn greedy_links_per_class_and_closes_tracks() {
        let frames = [
            entry(
                0,
                &[
                    ("person", [0., 0., 10., 10.]),
                    ("car", [50., 50., 90., 90.]),
                ],
            ),
            // Person moved a little; a car box overlapping the person must not join its track.
            entry(
                5,
                &[("car", [1., 1., 11., 11.]), ("person", [1., 0., 11., 10.])],
            ),
            entry(10, &[("person", [2., 0., 12., 10.])]),
        ];
        let t = run(&frames);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].label, "person");
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, D)]);
        // The far car is kept through frame 1 (a possible gap), then ends at its next frame.
        assert_eq!(t[1].label, "car");
        assert_eq!(kinds(&t[1]), [(0, D), (1, O)]);
        assert_eq!(t[2].label, "car");
        assert_eq!(kinds(&t[2]), [(1, D), (2, O)]);
    }

    #[test]
    fn greedy_prefers_the_highest_iou() {
        let frames = [
            entry(
                0,
                &[
                    ("person", [0., 0., 10., 10.]),
                    ("person", [8., 0., 18., 10.]),
                ],
            ),
            entry(1, &[("person", [8., 0., 18., 10.])]),
        ];
        let t = tracks(&frames.iter().collect::<Vec<_>>(), 0.1, MAX_GAP);
        // The second track (exact match) wins; the first closes.
        assert_eq!(kinds(&t[1]), [(0, D), (1, D)]);
        assert_eq!(kinds(&t[0]), [(0, D), (1, O)]);
    }

    #[test]
    fn a_missed_frame_is_filled() {
        let frames = [
            entry(0, &[("person", bx(0., 20.))]),
            entry(1, &[("person", bx(2., 22.))]),
            entry(2, &[]),
            entry(3, &[("person", bx(6., 26.))]),
            entry(4, &[("person", bx(8., 28.))]),
        ];
        let t = run(&frames);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, I), (3, D), (4, D)]);
        let gap = t[0].boxes[2].bbox;
        assert_eq!((gap.x0, gap.x1), (4., 24.));
    }

    #[test]
    fn a_gap_of_two_ends_the_track() {
        let frames = [
            entry(0, &[("person", bx(0., 20.))]),
            entry(1, &[("person", bx(0., 20.))]),
            entry(2, &[]),
            entry(3, &[]),
            entry(4, &[("person", bx(0., 20.))]),
        ];
        let t = run(&frames);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, O)]);
        assert_eq!(kinds(&t[1]), [(4, D)]);
        // A gap at the end of the clip ends the track there too.
        let t = run(&frames[..3]);
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, O)]);
    }

    #[test]
    fn a_gap_is_not_bridged_across_a_jump() {
        // Source frames 0, 5, 10, 50, 55: the step to 50 is a jump (withheld frames).
        let at = |f: u64, d: bool| {
            let dets: &[(&str, [f32; 4])] = if d {
                &[("person", [0., 0., 20., 20.])]
            } else {
                &[]
            };
            entry(f, dets)
        };
        let t = run(&[
            at(0, true),
            at(5, true),
            at(10, false),
            at(50, true),
            at(55, true),
        ]);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, O)]);
        assert_eq!(kinds(&t[1]), [(3, D), (4, D)]);
        // Without the jump the same gap is filled.
        let t = run(&[
            at(0, true),
            at(5, true),
            at(10, false),
            at(15, true),
            at(20, true),
        ]);
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, I), (3, D), (4, D)]);
        // A track seen just before a jump continues across it.
        let t = run(&[at(0, true), at(5, true), at(50, true), at(55, true)]);
        assert_eq!(t.len(), 1, "{t:?}");
        // A track missed at the jump frame itself ends there: no box is interpolated for source
        // frame 50 from frames 5 and 55.
        let t = run(&[at(0, true), at(5, true), at(50, false), at(55, true)]);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, O)]);
        assert_eq!(kinds(&t[1]), [(3, D)]);
    }

    #[test]
    fn a_fast_box_stays_one_track() {
        // 10 wide, 20 per frame: consecutive boxes never overlap.
        let frames: Vec<_> = (0..6)
            .map(|k| {
                let x = 20. * k as f32;
                entry(k, &[("car", [x, 0., x + 10., 10.])])
            })
            .collect();
        let t = run(&frames);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].boxes.len(), 6);
        assert!(t[0].boxes.iter().all(|b| b.kind == D));
        // A single box next to a lost one, not moving on, is not linked to it.
        let frames = [
            entry(0, &[("car", [0., 0., 10., 10.])]),
            entry(1, &[("car", [20., 0., 30., 10.])]),
            entry(2, &[("car", [20., 0., 30., 10.])]),
        ];
        assert_eq!(run(&frames).len(), 2);
    }

    #[test]
    fn crossing_objects_keep_their_ids() {
        // A moves right, B left, 10 per frame; they cover each other at frame 4. From frame 5
        // on the manifest lists B first.
        let frames: Vec<_> = (0..9u64)
            .map(|k| {
                let a = ("person", bx(10. * k as f32, 10. * k as f32 + 20.));
                let b = ("person", bx(80. - 10. * k as f32, 100. - 10. * k as f32));
                entry(k, &if k < 5 { [a, b] } else { [b, a] })
            })
            .collect();
        let t = run(&frames);
        assert_eq!(t.len(), 2, "{t:?}");
        let x0 = |t: &Track| t.boxes.iter().map(|b| b.bbox.x0).collect::<Vec<_>>();
        assert_eq!(
            x0(&t[0]),
            (0..9).map(|k| 10. * k as f32).collect::<Vec<_>>()
        );
        assert_eq!(
            x0(&t[1]),
            (0..9).map(|k| 80. - 10. * k as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn classes_are_tracked_apart() {
        let frames = [
            entry(0, &[("person", bx(0., 20.)), ("car", bx(1., 21.))]),
            // The person is missed; the car at its place does not fill its gap.
            entry(1, &[("car", bx(0., 20.))]),
            entry(2, &[("car", bx(0., 20.)), ("person", bx(1., 21.))]),
        ];
        let t = run(&frames);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(
            (t[0].label.as_str(), t[1].label.as_str()),
            ("person", "car")
        );
        assert_eq!(kinds(&t[0]), [(0, D), (1, I), (2, D)]);
        assert_eq!(kinds(&t[1]), [(0, D), (1, D), (2, D)]);
    }

    #[test]
    fn ids_are_deterministic_in_order_of_first_appearance() {
        // Ties everywhere: identical boxes of one class, a track in a gap, one ending.
        let frames = [
            entry(0, &[("person", bx(0., 20.)), ("person", bx(0., 20.))]),
            entry(1, &[("car", bx(50., 70.)), ("person", bx(0., 20.))]),
            entry(
                2,
                &[
                    ("person", bx(0., 20.)),
                    ("person", bx(0., 20.)),
                    ("car", bx(52., 72.)),
                ],
            ),
            entry(3, &[("person", bx(60., 80.))]),
        ];
        let t = run(&frames);
        assert_eq!(t, run(&frames));
        let first: Vec<u64> = t.iter().map(|t| t.boxes[0].frame).collect();
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "{first:?}");
        // Both persons continue through the gap of one of them.
        assert_eq!(kinds(&t[0]), [(0, D), (1, D), (2, D), (3, O)]);
        assert_eq!(kinds(&t[1]), [(0, D), (1, I), (2, D), (3, O)]);
        assert_eq!(t[2].label, "car");
    }
}
