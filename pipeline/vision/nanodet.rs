//! NanoDet-m (`nanodet_coco.onnx`): persons and the other 79 COCO classes.
//!
//! The network takes a fixed 416x416 BGR tensor normalised with mean (103.53, 116.28, 123.675)
//! and std (57.375, 57.12, 58.395). For each stride 8, 16 and 32 it gives a class tensor
//! `[1, K, 80]` (already sigmoid) and a box tensor `[1, K, 44]`: for each side (left, top, right,
//! bottom) 11 bins whose softmax expectation times the stride is the distance from the grid point
//! `(col * stride, row * stride)`. The output names say nothing, so tensors are matched by shape.
//!
//! How a frame reaches the 416x416 input ([`InputMode`]): `letterbox` (default) scales it to fit
//! with its aspect kept and pads the rest with the mean colour; `stretch` (the old way) squeezes
//! it, so a 2.35:1 street frame's cars come out a third of their width. A frame much larger
//! than the input is also cut into overlapping tiles ([`Tiling`]) that each go through the network
//! at (about) native resolution: a pedestrian 60 px tall in a 1536 px frame is 16 px after a
//! whole-frame letterbox, too small for the stride-8 head, but 60 px in a tile. The whole-frame
//! pass still runs and finds the objects too large for a tile. A tile's box that touches one of
//! the tile's inner edges (an edge inside the frame) is a cut object and is dropped; such objects
//! are whole in the neighbouring tile (when smaller than the overlap) or in the whole-frame pass.
//! With tiles, the whole-frame pass keeps only boxes at least as large as the overlap: a smaller
//! object is whole in some tile, at native resolution, where its box is better.
//! Every class above its own threshold becomes a candidate; NMS runs per class over all passes.

use image::RgbImage;

use super::{
    Detection, VisionError, coco,
    geometry::{BBox, nms_per_class},
    preprocess::{ChannelOrder, TensorLayout, to_tensor},
};
use crate::inference::{Model, ModelOptions, ModelProvenance};

/// Manifest name of the float32 model.
pub const MODEL_NAME: &str = "nanodet_coco";

/// Manifest name of the INT8 model (`scripts/quantize-detectors.sh`).
pub const INT8_MODEL_NAME: &str = "nanodet_int8";

/// Which NanoDet build runs (`detect.model` in a run's config: `reference` or `int8`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NanoDetVariant {
    /// The float32 model as converted from the npm package.
    #[default]
    Reference,
    /// The network body statically quantised to INT8 (heads float): about 3x faster on one
    /// thread; with the stretched input every reference person kept on the test frames, with the
    /// default letterbox 16 of 18 (`tests/vision.rs`).
    Int8,
}

impl NanoDetVariant {
    /// The model's manifest name.
    pub fn model_name(self) -> &'static str {
        match self {
            NanoDetVariant::Reference => MODEL_NAME,
            NanoDetVariant::Int8 => INT8_MODEL_NAME,
        }
    }
}

/// Network input side.
pub const INPUT_SIZE: u32 = 416;

/// Default per-class score threshold.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// The lowest person score [`NanoDet::persons`] (the indoor `blur_background` pass) keeps sharp.
pub const PRIVACY_PERSON_THRESHOLD: f32 = 0.5;

/// Default tile side in frame pixels: a 640 px tile is scaled to the 416 px input (0.65x).
pub const DEFAULT_TILE_SIZE: u32 = 640;

/// Default overlap of neighbouring tiles, as a fraction of the tile side.
pub const DEFAULT_TILE_OVERLAP: f32 = 0.25;

/// Tiles run only on frames whose longer side exceeds the tile side by this factor.
const TILE_MIN_RATIO: f32 = 1.25;

/// How a frame (or a tile) is fitted to the network's square input.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// Scaled to fit with its aspect ratio kept; the rest of the input is the mean colour.
    #[default]
    Letterbox,
    /// Stretched to 416x416 whatever its aspect (the detector's original preprocessing).
    Stretch,
}

