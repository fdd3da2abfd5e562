//! Replacing a dataset without destroying what ClearFrame did not write.
//!
//! Before anything is written, the destination (a local folder or an S3 prefix) is inspected
//! ([`Destination::inspect`], read-only):
//! - **empty**: a new dataset;
//! - **an earlier dataset**: a `dataset.json` in canonical form whose seal checks, whose `files`
//!   are dataset files, and whose `manifest.jsonl` has the recorded Merkle root and frame count.
//!   What ClearFrame may delete is exactly what that record vouches for: its `files`, the frame
//!   paths of its manifest, its `manifest.jsonl` and `dataset.json`;
//! - **an interrupted replacement**: the sealed marker [`PARTIAL`] that a replacement writes
//!   before it writes anything else, beside the earlier `dataset.json` (or none, for a first
//!   dataset). It lists the earlier dataset's objects and the clips the interrupted run was
//!   writing, whose objects are `frames/<id>/<frame:06>-<blake3:16>.jpg`, beside the files of a
//!   version folder `versions/<version>/…`;
//! - **anything else is refused**, naming what was found, and nothing is deleted or written.
//!
//! Objects no record vouches for are left alone and named in a warning; one that the new dataset
//! would overwrite is refused. Then S3 destinations get a probe write ([`Store::probe_write`]),
//! so that settings that make writes fail (`--require-sse` on an endpoint that does not confirm
//! SSE) stop the run before the earlier dataset is touched.
//!
//! The replacement itself ([`Destination::begin`], [`Destination::commit`]): write the marker,
//! write the new frames and version folder beside the earlier dataset (no object it lists is
//! overwritten with other bytes: frames are named by their blake3 and a version folder by the
//! blake3 of its files), replace `dataset.json` in one atomic write, delete the earlier
//! dataset's objects that the new one does not list, delete the marker. Until `dataset.json` is
//! replaced, the earlier version is whole and readable; a run killed at any point leaves either
//! the earlier version or the new one, plus objects the marker vouches for, which the next run
//! deletes. The same on local folders and on S3.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    DATASET_FORMAT, DatasetRecord, EmitError, ManifestEntry, is_safe_video_id, merkle, paths,
};
use crate::storage::{Location, PROBE_PREFIX, Store};

/// The marker of a replacement in progress (sealed; see the module docs).
pub const PARTIAL: &str = ".clearframe-partial.json";

/// Format id of the marker.
pub const PARTIAL_FORMAT: &str = "clearframe-partial/1";

/// Files of a version folder other than CVAT files.
const FIXED: [&str; 8] = [
    paths::MANIFEST,
    paths::SELECTION,
    paths::REPORT,
    paths::COCO,
    paths::LABELSTUDIO,
    paths::LABELSTUDIO_CONFIG,
    paths::REMOVED,
    paths::CHANGES,
];

const HINT_FOREIGN: &str = "choose an empty folder or prefix, or one that holds a dataset ClearFrame wrote; ClearFrame replaces only what the dataset.json it wrote there lists";
const HINT_FORMAT: &str = "it was written by a ClearFrame with another dataset layout: move it away or choose another destination (this version replaces only datasets of its own layout)";
const HINT_CHANGED: &str = "the dataset was changed after ClearFrame wrote it: restore it (clearframe verify names what differs), or choose another destination";

/// The marker: what ClearFrame owns in a destination while a replacement is under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialRecord {
    format: String,
    /// Objects of the earlier dataset (as its record listed them).
    owned: Vec<String>,
    /// Clips the new dataset writes.
    clips: Vec<String>,
    /// The earlier dataset version being replaced, for the new one's `changes.json` and
    /// `removed.jsonl` (absent when it was not known either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Previous>,
    /// blake3 of this record, pretty-printed with `seal` empty.
    seal: String,
}

/// What a dataset version held, as the next version's change log needs it: its Merkle root and,
/// per clip, its frames (path -> blake3), annotation files and consent basis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    pub merkle_root: String,
    pub clips: std::collections::BTreeMap<String, PreviousClip>,
    /// Its other files (annotations, report, ...) and their blake3, as its record lists them.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// One clip of a [`Previous`] version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousClip {
    /// The ledger event its selection line recorded as its basis.
    pub basis_event_id: Option<String>,
    /// Frame path -> blake3.
    pub frames: std::collections::BTreeMap<String, String>,
    /// Its other files (the CVAT file).
    pub files: Vec<String>,
}

