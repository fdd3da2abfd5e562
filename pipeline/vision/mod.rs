//! Pure vision code: box geometry, NMS and the ONNX detectors (faces: CenterFace, RetinaFace;
//! objects: NanoDet with the 80 COCO classes).
//!
//! Detectors take an `image::RgbImage` frame and return [`Detection`]s in that frame's pixels,
//! highest score first. Each detector owns one blake3-checked [`crate::inference::Model`]; a
//! detector is `Send + Sync` and may be shared, but its runs are serialised (ONNX Runtime sessions
//! need `&mut` in `ort` 2.0.0-rc.15), so parallel workers should each build their own.

pub mod centerface;
pub mod coco;
pub mod geometry;
pub mod mask;
pub mod nanodet;
pub mod preprocess;
pub mod retinaface;

pub use centerface::{CenterFace, CenterFaceConfig, CenterFaceVariant};
pub use geometry::{BBox, nms, nms_per_class};
pub use nanodet::{NanoDet, NanoDetConfig};
pub use retinaface::{RetinaFace, RetinaFaceConfig};

/// One detection in absolute pixel coordinates of the frame it was found in.
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Detection {
    /// The box, in frame pixels.
    pub bbox: BBox,
    /// Detector confidence in 0..1.
    pub score: f32,
    /// COCO class index (0..80, see [`coco::NAMES`]) for objects; 0 for faces.
    pub class_id: u16,
}

/// Errors of the detectors.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Inference(#[from] crate::inference::InferenceError),
    /// A setting is out of range.
    #[error("invalid detector setting: {0}")]
    Config(String),
    /// The frame has no pixels.
    #[error("cannot detect in an empty (0-pixel) image")]
    EmptyImage,
    /// The model's outputs do not have the layout the decoder expects.
    #[error("model {model:?} gave outputs the decoder cannot read: {detail}")]
    Output {
        /// Manifest name of the model.
        model: &'static str,
        /// What was wrong.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    /// Detectors can be shared between threads (runs on one are serialised by its mutex).
    #[test]
    fn detectors_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::inference::Model>();
        assert_send_sync::<super::CenterFace>();
        assert_send_sync::<super::RetinaFace>();
        assert_send_sync::<super::NanoDet>();
    }

    /// The detectors' default thresholds and input sizes are the ones `models/manifest.json`
    /// writes down for each model (and so are `[faces]`, `[verifier]` and `[detect]`'s defaults).
    #[test]
    fn defaults_are_the_model_manifests() {
        use super::{centerface, nanodet, retinaface};
        let m = crate::inference::Manifest::load(&crate::inference::models_dir()).unwrap();
        let d = |name: &str| m.models[name].defaults.clone();
        for name in ["centerface", "centerface_clean", "centerface_int8"] {
            let want = match name {
                "centerface_int8" => centerface::INT8_THRESHOLD,
                _ => centerface::DEFAULT_THRESHOLD,
            };
            assert_eq!(d(name).threshold, want, "{name}");
            assert_eq!(d(name).nms_iou, centerface::NMS_IOU, "{name}");
            assert_eq!(d(name).input, None, "{name}");
        }
        assert_eq!(
            d("retinaface_tiny").threshold,
            retinaface::DEFAULT_THRESHOLD
        );
        assert_eq!(d("retinaface_tiny").nms_iou, retinaface::NMS_IOU);
        for name in ["nanodet_coco", "nanodet_int8"] {
            assert_eq!(d(name).threshold, nanodet::DEFAULT_THRESHOLD, "{name}");
            assert_eq!(d(name).nms_iou, nanodet::DEFAULT_NMS_IOU, "{name}");
            let side = nanodet::INPUT_SIZE;
            assert_eq!(d(name).input, Some([side, side]), "{name}");
        }
        let c = crate::config::Config::default();
        assert_eq!(c.faces.threshold, d("centerface_int8").threshold);
        assert_eq!(c.verifier.threshold, d("retinaface_tiny").threshold);
        assert_eq!(c.detect.threshold, d("nanodet_int8").threshold);
    }
}
