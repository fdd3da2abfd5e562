//! The dataset's records: what `manifest.jsonl`, the dataset's `selection.jsonl` and
//! `dataset.json` hold (each has a JSON Schema in `schemas/`), and how they are read back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EmitError, input_err, paths};
use crate::vision::{BBox, Detection, coco as coco_names};

/// The consent basis a clip was selected on, as recorded in `selection.jsonl`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct ConsentBasis {
    /// Kind of basis (for example `consent` or `household`), as the consent module names it.
    pub kind: String,
    /// Id of the ledger event that grants it.
    pub event_id: String,
    /// blake3 (hex) of that ledger event's canonical bytes.
    pub event_blake3: String,
}

impl From<&crate::records::Basis> for ConsentBasis {
    /// The part of the select stage's basis that the dataset records (kind as its wire name).
    fn from(b: &crate::records::Basis) -> Self {
        let kind = serde_json::to_value(b.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            kind,
            event_id: b.event_id.clone(),
            event_blake3: b.event_blake3.clone(),
        }
    }
}

/// One object detection as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmittedDetection {
    /// COCO class name (see [`crate::vision::coco::NAMES`]).
    pub class: String,
    /// Official COCO 2017 category id of the class.
    pub category_id: u32,
    /// Detector confidence in 0..1.
    pub score: f32,
    /// Box in absolute pixels of the frame.
    pub bbox: BBox,
}

impl EmittedDetection {
    /// Converts a detector output (contiguous COCO class index) into a manifest detection.
    pub fn from_detection(d: &Detection) -> Result<Self, EmitError> {
        let i = d.class_id as usize;
        let (Some(name), Some(id)) = (coco_names::NAMES.get(i), coco_names::CATEGORY_IDS.get(i))
        else {
            return Err(input_err(
                "detection",
                format!("class index {i} is not a COCO class"),
            ));
        };
        Ok(Self {
            class: (*name).to_string(),
            category_id: *id,
            score: d.score,
            bbox: d.bbox,
        })
    }
}

/// What the redaction verifier found in the emitted frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VerifierResult {
    /// True when the verifier found nothing left to redact.
    pub passed: bool,
    /// Faces the verifier still found after redaction (0 when `passed`).
    pub faces_found: u32,
}

/// What redaction did to a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RedactionSummary {
    /// Number of face regions masked.
    pub faces_masked: u32,
    /// Names of the privacy zones masked in this frame (sorted).
    pub zones: Vec<String>,
    /// Indoor policy applied to the clip, as the redact module names it (e.g. `none`, `mask`).
    pub indoor_policy: String,
    /// The verifier's result on the redacted frame.
    pub verifier: VerifierResult,
}

/// Where a frame came from and under which software and consent it was produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Provenance {
    /// blake3 (hex) of the source clip's bytes.
    pub source_blake3: String,
    /// The consent basis from the selection.
    pub consent: ConsentBasis,
    /// blake3 (hex) of each model file used, by model name.
    pub models: BTreeMap<String, String>,
    /// blake3 (hex) of the effective configuration (canonical TOML or JSON bytes).
    pub config_blake3: String,
    /// Version of clearframe that produced the frame.
    pub clearframe_version: String,
    /// `ffmpeg -version` first line's version.
    pub ffmpeg_version: String,
    /// ONNX Runtime version.
    pub onnxruntime_version: String,
}

/// One line of `manifest.jsonl`: one emitted frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ManifestEntry {
    /// Catalog id of the clip (letters, digits, `.`, `_`, `-`).
    pub video_id: String,
    /// Frame index in the decoded clip.
    pub frame: u64,
    /// Presentation time of the frame in seconds.
    pub timestamp_s: f64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Path relative to the dataset root: `frames/<video_id>/<frame:06>-<blake3:16>.jpg` (the
    /// name carries the content, so a path never holds other bytes). Set by the emitter.
    pub path: String,
    /// blake3 (hex) of the JPEG file. Set by the emitter.
    pub blake3: String,
    /// Object detections on the redacted frame.
    pub detections: Vec<EmittedDetection>,
    /// What redaction did.
    pub redaction: RedactionSummary,
    /// Provenance.
    pub provenance: Provenance,
}

