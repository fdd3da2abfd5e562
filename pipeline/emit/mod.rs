//! The last stage, `emit`: turns redacted, detected frames into the dataset folder that people
//! downstream use and that can prove where each item came from.
//!
//! Given an output folder and a stream of `(ManifestEntry, JPEG bytes)`, an [`Emitter`] writes:
//!
//! | path | what |
//! | --- | --- |
//! | `dataset.json` | the [`DatasetRecord`]: Merkle root, version, inputs, counts, file hashes; written last, atomically |
//! | `frames/<video_id>/<frame:06>-<blake3:16>.jpg` | the redacted frames, as given (see [`encode_jpeg`]), named by content |
//! | `versions/<version>/manifest.jsonl` | one [`ManifestEntry`] per frame, sorted by `(video_id, frame)` |
//! | `versions/<version>/selection.jsonl` | the included lines of the selection the run used |
//! | `versions/<version>/annotations/coco.json` | COCO 1.0 detection ([`coco`]) |
//! | `versions/<version>/annotations/labelstudio.json`, `….xml` | Label Studio tasks and labelling config ([`labelstudio`]) |
//! | `versions/<version>/annotations/cvat/<video_id>.xml` | CVAT for video 1.1, one per clip, with tracks ([`cvat`]; the tracker: [`track`]) |
//! | `versions/<version>/report.html` | a self-contained page for people ([`report`]) |
//! | `versions/<version>/changes.json` | the [`ChangesRecord`] against the version this one replaces |
//! | `versions/<version>/removed.jsonl` | one [`RemovedClip`] per clip whose data the replaced version had and this one lacks |
//!
//! Nothing but `dataset.json` is ever overwritten with other bytes: a frame's name carries its
//! blake3 and a version folder's name is the blake3 of its files ([`version_id`]). So a reader
//! who read `dataset.json` finds every file it lists, unchanged, while the next version is
//! written beside it; once the new `dataset.json` is in place, what only the old one listed is
//! deleted.
//!
//! Every file is written to a temporary file in its folder and renamed into place, with mode
//! `0640` (folders `0750`). An earlier dataset in the folder is replaced following [`dest`]: only
//! what its `dataset.json` lists is ever deleted. Entries may arrive in any order; they are
//! sorted before anything but the frames is written, and nothing reads the clock, so the same
//! inputs give byte-identical outputs. [`crate::verify`] checks a
//! folder written here.

pub mod clip;
pub mod coco;
pub mod cvat;
pub mod dest;
pub mod labelstudio;
pub mod merkle;
pub(crate) mod output;
mod record;
pub mod report;
pub mod track;

pub use record::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::vision::coco as coco_names;

/// Version of the dataset layout, recorded in `dataset.json` as `format`.
pub const DATASET_FORMAT: &str = "clearframe-dataset/2";

/// JPEG quality used by [`encode_jpeg`]; fixed so that encoding is reproducible.
pub const JPEG_QUALITY: u8 = 90;

/// File names inside the dataset folder. `dataset.json` and `frames/` are at its top; every
/// other name is relative to the version folder `versions/<version>/` ([`in_version`]).
pub mod paths {
    /// The folder of the version folders.
    pub const VERSIONS_DIR: &str = "versions";
    /// Hex digits of a blake3 that name a frame or a version folder.
    pub const NAME_HASH_LEN: usize = 16;
    /// `versions/<version>/<name>`.
    pub fn in_version(version: &str, name: &str) -> String {
        format!("{VERSIONS_DIR}/{version}/{name}")
    }
    /// The manifest, one JSON object per line.
    pub const MANIFEST: &str = "manifest.jsonl";
    /// The dataset record, written last.
    pub const DATASET: &str = "dataset.json";
    /// Copy of the selection used by the run.
    pub const SELECTION: &str = "selection.jsonl";
    /// The HTML report.
    pub const REPORT: &str = "report.html";
    /// COCO detection annotations.
    pub const COCO: &str = "annotations/coco.json";
    /// Label Studio tasks.
    pub const LABELSTUDIO: &str = "annotations/labelstudio.json";
    /// Label Studio labelling config matching the tasks.
    pub const LABELSTUDIO_CONFIG: &str = "annotations/labelstudio.xml";
    /// Folder of the per-clip CVAT XML files.
    pub const CVAT_DIR: &str = "annotations/cvat";
    /// Folder of the frames.
    pub const FRAMES_DIR: &str = "frames";
    /// The clips this version removed from the previous one, with every removed path and why.
    pub const REMOVED: &str = "removed.jsonl";
    /// What changed against the previous version: clips added, removed, changed, kept.
    pub const CHANGES: &str = "changes.json";
}