impl PartialRecord {
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("the marker serialises");
        v.push(b'\n');
        v
    }

    fn compute_seal(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.seal.clear();
        crate::hashing::hash_bytes(&unsealed.to_bytes())
    }
}

/// `frames/<id>/<frame:06>-<blake3:16>.jpg` with a safe id: the clip's id.
fn frame_clip(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(paths::FRAMES_DIR)?.strip_prefix('/')?;
    let (id, name) = rest.split_once('/')?;
    let (digits, hash) = name.strip_suffix(".jpg")?.split_once('-')?;
    (is_safe_video_id(id)
        && digits.len() >= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
        && is_name_hash(hash))
    .then_some(id)
}

/// [`paths::NAME_HASH_LEN`] lowercase hex digits.
fn is_name_hash(s: &str) -> bool {
    s.len() == paths::NAME_HASH_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `versions/<version>/<name>` where `name` is a file of a version folder: the version and the
/// name.
fn version_file(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(paths::VERSIONS_DIR)?.strip_prefix('/')?;
    let (version, name) = rest.split_once('/')?;
    (is_name_hash(version) && (FIXED.contains(&name) || cvat_clip(name).is_some()))
        .then_some((version, name))
}

/// `annotations/cvat/<id>.xml` (a name inside a version folder) with a safe id.
fn cvat_clip(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(paths::CVAT_DIR)?.strip_prefix('/')?;
    let id = rest.strip_suffix(".xml")?;
    is_safe_video_id(id).then_some(id)
}

/// A file a dataset record of `version` may list in `files`.
fn is_dataset_file(key: &str, version: &str) -> bool {
    version_file(key).is_some_and(|(v, name)| v == version && name != paths::MANIFEST)
}

/// An object a replacement may have written: `dataset.json`, a file of a version folder, or a
/// frame of one of `clips`.
fn would_write(key: &str, clips: &BTreeSet<String>) -> bool {
    key == paths::DATASET
        || version_file(key).is_some()
        || frame_clip(key).is_some_and(|id| clips.contains(id))
}

/// `N objects (a, b, c, …)` for messages.
pub(crate) fn describe(keys: &[&String]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> = keys.iter().take(SHOWN).map(|k| format!("`{k}`")).collect();
    if keys.len() > SHOWN {
        names.push(format!("and {} more", keys.len() - SHOWN));
    }
    let noun = if keys.len() == 1 { "object" } else { "objects" };
    format!("{} {noun} ({})", keys.len(), names.join(", "))
}

/// A destination for a dataset, inspected; see the module docs.
#[derive(Debug)]
pub struct Destination {
    store: Arc<dyn Store>,
    /// Objects there now that ClearFrame wrote (and may delete).
    owned: BTreeSet<String>,
    /// Objects there now that no record vouches for (left alone).
    unknown: Vec<String>,
    /// A finished dataset: `dataset.json`, every object it lists, no replacement under way.
    complete: bool,
    /// The version there now (or the one an interrupted replacement was replacing).
    previous: Option<Previous>,
}

impl Destination {
    /// Inspects `store` (read-only), refuses a destination that holds anything ClearFrame cannot
    /// show it wrote, then probes that writes are accepted (S3). Nothing is deleted.
    pub fn inspect(store: Arc<dyn Store>) -> Result<Destination, EmitError> {
        let present: BTreeSet<String> = store
            .list("")?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !k.starts_with(PROBE_PREFIX))
            .collect();
        let mut listed = BTreeSet::new();
        let mut complete = false;
        let mut previous = None;
        if !present.is_empty() {
            let refuse = |why: String, hint: &str| {
                let all: Vec<&String> = present.iter().collect();
                EmitError::NotOurs {
                    location: store.location().to_string(),
                    found: describe(&all),
                    why,
                    hint: hint.to_owned(),
                }
            };
            let partial = if present.contains(PARTIAL) {
                Some(read_partial(&*store, &present))
            } else {
                None
            };
            if present.contains(paths::DATASET) {
                let (owned, prev) =
                    read_record(&*store)?.map_err(|(why, hint)| refuse(why, hint))?;
                listed = owned;
                previous = Some(prev);
                complete = partial.is_none() && listed.iter().all(|k| present.contains(k));
                // A replacement that wrote its dataset.json but not yet removed its marker.
                if let Some(Ok(Ok((more, _)))) = partial {
                    listed.extend(more);
                }
            } else {
                match partial {
                    Some(result) => {
                        let (owned, prev) = result?.map_err(|why| refuse(why, HINT_CHANGED))?;
                        listed = owned;
                        previous = prev;
                    }
                    None => {
                        return Err(refuse(
                            "it holds no dataset.json written by ClearFrame".to_owned(),
                            HINT_FOREIGN,
                        ));
                    }
                }
            }
        }
        let (owned, unknown): (BTreeSet<String>, BTreeSet<String>) =
            present.into_iter().partition(|k| listed.contains(k));
        store.probe_write()?;
        Ok(Destination {
            store,
            owned,
            unknown: unknown.into_iter().collect(),
            complete,
            previous,
        })
    }

    /// The dataset version the new one replaces, when one is known.
    pub fn previous(&self) -> Option<&Previous> {
        self.previous.as_ref()
    }

    /// Whether it holds a finished dataset ClearFrame wrote: a sealed `dataset.json` whose
    /// manifest has its Merkle root, every object that record lists, and no replacement under
    /// way.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Objects left alone because no record vouches for them.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// Starts the replacement by a dataset of `clips`: refuses when an object no record vouches
    /// for would be overwritten, warns about the others, writes the marker and deletes
    /// `dataset.json`.
    pub fn begin(&self, clips: &BTreeSet<String>) -> Result<(), EmitError> {
        let location = self.store.location().to_string();
        let collide: Vec<&String> = self
            .unknown
            .iter()
            .filter(|k| would_write(k, clips))
            .collect();
        if !collide.is_empty() {
            return Err(EmitError::NotOurs {
                location,
                found: describe(&collide),
                why: "the new dataset would overwrite them and no dataset.json ClearFrame wrote lists them".to_owned(),
                hint: "move them away, or choose another destination".to_owned(),
            });
        }
        if !self.unknown.is_empty() {
            let all: Vec<&String> = self.unknown.iter().collect();
            tracing::warn!(
                destination = %location,
                objects = %describe(&all),
                "left alone: no dataset.json ClearFrame wrote lists them (the new dataset does not include them either)"
            );
        }
        let mut marker = PartialRecord {
            format: PARTIAL_FORMAT.to_owned(),
            owned: self
                .owned
                .iter()
                .filter(|k| *k != PARTIAL)
                .cloned()
                .collect(),
            clips: clips.iter().cloned().collect(),
            previous: self.previous.clone(),
            seal: String::new(),
        };
        marker.seal = marker.compute_seal();
        self.store.put_record(PARTIAL, marker.to_bytes().into())?;
        Ok(())
    }

    /// Finishes the replacement: writes `dataset_json` as `dataset.json` (one atomic write: the
    /// new version replaces the earlier one for every reader at once), deletes the earlier
    /// dataset's objects and the interrupted runs' leftovers that are not in `written`, and
    /// deletes the marker.
    pub fn commit(
        &self,
        written: &BTreeSet<String>,
        dataset_json: Vec<u8>,
    ) -> Result<(), EmitError> {
        self.store.put_record(paths::DATASET, dataset_json.into())?;
        for key in &self.owned {
            if key == paths::DATASET || key == PARTIAL || written.contains(key) {
                continue;
            }
            self.store.delete(key)?;
            if let Location::Local(root) = self.store.location() {
                prune_empty_parents(root, key);
            }
        }
        self.store.delete(PARTIAL)?;
        Ok(())
    }
}