impl ManifestEntry {
    /// The dataset-relative path of a frame whose JPEG has the blake3 (hex) `blake3`:
    /// `frames/<video_id>/<frame:06>-<first 16 hex digits of blake3>.jpg`. Content-named, so
    /// that a path holds the same bytes in every dataset version that lists it, and a new
    /// version never overwrites a frame of the one readers still use.
    pub fn frame_path(video_id: &str, frame: u64, blake3: &str) -> String {
        let short = blake3.get(..paths::NAME_HASH_LEN).unwrap_or(blake3);
        format!("{}/{video_id}/{frame:06}-{short}.jpg", paths::FRAMES_DIR)
    }
}

/// The part of a `selection.jsonl` line (see [`crate::records`]) that the emitter and the
/// verifier read; other fields are ignored, so the select stage may add to its lines freely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SelectionView {
    /// 1-based catalog line, when given.
    #[serde(default)]
    pub line: Option<u64>,
    /// Catalog id of the clip; null when the catalog line could not be read.
    #[serde(default)]
    pub video_id: Option<String>,
    /// `include` or `exclude`.
    pub decision: String,
    /// The consent basis (present for included clips).
    #[serde(default)]
    pub basis: Option<ConsentBasis>,
    /// Human-readable reasons, when the selection gives them (`reasons` array or `reason`).
    #[serde(default, alias = "reason", deserialize_with = "one_or_many")]
    pub reasons: Vec<String>,
    /// Machine-readable classes of the reasons, when the selection gives them.
    #[serde(default)]
    pub reason_codes: Vec<String>,
}

/// One line of the dataset's own `selection.jsonl`: an included clip and the event that allowed
/// it. The dataset names nothing else: no owner or device id, no excluded clip (exclusions are
/// counted by reason code in `dataset.json`); the full selection stays in the work folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShippedSelectionLine {
    /// 1-based catalog line.
    pub line: Option<u64>,
    /// Catalog id of the clip.
    pub video_id: String,
    /// Always `include`.
    pub decision: String,
    /// The consent basis.
    pub basis: ConsentBasis,
}

impl SelectionView {
    /// How to name the line in messages: the video id, else the catalog line number.
    pub fn label(&self) -> String {
        match (&self.video_id, self.line) {
            (Some(v), _) => v.clone(),
            (None, Some(l)) => format!("(catalog line {l})"),
            (None, None) => "(unnamed)".into(),
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => vec![],
    })
}

/// Parses `selection.jsonl` bytes (blank lines skipped). Errors name the 1-based line.
pub fn parse_selection(bytes: &[u8]) -> Result<Vec<SelectionView>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: SelectionView =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(parsed);
    }
    Ok(out)
}

/// A frame that was decoded but not emitted, and why (for example: the verifier still found a
/// face).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct WithheldFrame {
    /// Catalog id of the clip.
    pub video_id: String,
    /// Frame index in the decoded clip.
    pub frame: u64,
    /// Why it was withheld.
    pub reason: String,
}

/// A clip that was selected but could not be processed (corrupt file, decode error...).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct ClipFailure {
    /// Catalog id of the clip.
    pub video_id: String,
    /// The class of the failure (stable; see the README's list of failure codes).
    pub code: crate::records::FailureCode,
    /// What went wrong: a short message from ClearFrame's checks and ffmpeg's error lines only.
    pub reason: String,
}

/// Per-clip counts in `dataset.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClipCounts {
    /// Frames emitted.
    pub frames: u64,
    /// Frames withheld.
    pub withheld: u64,
    /// Detections over all emitted frames.
    pub detections: u64,
    /// Faces masked over all emitted frames.
    pub faces_masked: u64,
}

/// Counts in `dataset.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Counts {
    /// Clips per selection decision (`include`, `exclude`).
    pub decisions: BTreeMap<String, u64>,
    /// Detections per class name.
    pub classes: BTreeMap<String, u64>,
    /// Per clip with at least one emitted or withheld frame.
    pub clips: BTreeMap<String, ClipCounts>,
    /// Excluded catalog lines by their first reason code (the dataset names no excluded clip).
    #[serde(default)]
    pub excluded_by_reason: BTreeMap<String, u64>,
}

/// The inputs of a run that the dataset version records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInputs {
    /// blake3 (hex) of the catalog file.
    pub catalog_blake3: String,
    /// blake3 (hex) of the consent ledger file.
    pub ledger_blake3: String,
    /// The instant consent was evaluated at (RFC 3339), as given to `select`.
    pub as_of: String,
    /// The bytes of the select stage's `selection.jsonl`. The dataset ships only its included
    /// lines, reduced to [`ShippedSelectionLine`]s; exclusions are counted by reason code.
    pub selection_jsonl: Vec<u8>,
}