/// Errors of the emit stage, grouped by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The caller handed in something the dataset cannot contain (bad id, duplicate frame, a
    /// frame whose clip is not included by the selection, size mismatch...).
    #[error("invalid input for {what}: {reason}")]
    Input {
        /// The object at fault (video id and frame, selection line...).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot write {}", crate::storage::path_and_cause(path, source))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The destination holds something ClearFrame did not write, or cannot show it wrote
    /// ([`dest`]); nothing was deleted or written.
    #[error("{location} holds {found}, but {why}; nothing was deleted or written\nhint: {hint}")]
    NotOurs {
        /// The folder or prefix.
        location: String,
        /// What was found there.
        found: String,
        /// Why it is not a destination ClearFrame may replace.
        why: String,
        /// What to do.
        hint: String,
    },
    /// The destination's store failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// JPEG encoding failed.
    #[error("cannot encode JPEG: {0}")]
    Encode(#[from] image::ImageError),
}

fn input_err(what: impl Into<String>, reason: impl Into<String>) -> EmitError {
    EmitError::Input {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Settings of the emitter that are not inputs of the dataset version.
#[derive(Debug, Clone, PartialEq)]
pub struct EmitOptions {
    /// Prefix of `data.image` in Label Studio tasks; the dataset-relative frame path is appended.
    /// The default, `/data/local-files/?d=`, is what Label Studio serves local files under when
    /// `LOCAL_FILES_SERVING_ENABLED=true` and `LOCAL_FILES_DOCUMENT_ROOT` is the dataset folder.
    pub labelstudio_image_prefix: String,
    /// Minimum IoU between a track's predicted box and a detection to link them (CVAT tracks,
    /// [`track`]).
    pub track_iou: f32,
    /// At most this many frames per clip in the report's contact sheet (evenly spaced).
    pub report_frames_per_clip: usize,
}

impl Default for EmitOptions {
    fn default() -> Self {
        Self {
            labelstudio_image_prefix: "/data/local-files/?d=".into(),
            track_iou: 0.3,
            report_frames_per_clip: 12,
        }
    }
}

/// True when `id` is a safe single path component: 1..=128 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn is_safe_video_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A dataset frame as JPEG. Only [`encode_jpeg`] makes one, from a verified redacted frame, and
/// it is all [`Emitter::add_frame`] takes: raw or unverified pixels cannot reach a dataset. Its
/// `Debug` prints no bytes.
///
/// ```compile_fail
/// // Bytes from anywhere else are not a frame of the dataset.
/// let jpeg = clearframe::emit::FrameJpeg(vec![0xff, 0xd8]);
/// ```
///
/// ```compile_fail
/// // Nor does the emitter take plain bytes.
/// fn add(e: &mut clearframe::emit::Emitter, entry: clearframe::emit::ManifestEntry, raw: Vec<u8>) {
///     e.add_frame(entry, &raw).unwrap();
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct FrameJpeg(Vec<u8>);

impl FrameJpeg {
    /// The JPEG's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JPEG's bytes, owned (to upload them).
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Test material only: JPEG bytes made by a test from its own images, to build a dataset
    /// without running the redaction engine. Behind the `test-material` feature, which only this
    /// crate's dev-dependency on itself turns on: cargo unifies it into every build that includes
    /// the tests (`cargo test`, `cargo build --all-targets`, `cargo bench`), never into
    /// `cargo build --release` or `cargo install`; the binary never calls it.
    #[cfg(feature = "test-material")]
    pub fn test_material(bytes: Vec<u8>) -> FrameJpeg {
        FrameJpeg(bytes)
    }
}

impl std::fmt::Debug for FrameJpeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameJpeg({} bytes)", self.0.len())
    }
}

/// Encodes a verified redacted frame as JPEG with fixed settings (baseline, quality
/// [`JPEG_QUALITY`], no metadata): the same pixels always give the same bytes. An unverified or
/// raw frame is not accepted (see [`crate::redact::RedactedFrame`]).
pub fn encode_jpeg(frame: &crate::redact::RedactedFrame) -> Result<FrameJpeg, EmitError> {
    jpeg_of(frame.image()).map(FrameJpeg)
}

fn jpeg_of(image: &image::RgbImage) -> Result<Vec<u8>, EmitError> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
    image.write_with_encoder(encoder)?;
    Ok(out)
}

