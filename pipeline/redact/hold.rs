//! Holding faces over short gaps: a face stays masked for `k` frames after it was last seen, and
//! boxes are interpolated between detections, so one missed detection does not expose a face.

use std::collections::VecDeque;

use crate::vision::BBox;

/// Linear interpolation between two boxes (`t` = 0: `a`, 1: `b`).
pub fn lerp_box(a: &BBox, b: &BBox, t: f32) -> BBox {
    let l = |p: f32, q: f32| p + (q - p) * t;
    BBox {
        x0: l(a.x0, b.x0),
        y0: l(a.y0, b.y0),
        x1: l(a.x1, b.x1),
        y1: l(a.y1, b.y1),
    }
}

/// Whether two boxes are the same face in nearby frames: they overlap (IoU > 0.1) or the centre of
/// one lies inside the other.
pub fn same_face(a: &BBox, b: &BBox) -> bool {
    let ix = (a.x1.min(b.x1) - a.x0.max(b.x0)).max(0.0);
    let iy = (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0);
    let inter = ix * iy;
    let area = |r: &BBox| (r.x1 - r.x0).max(0.0) * (r.y1 - r.y0).max(0.0);
    let union = area(a) + area(b) - inter;
    let inside = |p: &BBox, q: &BBox| {
        let (cx, cy) = ((p.x0 + p.x1) / 2.0, (p.y0 + p.y1) / 2.0);
        cx >= q.x0 && cx <= q.x1 && cy >= q.y0 && cy <= q.y1
    };
    (union > 0.0 && inter / union > 0.1) || inside(a, b) || inside(b, a)
}

/// The boxes to mask in one frame: its own detections `current`, plus every face of the `past`
/// frames (oldest first, at most `k`) that is not seen again before this frame — interpolated
/// towards its next sighting in `future` (nearest first) when that lies within `k` frames of the
/// past sighting, held in place otherwise. Returns the boxes and how many were added.
pub fn held_boxes(
    past: &[Vec<BBox>],
    current: &[BBox],
    future: &[Vec<BBox>],
    k: usize,
) -> (Vec<BBox>, usize) {
    let mut out = current.to_vec();
    let np = past.len();
    for (pi, frame) in past.iter().enumerate() {
        let back = np - pi; // distance from the current frame
        if back > k {
            continue;
        }
        'faces: for b in frame {
            // Seen again in a later past frame or in this one: represented there.
            if past[pi + 1..]
                .iter()
                .any(|f| f.iter().any(|o| same_face(b, o)))
                || current.iter().any(|o| same_face(b, o))
            {
                continue;
            }
            for (fi, f) in future.iter().enumerate() {
                let ahead = fi + 1;
                if back + ahead > k + 1 {
                    break;
                }
                if let Some(m) = f.iter().find(|o| same_face(b, o)) {
                    out.push(lerp_box(b, m, back as f32 / (back + ahead) as f32));
                    continue 'faces;
                }
            }
            out.push(*b);
        }
    }
    let added = out.len() - current.len();
    (out, added)
}

/// Streaming temporal hold: delays items by `k` frames so that each one's mask set can look `k`
/// frames back and ahead (see [`held_boxes`]). Memory is bounded by `2k + 1` frames.
pub struct TemporalHold<T> {
    k: usize,
    past: VecDeque<Vec<BBox>>,
    pending: VecDeque<(T, Vec<BBox>)>,
}

impl<T> TemporalHold<T> {
    /// A hold of `k` frames (`0`: no hold, no delay).
    pub fn new(k: usize) -> Self {
        Self {
            k,
            past: VecDeque::new(),
            pending: VecDeque::new(),
        }
    }

    /// Adds the next frame and its detections; returns the frame `k` positions earlier with its
    /// boxes to mask and the number of held ones, once it is known.
    pub fn push(&mut self, item: T, dets: Vec<BBox>) -> Option<(T, Vec<BBox>, usize)> {
        self.pending.push_back((item, dets));
        if self.pending.len() > self.k {
            self.pop()
        } else {
            None
        }
    }

    /// Emits the remaining frames at the end of the clip.
    pub fn flush(&mut self) -> Vec<(T, Vec<BBox>, usize)> {
        let mut out = Vec::new();
        while let Some(x) = self.pop() {
            out.push(x);
        }
        out
    }

    fn pop(&mut self) -> Option<(T, Vec<BBox>, usize)> {
        let (item, dets) = self.pending.pop_front()?;
        let past: Vec<Vec<BBox>> = self.past.iter().cloned().collect();
        let future: Vec<Vec<BBox>> = self.pending.iter().map(|(_, d)| d.clone()).collect();
        let (boxes, added) = held_boxes(&past, &dets, &future, self.k);
        self.past.push_back(dets);
        if self.past.len() > self.k {
            self.past.pop_front();
        }
        Some((item, boxes, added))
    }
}