/// The objects of the local dataset folder `dir` that a sealed replacement marker vouches for
/// (the marker itself, the next version's objects): none without a valid marker.
pub(crate) fn pending_objects(dir: &std::path::Path) -> BTreeSet<String> {
    let store = crate::storage::LocalStore::new(dir.to_path_buf());
    let Ok(list) = store.list("") else {
        return BTreeSet::new();
    };
    let present: BTreeSet<String> = list.into_iter().map(|m| m.key).collect();
    if !present.contains(PARTIAL) {
        return BTreeSet::new();
    }
    match read_partial(&store, &present) {
        Ok(Ok((owned, _))) => owned,
        _ => BTreeSet::new(),
    }
}

/// Removes the folders of a deleted local key that are now empty, up to (not including) `root`,
/// following no link.
fn prune_empty_parents(root: &std::path::Path, key: &str) {
    if let Some((dir, _)) = key.rsplit_once('/') {
        crate::storage::beneath::Beneath::new(root).remove_empty_dirs(dir);
    }
}

/// What a marker vouches for (objects ClearFrame may delete) and the version it was replacing.
type Vouched = (BTreeSet<String>, Option<Previous>);

/// Why a destination is refused, and what to do.
type Refused = (String, &'static str);

/// What an earlier dataset's record vouches for, or why it is not a record ClearFrame wrote.
/// (The outer error is the store's.)
fn read_record(
    store: &dyn Store,
) -> Result<Result<(BTreeSet<String>, Previous), Refused>, EmitError> {
    let bytes = store.get(paths::DATASET)?;
    // Another layout's record is named as such before its fields are checked.
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    if let Ok(Format { format }) = serde_json::from_slice::<Format>(&bytes)
        && format != DATASET_FORMAT
        && format.starts_with("clearframe-dataset/")
    {
        return Ok(Err((
            format!("its dataset.json has format {format:?}, not {DATASET_FORMAT:?}"),
            HINT_FORMAT,
        )));
    }
    let record: DatasetRecord = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Err((
                format!("its dataset.json is not a dataset record ({e})"),
                HINT_CHANGED,
            )));
        }
    };
    if record.to_bytes() != bytes[..] {
        return Ok(Err((
            "its dataset.json is not in the form ClearFrame writes (it was edited)".to_owned(),
            HINT_CHANGED,
        )));
    }
    if record.compute_seal() != record.seal {
        return Ok(Err((
            "the seal of its dataset.json does not match the record's content".to_owned(),
            HINT_CHANGED,
        )));
    }
    if record.format != DATASET_FORMAT || record.merkle != merkle::CONSTRUCTION {
        return Ok(Err((
            format!(
                "its dataset.json has format {:?} / Merkle construction {:?}, not {DATASET_FORMAT:?} / {:?}",
                record.format,
                record.merkle,
                merkle::CONSTRUCTION
            ),
            HINT_FORMAT,
        )));
    }
    if !is_name_hash(&record.version) {
        return Ok(Err((
            format!("its dataset.json names the version {:?}", record.version),
            HINT_CHANGED,
        )));
    }
    let manifest_key = record.path(paths::MANIFEST);
    let mut owned: BTreeSet<String> = [paths::DATASET.to_owned(), manifest_key.clone()]
        .into_iter()
        .collect();
    for key in record.files.keys() {
        if !is_dataset_file(key, &record.version) {
            return Ok(Err((
                format!(
                    "its dataset.json lists {key:?}, which is not a file of a ClearFrame dataset"
                ),
                HINT_CHANGED,
            )));
        }
        owned.insert(key.clone());
    }
    let manifest = match store.get(&manifest_key) {
        Ok(m) => m,
        Err(e) if e.is_not_found() => {
            return Ok(Err((
                "its dataset.json has no manifest.jsonl beside it".to_owned(),
                HINT_CHANGED,
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match merkle::manifest_root(&manifest) {
        Ok(root) if crate::hashing::hex(&root) == record.merkle_root => {}
        _ => {
            return Ok(Err((
                "its manifest.jsonl does not have the Merkle root its dataset.json records"
                    .to_owned(),
                HINT_CHANGED,
            )));
        }
    }
    let mut previous = Previous {
        merkle_root: record.merkle_root.clone(),
        clips: std::collections::BTreeMap::new(),
        files: record.files.clone(),
    };
    let text = String::from_utf8_lossy(&manifest);
    let mut lines = 0u64;
    for (i, line) in text.lines().enumerate() {
        lines += 1;
        let entry: ManifestEntry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Err((
                    format!("manifest.jsonl line {}: {e}", i + 1),
                    HINT_CHANGED,
                )));
            }
        };
        if !is_safe_video_id(&entry.video_id)
            || entry.path != ManifestEntry::frame_path(&entry.video_id, entry.frame, &entry.blake3)
        {
            return Ok(Err((
                format!(
                    "manifest.jsonl line {} names {:?}, which is not a frame path",
                    i + 1,
                    entry.path
                ),
                HINT_CHANGED,
            )));
        }
        previous
            .clips
            .entry(entry.video_id.clone())
            .or_default()
            .frames
            .insert(entry.path.clone(), entry.blake3.clone());
        owned.insert(entry.path);
    }
    for key in record.files.keys() {
        if let Some(id) = version_file(key).and_then(|(_, name)| cvat_clip(name)) {
            previous
                .clips
                .entry(id.to_owned())
                .or_default()
                .files
                .push(key.clone());
        }
    }
    // The basis each clip was shipped on (an unreadable copy leaves it unknown: verify names it).
    if let Ok(shipped) = store.get(&record.path(paths::SELECTION)) {
        for line in shipped.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(l) = serde_json::from_slice::<super::ShippedSelectionLine>(line)
                && let Some(c) = previous.clips.get_mut(&l.video_id)
            {
                c.basis_event_id = Some(l.basis.event_id);
            }
        }
    }
    if lines != record.frames {
        return Ok(Err((
            format!(
                "its manifest.jsonl has {lines} lines, its dataset.json records {} frames",
                record.frames
            ),
            HINT_CHANGED,
        )));
    }
    Ok(Ok((owned, previous)))
}