/// Writes `bytes` as `rel` below `root` through a temporary file in the same folder and a
/// rename, following no link below `root` ([`crate::storage::beneath`]). `sync` adds fsyncs:
/// frames skip them (one fsync per frame would dominate the stage), since `dataset.json`, synced
/// and written last, is what marks a folder complete and `verify` re-hashes every frame anyway.
fn write_beneath(root: &Path, rel: &str, bytes: &[u8], sync: bool) -> Result<(), EmitError> {
    use std::io::Write;
    crate::storage::beneath::Beneath::existing(root)
        .write(rel, crate::storage::TEMP_PREFIX, sync, |f| {
            f.write_all(bytes).map(|()| bytes.len() as u64)
        })
        .map(drop)
        .map_err(|source| EmitError::Io {
            path: root.join(rel),
            source,
        })
}

/// Writes a dataset folder. Create with [`Emitter::create`], feed frames with
/// [`Emitter::add_frame`], record what was left out with [`Emitter::withhold`] and
/// [`Emitter::clip_failed`], and finish with [`Emitter::finish`], which writes everything but the
/// frames and `dataset.json` last.
///
/// ```no_run
/// # use clearframe::emit::*;
/// # fn f(inputs: DatasetInputs, entry: ManifestEntry, frame: clearframe::redact::RedactedFrame) -> Result<(), EmitError> {
/// let mut emitter = Emitter::create("out".as_ref(), inputs, EmitOptions::default())?;
/// emitter.add_frame(entry, &encode_jpeg(&frame)?)?;
/// let record = emitter.finish()?;
/// println!("dataset {}", record.merkle_root);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Emitter {
    root: PathBuf,
    inputs: DatasetInputs,
    options: EmitOptions,
    /// The included lines of the selection.
    selection: Vec<SelectionView>,
    /// What the dataset's `selection.jsonl` holds.
    shipped: Vec<u8>,
    decisions: BTreeMap<String, u64>,
    excluded_by_reason: BTreeMap<String, u64>,
    included: BTreeMap<String, ConsentBasis>,
    entries: BTreeMap<(String, u64), ManifestEntry>,
    withheld: BTreeSet<WithheldFrame>,
    failed: BTreeSet<ClipFailure>,
    /// The destination being replaced; `None` for a private staging folder.
    dest: Option<dest::Destination>,
    /// Excluded clips' first reason code, by video id.
    excluded: BTreeMap<String, String>,
    /// The version this one replaces, and why its clips are gone where the ledger says.
    previous: Option<dest::Previous>,
    removal: BTreeMap<String, RemovalReason>,
}

impl Emitter {
    /// Prepares the folder `root` for a new dataset ([`dest`]): a missing or empty folder is
    /// used as is; an earlier dataset there is replaced (it stays whole until the new
    /// `dataset.json` replaces its own, then exactly the objects it listed that the new one lacks
    /// are deleted); anything else is refused ([`EmitError::NotOurs`]).
    /// `inputs.selection_jsonl` must parse as selection lines.
    pub fn create(
        root: &Path,
        inputs: DatasetInputs,
        options: EmitOptions,
    ) -> Result<Self, EmitError> {
        let store: std::sync::Arc<dyn crate::storage::Store> =
            std::sync::Arc::new(crate::storage::LocalStore::new(root.to_path_buf()));
        let dest = dest::Destination::inspect(store)?;
        Self::create_in(dest, inputs, options)
    }

    /// [`Emitter::create`] for a local destination already inspected.
    pub fn create_in(
        dest: dest::Destination,
        inputs: DatasetInputs,
        options: EmitOptions,
    ) -> Result<Self, EmitError> {
        let crate::storage::Location::Local(root) = dest.store().location().clone() else {
            return Err(input_err(
                "destination",
                "the emitter writes into a local folder; S3 datasets are staged locally first",
            ));
        };
        let mut emitter = Self::new(&root, inputs, options)?;
        let clips: BTreeSet<String> = emitter.included.keys().cloned().collect();
        dest.begin(&clips)?;
        emitter.previous = dest.previous().cloned();
        emitter.dest = Some(dest);
        Ok(emitter)
    }