/// Overlapping tiles for frames larger than the network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tiling {
    /// Tile side in frame pixels (letterboxed to the input: 416 means native resolution).
    pub size: u32,
    /// Overlap of neighbouring tiles, as a fraction of `size` (0 to 0.75).
    pub overlap: f32,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            size: DEFAULT_TILE_SIZE,
            overlap: DEFAULT_TILE_OVERLAP,
        }
    }
}

/// A rectangle of the frame that goes through the network: `(x, y, w, h)` in frame pixels, and
/// whether each side (left, top, right, bottom) lies inside the frame (an inner tile edge).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    inner: [bool; 4],
}

/// Start offsets of `n` windows of `size` covering `0..len` with at least `overlap` between
/// neighbours, spread evenly (first at 0, last ending at `len`).
fn tile_starts(len: u32, size: u32, overlap: f32) -> Vec<u32> {
    if len <= size {
        return vec![0];
    }
    let step = (size as f32 * (1.0 - overlap)).max(1.0);
    let n = ((len - size) as f32 / step).ceil() as u32 + 1;
    (0..n)
        .map(|i| ((u64::from(i) * u64::from(len - size)) as f64 / f64::from(n - 1)).round() as u32)
        .collect()
}

/// At most this many tiles per frame: on a frame that would need more, the tiles grow (by 1.25x
/// steps) until they fit, so a small `tile_size` on a large frame costs at most 65 network runs.
const MAX_TILES: usize = 64;

/// Share of a tile's longer side within which a box counts as touching an inner edge.
const EDGE_MARGIN: f32 = 0.01;

/// The whole frame, then the tiles when `tiling` is set and the frame is large enough, and the
/// smallest box the whole-frame pass keeps: with tiles, an object smaller than the overlap (less
/// the edge margins on both sides) is whole in some tile.
fn windows(width: u32, height: u32, tiling: Option<Tiling>) -> (Vec<Window>, f32) {
    let mut out = vec![Window {
        x: 0,
        y: 0,
        w: width,
        h: height,
        inner: [false; 4],
    }];
    let Some(t) = tiling else { return (out, 0.0) };
    if (width.max(height) as f32) <= t.size as f32 * TILE_MIN_RATIO {
        return (out, 0.0);
    }
    let mut size = t.size;
    let (mut xs, mut ys) = (
        tile_starts(width, size, t.overlap),
        tile_starts(height, size, t.overlap),
    );
    while xs.len() * ys.len() > MAX_TILES {
        size = (size as f32 * 1.25).ceil() as u32;
        xs = tile_starts(width, size, t.overlap);
        ys = tile_starts(height, size, t.overlap);
    }
    let (w, h) = (size.min(width), size.min(height));
    for &y in &ys {
        for &x in &xs {
            out.push(Window {
                x,
                y,
                w,
                h,
                inner: [x > 0, y > 0, x + w < width, y + h < height],
            });
        }
    }
    let min_whole = size as f32 * (t.overlap - 2.0 * EDGE_MARGIN) - 1.0;
    (out, min_whole)
}

/// Whether `b` (frame pixels) touches an inner edge of `w` (within `margin` pixels).
fn touches_inner_edge(b: &BBox, w: &Window, margin: f32) -> bool {
    let (x0, y0) = (w.x as f32, w.y as f32);
    let (x1, y1) = (x0 + w.w as f32, y0 + w.h as f32);
    (w.inner[0] && b.x0 <= x0 + margin)
        || (w.inner[1] && b.y0 <= y0 + margin)
        || (w.inner[2] && b.x1 >= x1 - margin)
        || (w.inner[3] && b.y1 >= y1 - margin)
}

/// Default per-class NMS IoU threshold (NanoDet's own).
pub const DEFAULT_NMS_IOU: f32 = 0.6;

const STRIDES: [usize; 3] = [8, 16, 32];
const BINS: usize = 11;
const CLASSES: usize = 80;