/// `dataset.json`: the dataset version.
///
/// `merkle_root` is computed as documented in [`merkle`]. `version` names the folder
/// `versions/<version>/` that holds this version's manifest, annotations, report and change log.
/// `files` holds the blake3 of every file other than frames, `manifest.jsonl` (both covered by
/// the root) and `dataset.json` itself, by dataset-relative path. `seal` is the blake3 of this record serialised as in the file (pretty JSON, two-space
/// indent, trailing newline) with `seal` set to the empty string; it makes every byte of
/// `dataset.json` checkable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DatasetRecord {
    /// Layout version, [`DATASET_FORMAT`].
    pub format: String,
    /// Version of clearframe that emitted the dataset.
    pub clearframe_version: String,
    /// Merkle construction id, [`merkle::CONSTRUCTION`].
    pub merkle: String,
    /// Merkle root (hex) over `manifest.jsonl` lines.
    pub merkle_root: String,
    /// The version folder's name: the first 16 hex digits of the blake3 of the version's files
    /// (see [`crate::emit::version_id`]). Its files are at `versions/<version>/…`.
    pub version: String,
    /// Number of frames (= manifest lines).
    pub frames: u64,
    /// blake3 (hex) of the catalog.
    pub catalog_blake3: String,
    /// blake3 (hex) of the ledger.
    pub ledger_blake3: String,
    /// Consent evaluation instant (RFC 3339).
    pub as_of: String,
    /// blake3 (hex) of each recorded file, by dataset-relative path.
    pub files: BTreeMap<String, String>,
    /// Counts per decision, class and clip.
    pub counts: Counts,
    /// Frames decoded but not emitted, sorted by clip and frame.
    pub withheld: Vec<WithheldFrame>,
    /// Selected clips that failed, sorted by clip.
    pub failed_clips: Vec<ClipFailure>,
    /// blake3 of this record with `seal` empty (see the type docs).
    pub seal: String,
}

impl DatasetRecord {
    /// The dataset-relative path of the version file `name` (one of [`paths`]' version files,
    /// e.g. [`paths::COCO`]): `versions/<version>/<name>`.
    pub fn path(&self, name: &str) -> String {
        paths::in_version(&self.version, name)
    }

    /// The canonical bytes of the record as written to `dataset.json`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("DatasetRecord serialises");
        v.push(b'\n');
        v
    }

    /// The seal of this record: blake3 of [`Self::to_bytes`] with `seal` empty.
    pub fn compute_seal(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.seal.clear();
        crate::hashing::hash_bytes(&unsealed.to_bytes())
    }
}

/// Format id of `changes.json`.
pub const CHANGES_FORMAT: &str = "clearframe-changes/1";

/// One line of `removed.jsonl`: a clip of the previous dataset version whose data this version no
/// longer has, every path of it that is gone, and why, so that annotation tools and training jobs
/// can delete their copies. No owner or device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovedClip {
    pub video_id: String,
    /// Every path of the previous version that held the clip's data and is gone (its frames, its
    /// CVAT file), sorted.
    pub paths: Vec<String>,
    /// Why: `revoked`, `expired`, `unshared`, `video_deleted`, `account_deleted` (a ledger event
    /// ended the basis it was shipped on); a selection reason code (e.g. `no_basis`,
    /// `invalid_line`); a failure code (the clip failed in this build); `no_frames` (every
    /// frame withheld); `not_in_catalog`; or `changed` (the clip is still in, with fewer frames).
    pub reason_code: String,
    /// The ledger event that caused it, when one did.
    pub event_id: Option<String>,
}

/// `changes.json`: this version against the previous one at the same location, by clip (clips
/// with frames in either version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangesRecord {
    /// [`CHANGES_FORMAT`].
    pub format: String,
    /// The previous version's Merkle root; null when there was none (a new location).
    pub previous_merkle_root: Option<String>,
    /// This version's Merkle root.
    pub merkle_root: String,
    /// Clips only this version has.
    pub added: Vec<String>,
    /// Clips only the previous version had (see `removed.jsonl`).
    pub removed: Vec<String>,
    /// Clips in both whose frames differ (paths or bytes).
    pub changed: Vec<String>,
    /// Clips in both with the same frames, byte for byte.
    pub kept: Vec<String>,
}

/// Why a clip of the previous version is gone, as the caller found it in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalReason {
    pub code: String,
    pub event_id: Option<String>,
}