    /// An emitter writing into a fresh private staging folder (no earlier dataset to replace);
    /// the caller uploads what it writes.
    pub(crate) fn create_staging(
        root: &Path,
        inputs: DatasetInputs,
        options: EmitOptions,
    ) -> Result<Self, EmitError> {
        Self::new(root, inputs, options)
    }

    fn new(root: &Path, inputs: DatasetInputs, options: EmitOptions) -> Result<Self, EmitError> {
        let full =
            parse_selection(&inputs.selection_jsonl).map_err(|e| input_err(paths::SELECTION, e))?;
        let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
        let mut excluded_by_reason: BTreeMap<String, u64> = BTreeMap::new();
        let mut shipped = Vec::new();
        let mut selection = Vec::new();
        let mut excluded = BTreeMap::new();
        for line in full {
            *decisions.entry(line.decision.clone()).or_default() += 1;
            if line.decision == "include" {
                selection.push(line);
            } else {
                let code = line
                    .reason_codes
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                if let Some(id) = &line.video_id {
                    excluded.entry(id.clone()).or_insert_with(|| code.clone());
                }
                *excluded_by_reason.entry(code).or_default() += 1;
            }
        }
        let mut included = BTreeMap::new();
        for line in &selection {
            if line.decision == "include" {
                let what = format!("selection line {}", line.label());
                let (Some(video_id), Some(basis)) = (&line.video_id, &line.basis) else {
                    return Err(input_err(what, "included without a video id and a basis"));
                };
                if included.insert(video_id.clone(), basis.clone()).is_some() {
                    return Err(input_err(what, "the clip is included twice"));
                }
                let shipped_line = ShippedSelectionLine {
                    line: line.line,
                    video_id: video_id.clone(),
                    decision: "include".into(),
                    basis: basis.clone(),
                };
                shipped.extend(serde_json::to_vec(&shipped_line).expect("serialises"));
                shipped.push(b'\n');
            }
        }
        crate::storage::create_dir_all(root).map_err(|source| EmitError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            inputs,
            options,
            selection,
            shipped,
            decisions,
            excluded_by_reason,
            included,
            entries: BTreeMap::new(),
            withheld: BTreeSet::new(),
            failed: BTreeSet::new(),
            dest: None,
            excluded,
            previous: None,
            removal: BTreeMap::new(),
        })
    }

    /// The version this one replaces (for `changes.json` and `removed.jsonl`; a local
    /// destination knows it already), and why clips are gone where a ledger event ended their
    /// basis.
    pub fn set_history(
        &mut self,
        previous: Option<dest::Previous>,
        removal: BTreeMap<String, RemovalReason>,
    ) {
        if previous.is_some() {
            self.previous = previous;
        }
        self.removal = removal;
    }

    /// `removed.jsonl` and `changes.json` against the previous version.
    fn history(&self, entries: &[&ManifestEntry], merkle_root: &str) -> (Vec<u8>, Vec<u8>) {
        let mut now: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for e in entries {
            now.entry(e.video_id.as_str())
                .or_default()
                .insert(e.path.as_str(), e.blake3.as_str());
        }
        let empty = dest::Previous::default();
        let before = self.previous.as_ref().unwrap_or(&empty);
        let mut changes = ChangesRecord {
            format: CHANGES_FORMAT.into(),
            previous_merkle_root: self.previous.as_ref().map(|p| p.merkle_root.clone()),
            merkle_root: merkle_root.to_owned(),
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            kept: Vec::new(),
        };
        let mut removed = Vec::new();
        for (id, old) in &before.clips {
            let gone: Vec<String> = match now.get(id.as_str()) {
                None => {
                    changes.removed.push(id.clone());
                    old.frames.keys().chain(&old.files).cloned().collect()
                }
                Some(new) => {
                    let same = new.len() == old.frames.len()
                        && new
                            .iter()
                            .all(|(p, b)| old.frames.get(*p).is_some_and(|o| o == b));
                    if same {
                        changes.kept.push(id.clone());
                    } else {
                        changes.changed.push(id.clone());
                    }
                    old.frames
                        .keys()
                        .filter(|p| !new.contains_key(p.as_str()))
                        .cloned()
                        .collect()
                }
            };
            if gone.is_empty() {
                continue;
            }
            let still_in = now.contains_key(id.as_str());
            let (reason_code, event_id) = if still_in {
                ("changed".to_owned(), None)
            } else if let Some(r) = self.removal.get(id) {
                (r.code.clone(), r.event_id.clone())
            } else if let Some(code) = self.excluded.get(id) {
                (code.clone(), None)
            } else if let Some(f) = self.failed.iter().find(|f| f.video_id == *id) {
                (f.code.as_str().to_owned(), None)
            } else if self.included.contains_key(id) {
                ("no_frames".to_owned(), None)
            } else {
                ("not_in_catalog".to_owned(), None)
            };
            let mut paths = gone;
            paths.sort();
            removed.push(RemovedClip {
                video_id: id.clone(),
                paths,
                reason_code,
                event_id,
            });
        }
        for id in now.keys() {
            if !before.clips.contains_key(*id) {
                changes.added.push((*id).to_owned());
            }
        }
        for id in &changes.removed {
            crate::audit::note_erased(id, "dataset");
        }
        let mut lines = Vec::new();
        for r in &removed {
            lines.extend(serde_json::to_vec(r).expect("serialises"));
            lines.push(b'\n');
        }
        let mut json = serde_json::to_vec_pretty(&changes).expect("serialises");
        json.push(b'\n');
        (lines, json)
    }

    /// The dataset folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes one frame and keeps its manifest entry. The emitter sets `entry.path` and
    /// `entry.blake3` from the bytes; it refuses a frame whose clip the selection does not include
    /// on exactly `entry.provenance.consent`, a duplicate `(video_id, frame)`, an unsafe video id,
    /// bytes that are not a JPEG, or a JPEG whose size differs from `width`x`height`.
    /// Returns the completed entry.
    pub fn add_frame(
        &mut self,
        mut entry: ManifestEntry,
        jpeg: &FrameJpeg,
    ) -> Result<&ManifestEntry, EmitError> {
        let jpeg = jpeg.as_bytes();
        let what = format!("{} frame {}", entry.video_id, entry.frame);
        if !is_safe_video_id(&entry.video_id) {
            return Err(input_err(
                what,
                "video id must be 1..=128 of [A-Za-z0-9._-]",
            ));
        }
        match self.included.get(&entry.video_id) {
            None => return Err(input_err(what, "the selection does not include this clip")),
            Some(b) if *b != entry.provenance.consent => {
                return Err(input_err(
                    what,
                    "consent basis differs from the selection's",
                ));
            }
            Some(_) => {}
        }
        let key = (entry.video_id.clone(), entry.frame);
        if self.entries.contains_key(&key) {
            return Err(input_err(what, "frame given twice"));
        }
        let reader = image::ImageReader::new(Cursor::new(jpeg))
            .with_guessed_format()
            .map_err(|e| input_err(&what, e.to_string()))?;
        if reader.format() != Some(image::ImageFormat::Jpeg) {
            return Err(input_err(what, "frame bytes are not a JPEG"));
        }
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| input_err(&what, e.to_string()))?;
        if (w, h) != (entry.width, entry.height) {
            return Err(input_err(
                what,
                format!(
                    "JPEG is {w}x{h}, entry says {}x{}",
                    entry.width, entry.height
                ),
            ));
        }
        for d in &entry.detections {
            let i = coco_names::index_of(&d.class);
            if i.map(|i| coco_names::CATEGORY_IDS[i]) != Some(d.category_id) {
                return Err(input_err(
                    what,
                    format!(
                        "detection class {:?} / category {} is not a COCO pair",
                        d.class, d.category_id
                    ),
                ));
            }
        }
        entry.blake3 = crate::hashing::hash_bytes(jpeg);
        entry.path = ManifestEntry::frame_path(&entry.video_id, entry.frame, &entry.blake3);
        write_beneath(&self.root, &entry.path, jpeg, false)?;
        Ok(self.entries.entry(key).or_insert(entry))
    }

    /// Records a frame that was decoded but is not part of the dataset.
    pub fn withhold(&mut self, frame: WithheldFrame) {
        self.withheld.insert(frame);
    }

    /// Records a selected clip that could not be processed.
    pub fn clip_failed(&mut self, failure: ClipFailure) {
        self.failed.insert(failure);
    }

    /// Writes the version folder (manifest, selection copy, annotations, report, change log),
    /// then `dataset.json`, and returns the record. Against an earlier dataset, `dataset.json` is
    /// replaced in one atomic write and only then is what the new version lacks deleted
    /// ([`dest::Destination::commit`]): until that write, the earlier version is whole.
    pub fn finish(self) -> Result<DatasetRecord, EmitError> {
        let entries: Vec<&ManifestEntry> = self.entries.values().collect();
        // The version's files, by name inside the version folder.
        let mut version_files: BTreeMap<String, Vec<u8>> = BTreeMap::new();

        // Manifest and its root.
        let mut manifest = Vec::new();
        let mut leaves = Vec::with_capacity(entries.len());
        for e in &entries {
            let line = serde_json::to_vec(e).expect("ManifestEntry serialises");
            leaves.push(merkle::leaf(&line));
            manifest.extend_from_slice(&line);
            manifest.push(b'\n');
        }
        version_files.insert(paths::MANIFEST.to_owned(), manifest);
        let root_hash = merkle::root(&leaves);

        version_files.insert(paths::SELECTION.to_owned(), self.shipped.clone());
        let (removed, changes) = self.history(&entries, &crate::hashing::hex(&root_hash));
        version_files.insert(paths::REMOVED.to_owned(), removed);
        version_files.insert(paths::CHANGES.to_owned(), changes);

        let counts = self.counts();
        let labels = used_classes(&entries);
        version_files.insert(paths::COCO.to_owned(), coco::render(&entries));
        version_files.insert(
            paths::LABELSTUDIO.to_owned(),
            labelstudio::render(&entries, &self.options),
        );
        version_files.insert(
            paths::LABELSTUDIO_CONFIG.to_owned(),
            labelstudio::config(&labels).into_bytes(),
        );
        let mut by_clip: BTreeMap<&str, Vec<&ManifestEntry>> = BTreeMap::new();
        for e in &entries {
            by_clip.entry(e.video_id.as_str()).or_default().push(e);
        }
        for (video_id, clip) in &by_clip {
            version_files.insert(
                format!("{}/{video_id}.xml", paths::CVAT_DIR),
                cvat::render(video_id, clip, &labels, self.options.track_iou).into_bytes(),
            );
        }

        let mut record = DatasetRecord {
            format: DATASET_FORMAT.into(),
            clearframe_version: env!("CARGO_PKG_VERSION").into(),
            merkle: merkle::CONSTRUCTION.into(),
            merkle_root: crate::hashing::hex(&root_hash),
            version: String::new(),
            frames: entries.len() as u64,
            catalog_blake3: self.inputs.catalog_blake3.clone(),
            ledger_blake3: self.inputs.ledger_blake3.clone(),
            as_of: self.inputs.as_of.clone(),
            files: BTreeMap::new(),
            counts,
            withheld: self.withheld.iter().cloned().collect(),
            failed_clips: self.failed.iter().cloned().collect(),
            seal: String::new(),
        };
        let html = report::render(&report::ReportInput {
            record: &record,
            entries: &entries,
            selection: &self.selection,
            frames_per_clip: self.options.report_frames_per_clip,
        });
        version_files.insert(paths::REPORT.to_owned(), html.into_bytes());

        let hashes: BTreeMap<String, String> = version_files
            .iter()
            .map(|(name, bytes)| (name.clone(), crate::hashing::hash_bytes(bytes)))
            .collect();
        record.version = version_id(&hashes);
        let mut written: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
        for (name, bytes) in &version_files {
            let rel = record.path(name);
            write_beneath(&self.root, &rel, bytes, true)?;
            written.insert(rel.clone());
            if name != paths::MANIFEST {
                record.files.insert(rel, hashes[name].clone());
            }
        }
        record.seal = record.compute_seal();
        match &self.dest {
            Some(dest) => dest.commit(&written, record.to_bytes())?,
            None => write_beneath(&self.root, paths::DATASET, &record.to_bytes(), true)?,
        }
        Ok(record)
    }

    fn counts(&self) -> Counts {
        let mut c = Counts {
            decisions: self.decisions.clone(),
            excluded_by_reason: self.excluded_by_reason.clone(),
            ..Counts::default()
        };
        for e in self.entries.values() {
            let clip = c.clips.entry(e.video_id.clone()).or_default();
            clip.frames += 1;
            clip.detections += e.detections.len() as u64;
            clip.faces_masked += u64::from(e.redaction.faces_masked);
            for d in &e.detections {
                *c.classes.entry(d.class.clone()).or_default() += 1;
            }
        }
        for w in &self.withheld {
            c.clips.entry(w.video_id.clone()).or_default().withheld += 1;
        }
        c
    }
}