/// Settings of a [`NanoDet`] detector.
#[derive(Debug, Clone, PartialEq)]
pub struct NanoDetConfig {
    /// Score threshold of each COCO class (contiguous index, see [`coco::NAMES`]).
    pub thresholds: [f32; 80],
    /// IoU above which a lower-scoring box of the same class is suppressed.
    pub nms_iou: f32,
    /// Which model runs.
    pub variant: NanoDetVariant,
    /// How a frame is fitted to the input.
    pub input: InputMode,
    /// Tiles for large frames (`None`: the whole frame only).
    pub tiling: Option<Tiling>,
}

impl Default for NanoDetConfig {
    fn default() -> Self {
        NanoDetConfig {
            thresholds: [DEFAULT_THRESHOLD; 80],
            nms_iou: DEFAULT_NMS_IOU,
            variant: NanoDetVariant::default(),
            input: InputMode::default(),
            tiling: Some(Tiling::default()),
        }
    }
}

impl NanoDetConfig {
    /// Sets one class's threshold by COCO name (e.g. `"person"`).
    pub fn with_threshold(mut self, class: &str, threshold: f32) -> Result<Self, VisionError> {
        let i = coco::index_of(class)
            .ok_or_else(|| VisionError::Config(format!("unknown COCO class {class:?}")))?;
        self.thresholds[i] = threshold;
        Ok(self)
    }

    /// Sets every class's threshold.
    pub fn with_all_thresholds(mut self, threshold: f32) -> Self {
        self.thresholds = [threshold; 80];
        self
    }

    /// Ignores a class entirely (threshold above 1).
    pub fn without(self, class: &str) -> Result<Self, VisionError> {
        self.with_threshold(class, f32::INFINITY)
    }
}

/// The NanoDet object detector. See [`crate::inference::Model`] for sharing between threads.
#[derive(Debug)]
pub struct NanoDet {
    model: Model,
    config: NanoDetConfig,
}

impl NanoDet {
    /// Loads the pinned model (blake3-checked) with `config`.
    pub fn new(options: &ModelOptions, config: NanoDetConfig) -> Result<NanoDet, VisionError> {
        if config.thresholds.iter().any(|t| t.is_nan() || *t < 0.0) {
            return Err(VisionError::Config(
                "NanoDet thresholds must be >= 0".into(),
            ));
        }
        if let Some(t) = config.tiling
            && (t.size < 64 || !(0.0..=0.75).contains(&t.overlap))
        {
            return Err(VisionError::Config(format!(
                "tiles must be at least 64 px with an overlap of 0 to 0.75 (got {} px, {})",
                t.size, t.overlap
            )));
        }
        Ok(NanoDet {
            model: Model::load(config.variant.model_name(), options)?,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &NanoDetConfig {
        &self.config
    }

    /// Name, blake3 and runtime version of the model, for provenance.
    pub fn provenance(&self) -> &ModelProvenance {
        self.model.provenance()
    }

    /// Persons only (COCO class 0), as boxes in `img`'s pixels: the indoor `blur_background`
    /// pass, which runs on the unredacted frame to keep persons sharp. Detection for the dataset
    /// is `stages::detect::detect_frame`, on a verified redacted frame.
    ///
    /// A person kept sharp leaves its background region unblurred, so this pass never takes a
    /// person under [`PRIVACY_PERSON_THRESHOLD`], whatever `[detect]` allows the dataset.
    pub fn persons(&self, img: &RgbImage) -> Result<Vec<crate::vision::BBox>, VisionError> {
        Ok(self
            .detect(img)?
            .into_iter()
            .filter(|d| d.class_id == 0 && d.score >= PRIVACY_PERSON_THRESHOLD)
            .map(|d| d.bbox)
            .collect())
    }

    /// Detects objects; boxes are in `img`'s pixels, clamped to it, highest score first;
    /// `class_id` is the contiguous COCO index. Runs the whole frame and, for a large frame,
    /// its tiles (see the module docs).
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>, VisionError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(VisionError::EmptyImage);
        }
        // With tiles, the whole-frame pass is there for the objects too large for a tile: an
        // object smaller than the overlap is whole, at native resolution, in some tile, and the
        // whole frame's (downscaled) box for it is the worse one.
        let (windows, min_whole) = windows(img.width(), img.height(), self.config.tiling);
        let mut candidates = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let found = if i == 0 {
                self.detect_window(img, w)?
            } else {
                let tile = image::imageops::crop_imm(img, w.x, w.y, w.w, w.h).to_image();
                self.detect_window(&tile, w)?
            };
            let margin = EDGE_MARGIN * w.w.max(w.h) as f32;
            candidates.extend(found.into_iter().filter(|d| {
                if i == 0 {
                    d.bbox.width().max(d.bbox.height()) >= min_whole
                } else {
                    !touches_inner_edge(&d.bbox, w, margin)
                }
            }));
        }
        Ok(nms_per_class(candidates, self.config.nms_iou))
    }

