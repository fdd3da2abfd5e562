//! NanoDet-m (`nanodet_coco.onnx`): persons and the other 79 COCO classes.
//!
//! The frame is stretched to 416x416, BGR, normalised with mean (103.53, 116.28, 123.675) and
//! std (57.375, 57.12, 58.395). For each stride 8, 16 and 32 the network gives a class tensor
//! `[1, K, 80]` (already sigmoid) and a box tensor `[1, K, 44]`: for each side (left, top, right,
//! bottom) 11 bins whose softmax expectation times the stride is the distance from the grid point
//! `(col * stride, row * stride)`. The output names say nothing, so tensors are matched by shape.
//! Every class above its own threshold (default 0.5) becomes a candidate; NMS runs per class.

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
    /// thread, every reference person kept on the test frames (`tests/vision.rs`).
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
}

impl Default for NanoDetConfig {
    fn default() -> Self {
        NanoDetConfig {
            thresholds: [DEFAULT_THRESHOLD; 80],
            nms_iou: DEFAULT_NMS_IOU,
            variant: NanoDetVariant::default(),
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
    pub fn persons(&self, img: &RgbImage) -> Result<Vec<crate::vision::BBox>, VisionError> {
        Ok(self
            .detect(img)?
            .into_iter()
            .filter(|d| d.class_id == 0)
            .map(|d| d.bbox)
            .collect())
    }

    /// Detects objects; boxes are in `img`'s pixels, clamped to it, highest score first;
    /// `class_id` is the contiguous COCO index.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>, VisionError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(VisionError::EmptyImage);
        }
        let input = to_tensor(
            img,
            &TensorLayout {
                resize: (INPUT_SIZE, INPUT_SIZE),
                tensor: (INPUT_SIZE, INPUT_SIZE),
                order: ChannelOrder::Bgr,
                mean: [103.53, 116.28, 123.675],
                std: [57.375, 57.12, 58.395],
            },
        );
        let outputs = self.model.run(input.view())?;
        let (sx, sy) = (
            img.width() as f32 / INPUT_SIZE as f32,
            img.height() as f32 / INPUT_SIZE as f32,
        );
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
                        BBox::new(px - d[0], py - d[1], px + d[2], py + d[3])
                            .scale(sx, sy)
                            .clamp(img.width(), img.height())
                    });
                    candidates.push(Detection {
                        bbox: b,
                        score,
                        class_id: c as u16,
                    });
                }
            }
        }
        Ok(nms_per_class(candidates, self.config.nms_iou))
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
