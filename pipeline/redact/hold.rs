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

/// Whether `a` and `b`, seen `frames` frames apart, may be one face: [`same_face`], or of similar
/// width (within 1.5x) with centres at most a face width a frame apart (a face crossing close to
/// the camera).
fn may_be_same(a: &BBox, b: &BBox, frames: usize) -> bool {
    if same_face(a, b) {
        return true;
    }
    let (wa, wb) = (a.x1 - a.x0, b.x1 - b.x0);
    if !(wa > 0.0 && wb > 0.0 && (wa / wb).max(wb / wa) <= 1.5) {
        return false;
    }
    let (dx, dy) = (
        (a.x0 + a.x1 - b.x0 - b.x1) / 2.0,
        (a.y0 + a.y1 - b.y0 - b.y1) / 2.0,
    );
    (dx * dx + dy * dy).sqrt() <= frames as f32 * wa.max(wb)
}

/// Looked-at frames on one side of a frame that was not: the nearest one's boxes and its distance
/// in frames, and the next one beyond it (boxes, distance from the nearest one), if known.
pub type Side<'a> = (&'a [BBox], usize, Option<(&'a [BBox], usize)>);

/// The boxes of a frame that was not looked at (see [`TemporalHold::push`]), from the nearest
/// frames that were, `prev` before and `next` after it. A face in both is interpolated. A face in
/// one only came or went in between: it is masked where it was seen and, when the looked-at frame
/// beyond gives its motion, where that motion takes it by this frame (a face crossing the frame
/// fast is not left behind).
pub fn between_boxes(prev: Option<Side<'_>>, next: Option<Side<'_>>) -> Vec<BBox> {
    // `b` moved to where its motion, seen against the frame `d` frames beyond it, takes it
    // `dist` frames the other way.
    let extrapolate = |b: &BBox, beyond: Option<(&[BBox], usize)>, dist: usize| {
        let (far, d) = beyond?;
        let q = far.iter().find(|q| may_be_same(b, q, d))?;
        let t = dist as f32 / d as f32;
        Some(BBox {
            x0: b.x0 + (b.x0 - q.x0) * t,
            y0: b.y0 + (b.y0 - q.y0) * t,
            x1: b.x1 + (b.x1 - q.x1) * t,
            y1: b.y1 + (b.y1 - q.y1) * t,
        })
    };
    let mut out = Vec::new();
    let mut used = vec![false; prev.map_or(0, |(p, _, _)| p.len())];
    let mut unmatched_next = Vec::new();
    // Pairs of one face on both sides, the most overlapping first: two faces close together
    // must not each be paired with the other's next sighting (each mask would then sit between
    // them).
    let mut pair_of: Vec<Option<usize>> = vec![None; next.map_or(0, |(n, _, _)| n.len())];
    if let (Some((p, _, _)), Some((n, _, _))) = (prev, next) {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (i, a) in p.iter().enumerate() {
            for (j, b) in n.iter().enumerate() {
                if same_face(a, b) {
                    pairs.push((a.iou(b), i, j));
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
        for (_, i, j) in pairs {
            if !used[i] && pair_of[j].is_none() {
                used[i] = true;
                pair_of[j] = Some(i);
            }
        }
    }
    if let Some((n, ahead, beyond)) = next {
        for (j, b) in n.iter().enumerate() {
            match (pair_of[j], prev) {
                (Some(i), Some((p, back, _))) => {
                    out.push(lerp_box(&p[i], b, back as f32 / (back + ahead) as f32));
                }
                _ => {
                    out.push(*b);
                    out.extend(extrapolate(b, beyond, ahead));
                    unmatched_next.push(*b);
                }
            }
        }
    }
    if let Some((p, back, beyond)) = prev {
        for (b, _) in p.iter().zip(&used).filter(|(_, u)| !**u) {
            out.push(*b);
            out.extend(extrapolate(b, beyond, back));
            // A face too fast to overlap itself across the gap (up to a face width a frame):
            // also masked on the way between, in addition to both ends (a wrong pairing of two
            // faces only adds a mask).
            if let Some((_, ahead, _)) = next {
                for n in unmatched_next
                    .iter()
                    .filter(|n| may_be_same(b, n, back + ahead))
                {
                    out.push(lerp_box(b, n, back as f32 / (back + ahead) as f32));
                }
            }
        }
    }
    out
}

/// Streaming temporal hold: delays items by `k` frames so that each one's mask set can look `k`
/// frames back and ahead (see [`held_boxes`]). Memory is bounded by `2k + 1` frames.
///
/// Frames pushed without detections (`None`: the face detector skipped them, see
/// [`crate::engine`]'s stride) get the boxes of the nearest looked-at frames on both sides
/// ([`between_boxes`]), all counted as held; the next looked-at frame must come within `k + 1`
/// frames, or the skipped frame is masked from the earlier side only.
pub struct TemporalHold<T> {
    k: usize,
    past: VecDeque<Vec<BBox>>,
    /// The last looked-at frame's detections and how many frames ago it was popped.
    last_seen: Option<(Vec<BBox>, usize)>,
    /// The looked-at frame before that one, and how many frames ago it was popped.
    seen_before: Option<(Vec<BBox>, usize)>,
    pending: VecDeque<(T, Option<Vec<BBox>>)>,
}

impl<T> TemporalHold<T> {
    /// A hold of `k` frames (`0`: no hold, no delay).
    pub fn new(k: usize) -> Self {
        Self {
            k,
            past: VecDeque::new(),
            last_seen: None,
            seen_before: None,
            pending: VecDeque::new(),
        }
    }

    /// Adds the next frame and its detections (`None`: not looked at); returns the frame `k`
    /// positions earlier with its boxes to mask and the number of held ones, once it is known.
    pub fn push(&mut self, item: T, dets: Option<Vec<BBox>>) -> Option<(T, Vec<BBox>, usize)> {
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
        for (_, ago) in self.last_seen.iter_mut().chain(self.seen_before.iter_mut()) {
            *ago += 1;
        }
        let (dets, filled) = match dets {
            Some(d) => {
                self.seen_before = self.last_seen.take();
                self.last_seen = Some((d.clone(), 0));
                (d, 0)
            }
            None => {
                let prev = self.last_seen.as_ref().map(|(b, back)| {
                    let beyond = self
                        .seen_before
                        .as_ref()
                        .map(|(f, d)| (f.as_slice(), *d - *back));
                    (b.as_slice(), *back, beyond)
                });
                let mut ahead = self
                    .pending
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, d))| d.as_deref().map(|d| (d, i + 1)));
                let next = ahead.next().map(|(n, a)| {
                    let beyond = ahead.next().map(|(f, a2)| (f, a2 - a));
                    (n, a, beyond)
                });
                let b = between_boxes(prev, next);
                let n = b.len();
                (b, n)
            }
        };
        let past: Vec<Vec<BBox>> = self.past.iter().cloned().collect();
        let future: Vec<Vec<BBox>> = self
            .pending
            .iter()
            .map(|(_, d)| d.clone().unwrap_or_default())
            .collect();
        let (boxes, added) = held_boxes(&past, &dets, &future, self.k);
        self.past.push_back(dets);
        if self.past.len() > self.k {
            self.past.pop_front();
        }
        Some((item, boxes, added + filled))
    }
}