    /// Runs the network on `part` (the pixels of window `w`); boxes in frame pixels, inside `w`.
    fn detect_window(&self, part: &RgbImage, w: &Window) -> Result<Vec<Detection>, VisionError> {
        let side = INPUT_SIZE as f32;
        let (resize, (sx, sy)) = match self.config.input {
            InputMode::Stretch => (
                (INPUT_SIZE, INPUT_SIZE),
                (part.width() as f32 / side, part.height() as f32 / side),
            ),
            InputMode::Letterbox => {
                let s = side / part.width().max(part.height()) as f32;
                let fit = |v: u32| ((v as f32 * s).round() as u32).clamp(1, INPUT_SIZE);
                ((fit(part.width()), fit(part.height())), (1.0 / s, 1.0 / s))
            }
        };
        let input = to_tensor(
            part,
            &TensorLayout {
                resize,
                tensor: (INPUT_SIZE, INPUT_SIZE),
                order: ChannelOrder::Bgr,
                mean: [103.53, 116.28, 123.675],
                std: [57.375, 57.12, 58.395],
            },
        );
        let outputs = self.model.run(input.view())?;
        let (ox, oy) = (w.x as f32, w.y as f32);
        let mut candidates = Vec::new();
        for stride in STRIDES {
            let side = INPUT_SIZE as usize / stride;
            let k = side * side;
            let find = |c: usize| {
                outputs
                    .iter()
                    .find(|o| o.array.shape() == [1, k, c])
                    .and_then(|o| o.array.as_slice())
                    .ok_or_else(|| VisionError::Output {
                        model: MODEL_NAME,
                        detail: format!(
                            "no contiguous output of shape [1, {k}, {c}] among {:?}",
                            outputs
                                .iter()
                                .map(|o| o.array.shape().to_vec())
                                .collect::<Vec<_>>()
                        ),
                    })
            };
            let (cls, reg) = (find(CLASSES)?, find(4 * BINS)?);
            for i in 0..k {
                let scores = &cls[i * CLASSES..(i + 1) * CLASSES];
                let mut bbox = None;
                for (c, &score) in scores.iter().enumerate() {
                    if score < self.config.thresholds[c] {
                        continue;
                    }
                    let b = *bbox.get_or_insert_with(|| {
                        let (row, col) = ((i / side) as f32, (i % side) as f32);
                        let d = distances(&reg[i * 4 * BINS..(i + 1) * 4 * BINS], stride as f32);
                        let (px, py) = (col * stride as f32, row * stride as f32);
                        let b = BBox::new(px - d[0], py - d[1], px + d[2], py + d[3])
                            .scale(sx, sy)
                            .clamp(part.width(), part.height());
                        BBox::new(b.x0 + ox, b.y0 + oy, b.x1 + ox, b.y1 + oy)
                    });
                    candidates.push(Detection {
                        bbox: b,
                        score,
                        class_id: c as u16,
                    });
                }
            }
        }
        Ok(candidates)
    }
}