/// The name of a version folder: the first [`paths::NAME_HASH_LEN`] hex digits of the blake3 of
/// the version's files, given as name (inside the version folder) -> blake3 (hex), serialised as
/// one JSON object with sorted keys. The same files give the same name, so writing a version
/// never changes a file of another.
pub fn version_id(files: &BTreeMap<String, String>) -> String {
    let json = serde_json::to_vec(files).expect("a map of strings serialises");
    let mut id = crate::hashing::hash_bytes(&json);
    id.truncate(paths::NAME_HASH_LEN);
    id
}

/// Classes used by the entries, in COCO order (the label set of the Label Studio and CVAT files;
/// `person` always included so that an empty dataset still has a valid labelling config).
fn used_classes(entries: &[&ManifestEntry]) -> Vec<&'static str> {
    let mut used = BTreeSet::from([0usize]);
    for e in entries {
        for d in &e.detections {
            if let Some(i) = coco_names::index_of(&d.class) {
                used.insert(i);
            }
        }
    }
    used.into_iter().map(|i| coco_names::NAMES[i]).collect()
}

/// Rounds to `places` decimals (for stable, readable coordinates in annotation files).
pub(crate) fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    let r = (v * f).round() / f;
    if r == 0.0 { 0.0 } else { r }
}

/// Escapes text for XML and HTML content and attribute values.
pub(crate) fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_ids_must_be_single_safe_components() {
        assert!(is_safe_video_id("clip-01_a.b"));
        for bad in ["", ".", "..", "a/b", "a b", "a\\b", "é"] {
            assert!(!is_safe_video_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn selection_reasons_accept_one_or_many() {
        let lines = parse_selection(
            b"{\"video_id\":\"a\",\"decision\":\"exclude\",\"reason\":\"revoked\"}\n\n{\"video_id\":\"b\",\"decision\":\"include\",\"basis\":{\"kind\":\"consent\",\"event_id\":\"e1\",\"event_blake3\":\"00\"},\"reasons\":[\"x\",\"y\"],\"extra\":1}\n",
        )
        .unwrap();
        assert_eq!(lines[0].reasons, vec!["revoked"]);
        assert_eq!(lines[1].reasons, vec!["x", "y"]);
        assert!(parse_selection(b"{}\n").unwrap_err().starts_with("line 1"));
    }

    #[test]
    fn select_stage_lines_parse_and_keep_their_basis() {
        use crate::records::{Basis, BasisKind, Decision, SelectionLine};
        let basis = Basis {
            kind: BasisKind::Neighbors,
            event_id: "ev-7".into(),
            event_blake3: "ab".repeat(32),
            event_line: 7,
            document_blake3: None,
        };
        let line = SelectionLine {
            line: 3,
            video_id: Some("porch".into()),
            decision: Decision::Include,
            basis: Some(basis.clone()),
            reasons: vec![],
            reason_codes: vec![],
            clip: None,
        };
        let bytes = serde_json::to_vec(&line).unwrap();
        let view = &parse_selection(&bytes).unwrap()[0];
        assert_eq!(view.decision, "include");
        assert_eq!(view.video_id.as_deref(), Some("porch"));
        assert_eq!(view.basis.as_ref(), Some(&ConsentBasis::from(&basis)));
        assert_eq!(ConsentBasis::from(&basis).kind, "neighbors");
    }

    #[test]
    fn jpeg_encoding_is_deterministic() {
        let img =
            image::RgbImage::from_fn(33, 17, |x, y| image::Rgb([x as u8 * 7, y as u8 * 13, 99]));
        let a = jpeg_of(&img).unwrap();
        assert_eq!(a, jpeg_of(&img).unwrap());
        assert_eq!(&a[..2], &[0xFF, 0xD8]);
    }
}