/// What the marker of an interrupted replacement vouches for (among `present`), or why it is not
/// a marker ClearFrame wrote.
fn read_partial(
    store: &dyn Store,
    present: &BTreeSet<String>,
) -> Result<Result<Vouched, String>, EmitError> {
    let bytes = store.get(PARTIAL)?;
    let marker: PartialRecord = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Err(format!(
                "its {PARTIAL} is not a marker ClearFrame wrote ({e})"
            )));
        }
    };
    if marker.format != PARTIAL_FORMAT
        || marker.to_bytes() != bytes[..]
        || marker.compute_seal() != marker.seal
    {
        return Ok(Err(format!(
            "its {PARTIAL} is not a sealed marker ClearFrame wrote"
        )));
    }
    let clips: BTreeSet<String> = marker.clips.iter().cloned().collect();
    if let Some(bad) = marker.clips.iter().find(|c| !is_safe_video_id(c)) {
        return Ok(Err(format!("its {PARTIAL} names the clip {bad:?}")));
    }
    if let Some(bad) = marker.owned.iter().find(|k| {
        !(k.as_str() == paths::DATASET
            || version_file(k).is_some()
            || frame_clip(k).is_some()
            || k.as_str() == PARTIAL)
    }) {
        return Ok(Err(format!(
            "its {PARTIAL} lists {bad:?}, which is not a file of a ClearFrame dataset"
        )));
    }
    let mut owned: BTreeSet<String> = marker.owned.into_iter().collect();
    owned.insert(PARTIAL.to_owned());
    owned.extend(present.iter().filter(|k| would_write(k, &clips)).cloned());
    Ok(Ok((owned, marker.previous)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shapes() {
        let h = "0123456789abcdef";
        assert_eq!(
            frame_clip(&format!("frames/v-1/000012-{h}.jpg")),
            Some("v-1")
        );
        assert_eq!(frame_clip("frames/v-1/000012.jpg"), None);
        assert_eq!(frame_clip(&format!("frames/v-1/12-{h}.jpg")), None);
        assert_eq!(frame_clip("frames/v-1/000012-0123456789ABCDEF.jpg"), None);
        assert_eq!(frame_clip("frames/v-1/000012-0123.jpg"), None);
        assert_eq!(frame_clip("frames/v-1/notes.txt"), None);
        assert_eq!(frame_clip(&format!("frames/../000001-{h}.jpg")), None);
        assert_eq!(cvat_clip("annotations/cvat/v-1.xml"), Some("v-1"));
        assert_eq!(
            version_file(&format!("versions/{h}/annotations/cvat/v-1.xml")),
            Some((h, "annotations/cvat/v-1.xml"))
        );
        assert!(is_dataset_file(
            &format!("versions/{h}/annotations/coco.json"),
            h
        ));
        assert!(!is_dataset_file(&format!("versions/{h}/manifest.jsonl"), h));
        assert!(!is_dataset_file(
            "versions/fedcba9876543210/annotations/coco.json",
            h
        ));
        assert!(!is_dataset_file(
            &format!("versions/{h}/annotations/mine.json"),
            h
        ));
        assert!(!is_dataset_file("annotations/coco.json", h));
        let clips = BTreeSet::from(["a".to_owned()]);
        assert!(would_write(&format!("frames/a/000000-{h}.jpg"), &clips));
        assert!(!would_write(&format!("frames/b/000000-{h}.jpg"), &clips));
        assert!(would_write(&format!("versions/{h}/report.html"), &clips));
        assert!(!would_write("report.html", &clips));
        assert!(!would_write("versions/notes.txt", &clips));
    }
}
