//! What is known of a clip once opened, and the manifest entry of each of its frames.

use serde::{Deserialize, Serialize};

use crate::emit::{EmittedDetection, ManifestEntry, Provenance, RedactionSummary, VerifierResult};

/// What is known of a clip once opened; repeated by every manifest line of its frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipInfo {
    pub width: u32,
    pub height: u32,
    /// Names of the privacy zones applied (`zone-0`, ...).
    pub zones: Vec<String>,
    /// The interior policy applied, `none` for outdoor clips.
    pub indoor_policy: String,
    /// Source, consent, models, config and versions.
    pub provenance: Provenance,
}

/// The manifest entry of one redacted frame (path and blake3 are set by the emitter).
pub(crate) fn frame_entry(
    video_id: &str,
    info: &ClipInfo,
    frame: u64,
    pts: f64,
    masks: u32,
    found: u32,
    detections: Vec<EmittedDetection>,
) -> ManifestEntry {
    ManifestEntry {
        video_id: video_id.to_owned(),
        frame,
        timestamp_s: (pts * 1e6).round() / 1e6,
        width: info.width,
        height: info.height,
        path: String::new(),
        blake3: String::new(),
        detections,
        redaction: RedactionSummary {
            faces_masked: masks,
            zones: info.zones.clone(),
            indoor_policy: info.indoor_policy.clone(),
            verifier: VerifierResult {
                passed: true,
                faces_found: found,
            },
        },
        provenance: info.provenance.clone(),
    }
}