/// Distances (left, top, right, bottom) from 4 x 11 bin logits: softmax expectation times stride.
fn distances(logits: &[f32], stride: f32) -> [f32; 4] {
    let mut out = [0.0; 4];
    for (side, o) in out.iter_mut().enumerate() {
        let bins = &logits[side * BINS..(side + 1) * BINS];
        let max = bins.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut num, mut den) = (0.0, 0.0);
        for (j, &l) in bins.iter().enumerate() {
            let e = (l - max).exp();
            num += e * j as f32;
            den += e;
        }
        *o = num / den * stride;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_softmax_expectations() {
        let mut logits = vec![0.0f32; 44];
        // Side 0: all mass on bin 3; side 1: uniform (expectation 5); side 2: bins 2 and 4 equal.
        logits[3] = 100.0;
        logits[22 + 2] = 50.0;
        logits[22 + 4] = 50.0;
        logits[33..44].fill(-1.0);
        let d = distances(&logits, 8.0);
        assert!((d[0] - 24.0).abs() < 1e-3, "{d:?}");
        assert!((d[1] - 40.0).abs() < 1e-3, "{d:?}");
        assert!((d[2] - 24.0).abs() < 1e-3, "{d:?}");
        assert!((d[3] - 40.0).abs() < 1e-3, "{d:?}");
    }

    #[test]
    fn tiles_cover_the_frame_with_the_overlap() {
        for (len, size, overlap) in [(1920, 416, 0.25), (1152, 416, 0.25), (640, 416, 0.25)] {
            let s = tile_starts(len, size, overlap);
            assert_eq!(s[0], 0);
            assert_eq!(s.last().unwrap() + size, len, "{len}: {s:?}");
            for p in s.windows(2) {
                assert!(p[1] > p[0], "{s:?}");
                assert!(
                    (p[0] + size - p[1]) as f32 >= size as f32 * overlap - 1.0,
                    "{len}: {s:?}"
                );
            }
        }
        assert_eq!(tile_starts(300, 416, 0.25), vec![0]);
        // A frame close to the tile size is not tiled; a large one is, with inner edges marked.
        let t416 = Some(Tiling {
            size: 416,
            overlap: 0.25,
        });
        assert_eq!(windows(500, 300, t416).0.len(), 1);
        let (w, min_whole) = windows(1536, 1152, t416);
        assert_eq!(w.len(), 1 + 5 * 4);
        assert_eq!(w[1].inner, [false, false, true, true]);
        // An object cut by both edges of an overlap band is at least this large: the whole
        // frame keeps it.
        assert!(
            min_whole < 416.0 * (0.25 - 2.0 * EDGE_MARGIN),
            "{min_whole}"
        );
        assert_eq!(windows(1536, 1152, None).0.len(), 1);
        // A tiny tile on a large frame: the tiles grow until at most MAX_TILES cover it.
        let tiny = Some(Tiling {
            size: 64,
            overlap: 0.75,
        });
        let (w, _) = windows(7680, 4320, tiny);
        assert!(w.len() <= MAX_TILES + 1, "{}", w.len());
        let (right, bottom) = w
            .iter()
            .skip(1)
            .fold((0, 0), |(r, b), t| (r.max(t.x + t.w), b.max(t.y + t.h)));
        assert_eq!((right, bottom), (7680, 4320));
    }

    #[test]
    fn a_box_cut_by_an_inner_tile_edge_is_dropped() {
        let w = Window {
            x: 100,
            y: 0,
            w: 416,
            h: 416,
            inner: [true, false, true, false],
        };
        let m = 4.0;
        assert!(touches_inner_edge(
            &BBox::new(101.0, 10.0, 150.0, 90.0),
            &w,
            m
        ));
        assert!(touches_inner_edge(
            &BBox::new(400.0, 10.0, 515.0, 90.0),
            &w,
            m
        ));
        // The frame's own border (top, bottom here) is not an inner edge.
        assert!(!touches_inner_edge(
            &BBox::new(200.0, 0.0, 250.0, 416.0),
            &w,
            m
        ));
        assert!(!touches_inner_edge(
            &BBox::new(120.0, 10.0, 490.0, 90.0),
            &w,
            m
        ));
    }

    #[test]
    fn per_class_thresholds_are_set_by_name() {
        let c = NanoDetConfig::default().with_threshold("dog", 0.3).unwrap();
        assert_eq!(c.thresholds[16], 0.3);
        assert_eq!(c.thresholds[0], DEFAULT_THRESHOLD);
        assert!(
            NanoDetConfig::default()
                .with_threshold("unicorn", 0.3)
                .is_err()
        );
    }
}
