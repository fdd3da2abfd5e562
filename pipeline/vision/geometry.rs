//! Box geometry: IoU, NMS, scaling between detector and frame coordinates, mask growth.

/// Axis-aligned box in absolute pixels: `(x0, y0)` top-left, `(x1, y1)` bottom-right, `x0 <= x1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}
