//! Pure vision code: box geometry, NMS and the ONNX detectors (faces: CenterFace, RetinaFace;
//! objects: NanoDet with the 80 COCO classes).

pub mod coco;
pub mod geometry;

pub use geometry::BBox;

/// One detection in absolute pixel coordinates of the frame it was found in.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Detection {
    pub bbox: BBox,
    /// Detector confidence in 0..1.
    pub score: f32,
    /// COCO class index (0..80, see [`coco::NAMES`]) for objects; 0 for faces.
    pub class_id: u16,
}
