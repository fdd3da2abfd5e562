//! The pipeline one stage at a time, for engineers who iterate on one of them:
//! `select` → `redact` → `detect` → `emit`, all in one work folder (a path, `file://` or
//! `s3://` URL).
//!
//! ```text
//! WORK/selection.jsonl, select.json         clearframe select --out WORK
//! WORK/redacted/<video_id>/<frame>.png      clearframe redact --work WORK
//! WORK/redacted/<video_id>/clip.json        (one record per clip, beside its frames)
//! WORK/redact.json                          (the stage record, written last)
//! WORK/detected/<video_id>.json             clearframe detect --work WORK
//! WORK/detect.json                          (the stage record, written last)
//! DATASET/...                               clearframe emit --work WORK --out DATASET
//! ```
//!
//! Each stage reads the previous stage's record, checks by blake3 that what it reads is what that
//! record describes, and writes its own record last (an atomic put), after removing it first: a
//! stage that stops half-way leaves no record, and the next stage refuses to start. `redact` and
//! `detect` resume: a clip whose record was made from the same inputs and settings is kept, the
//! others are redone, and clips the selection no longer includes (a revoked consent) are deleted.
//!
//! A work folder is ClearFrame's only when it holds a stage record ClearFrame wrote
//! ([`check_work_folder`]); the stages delete only ClearFrame's own keys in it: their records,
//! `redacted/<id>/<frame>.png`, `redacted/<id>/clip.json` and `detected/<id>.json`. Anything else
//! found there is left alone, with a warning.
//!
//! Redacted frames are lossless PNGs, so that `detect` sees exactly the pixels `run` detects on
//! and `emit` encodes exactly the JPEGs `run` writes: the stages in sequence give the same dataset,
//! byte for byte, as `clearframe run` with the same inputs and settings. Decoding never stands
//! alone: unredacted frames are not an artifact.

pub mod detect;
pub mod emit;
pub mod redact;
pub mod select;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::config::Config;
use crate::emit::clip::ClipInfo;
use crate::emit::{ConsentBasis, EmittedDetection, WithheldFrame};
use crate::redact::RedactionReport;
use crate::storage::Store;

/// Keys in the work folder.
pub mod keys {
    /// The select stage's record.
    pub const SELECT: &str = "select.json";
    /// The selection lines.
    pub const SELECTION: &str = "selection.jsonl";
    /// The redact stage's record.
    pub const REDACT: &str = "redact.json";
    /// The detect stage's record.
    pub const DETECT: &str = "detect.json";
    /// Folder of redacted frames and per-clip redaction records.
    pub const REDACTED: &str = "redacted";
    /// Folder of per-clip detection records.
    pub const DETECTED: &str = "detected";

    /// Which dataset the work folder last emitted, and where (`emit` skips an unchanged one).
    pub const EMITTED: &str = "emitted.json";
    /// Folder of the per-shard stage records (`run --shard I/N`).
    pub const SHARDS: &str = "shards";

    /// The redact stage's record: `redact.json`, or `shards/redact-<I>-of-<N>.json` for a shard.
    pub fn redact_record(shard: Option<super::Shard>) -> String {
        match shard {
            None => REDACT.to_owned(),
            Some(s) => format!("{SHARDS}/redact-{}-of-{}.json", s.index, s.count),
        }
    }
    /// The detect stage's record: `detect.json`, or `shards/detect-<I>-of-<N>.json` for a shard.
    pub fn detect_record(shard: Option<super::Shard>) -> String {
        match shard {
            None => DETECT.to_owned(),
            Some(s) => format!("{SHARDS}/detect-{}-of-{}.json", s.index, s.count),
        }
    }
    /// The stage (`redact` or `detect`) and shard of a key under `shards/`.
    pub fn parse_shard_record(key: &str) -> Option<(&str, super::Shard)> {
        let name = key
            .strip_prefix(SHARDS)?
            .strip_prefix('/')?
            .strip_suffix(".json")?;
        let (stage, rest) = name.split_once('-')?;
        let (i, n) = rest.split_once("-of-")?;
        let (index, count) = (i.parse().ok()?, n.parse().ok()?);
        (matches!(stage, "redact" | "detect") && index < count)
            .then_some((stage, super::Shard { index, count }))
    }

    /// `redacted/<video_id>/clip.json`: inside the clip's own folder, so that no two ids share a
    /// key (with `redacted/<id>.json`, the record of `a` was the frame folder of `a.json`).
    pub fn clip_redaction(video_id: &str) -> String {
        format!("{REDACTED}/{video_id}/clip.json")
    }
    /// `redacted/<video_id>/` (the clip's frames)
    pub fn clip_frames(video_id: &str) -> String {
        format!("{REDACTED}/{video_id}/")
    }
    /// `redacted/<video_id>/<frame:06>.png`
    pub fn frame(video_id: &str, frame: u64) -> String {
        format!("{REDACTED}/{video_id}/{frame:06}.png")
    }
    /// `detected/<video_id>.json`
    pub fn clip_detections(video_id: &str) -> String {
        format!("{DETECTED}/{video_id}.json")
    }
}

/// One shard of a work folder's clips: the clips whose stable hash (the first eight bytes of the
/// blake3 of the video id, little-endian, modulo `count`) is `index`. Every process that is given
/// the same `count` agrees on which clips are whose, whatever the catalog order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The environment variables a shard index is read from with `--shard env/N`: Kubernetes
/// Indexed Jobs and AWS Batch array jobs.
pub const SHARD_INDEX_ENV: [&str; 2] = ["JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"];

impl Shard {
    /// Parses `I/N` (0 <= I < N), or `env/N` with I from [`SHARD_INDEX_ENV`].
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: a shard is I/N (e.g. 0/4) or env/N"))?;
        let count: u32 = n
            .parse()
            .map_err(|_| format!("{s:?}: N must be a whole number"))?;
        let index: u32 = if i == "env" {
            let found: Vec<(&str, String)> = SHARD_INDEX_ENV
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v)))
                .collect();
            match found.as_slice() {
                [] => {
                    return Err(format!(
                        "--shard env/{n}: neither {} is set",
                        SHARD_INDEX_ENV.join(" nor ")
                    ));
                }
                [(k, v)] => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{k}={v:?} is not a shard index"))?,
                [(k1, v1), (k2, v2), ..] => {
                    return Err(format!(
                        "--shard env/{n}: {k1}={v1:?} and {k2}={v2:?} are both set; set one"
                    ));
                }
            }
        } else {
            i.parse()
                .map_err(|_| format!("{s:?}: I must be a whole number or `env`"))?
        };
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }

    /// Whether `video_id` belongs to this shard.
    pub fn holds(&self, video_id: &str) -> bool {
        let h = blake3::hash(video_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(first) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether `video_id` is this process's to handle: every clip without a shard.
    pub fn owns(shard: Option<Shard>, video_id: &str) -> bool {
        shard.is_none_or(|s| s.holds(video_id))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Format id of `redact.json`.
pub const REDACT_FORMAT: &str = "clearframe-redact/2";
/// Format id of `detect.json`.
pub const DETECT_FORMAT: &str = "clearframe-detect/1";

/// How a selected clip went through `redact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClipStatus {
    /// Decoded and redacted to the end.
    Redacted,
    /// Could not be read or decoded (frames redacted before the failure are kept).
    Failed,
    /// Left out by policy (indoor clip under `exclude`).
    Excluded,
}

/// One redacted frame, as `redact` stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactedFrameRecord {
    /// Index among the decoded frames of the clip.
    pub frame: u64,
    /// Presentation time in seconds.
    pub timestamp_s: f64,
    /// Work-folder key of the PNG.
    pub path: String,
    /// blake3 (hex) of the PNG's bytes.
    pub blake3: String,
    /// Face masks drawn on it.
    pub faces_masked: u32,
    /// Faces the verifier found on it (all covered by masks, or it would be withheld).
    pub verifier_faces: u32,
}

/// `redacted/<video_id>.json`: one clip's redaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipRedactionRecord {
    pub video_id: String,
    /// The clip's catalog URI.
    pub uri: String,
    /// The consent or sharing event the selection admitted it on.
    pub consent: ConsentBasis,
    /// blake3 of everything this record follows from (source bytes, consent basis, settings,
    /// models, versions); a clip whose key is unchanged is not redone.
    pub key: String,
    /// blake3 of the clip's bytes as this record's key used them (absent when the clip was never
    /// opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_blake3: Option<String>,
    /// The source's size and version tag (local: mtime; S3: ETag) taken before it was read: while
    /// the store still answers the same, a rebuild need not read the clip again to know its
    /// blake3 (`--rehash` reads it anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_stamp: Option<String>,
    pub status: ClipStatus,
    /// For a failed or excluded clip: the class of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::records::FailureCode>,
    /// Why the clip failed or was excluded.
    pub reason: Option<String>,
    /// Absent when the clip could not be opened.
    pub info: Option<ClipInfo>,
    /// Frames that passed the verifier, in order.
    pub frames: Vec<RedactedFrameRecord>,
    /// Frames the verifier withheld.
    pub withheld: Vec<WithheldFrame>,
    /// Redaction numbers.
    pub report: RedactionReport,
}

/// A per-clip record as listed in a stage record: where it is and its blake3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRef {
    pub key: String,
    pub blake3: String,
}

/// `redact.json`: the redact stage's record, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactStageRecord {
    /// [`REDACT_FORMAT`].
    pub format: String,
    pub clearframe_version: String,
    /// blake3 of the `select.json` this stage read.
    pub select_blake3: String,
    /// The effective settings.
    pub config: Config,
    /// blake3 of the effective settings' canonical JSON.
    pub config_blake3: String,
    /// Every clip the selection included, by video id.
    pub clips: BTreeMap<String, RecordRef>,
}

/// Detections of one redacted frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrameDetections {
    pub frame: u64,
    pub detections: Vec<EmittedDetection>,
}

/// `detected/<video_id>.json`: one clip's detections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipDetectionsRecord {
    pub video_id: String,
    /// blake3 of everything this record follows from (the clip's redaction key and the blake3 of
    /// every redacted frame, the detect settings, the model); a clip whose key is unchanged is
    /// not redone.
    pub key: String,
    /// Per redacted frame, in order.
    pub frames: Vec<FrameDetections>,
}

/// `detect.json`: the detect stage's record, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectStageRecord {
    /// [`DETECT_FORMAT`].
    pub format: String,
    pub clearframe_version: String,
    /// blake3 of the `redact.json` this stage read.
    pub redact_blake3: String,
    /// The effective settings: `redact`'s, with this stage's `[detect]` section.
    pub config: Config,
    /// blake3 of the effective settings' canonical JSON (what the manifest records).
    pub config_blake3: String,
    /// The object detector: name and blake3.
    pub model: String,
    pub model_blake3: String,
    /// Clips with at least one redacted frame, by video id.
    pub clips: BTreeMap<String, RecordRef>,
}

/// Reads and parses a JSON record from the work folder, naming it in errors.
pub(crate) fn read_record<T: DeserializeOwned>(
    store: &Arc<dyn Store>,
    key: &str,
    missing: &str,
) -> anyhow::Result<(T, String)> {
    let bytes = store.get(key).map_err(|e| {
        if e.is_not_found() {
            anyhow::anyhow!("{} does not exist: {missing}", store.url(key))
        } else {
            anyhow::Error::from(e).context(format!("cannot read {}", store.url(key)))
        }
    })?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid record", store.url(key)))?;
    Ok((value, crate::hashing::hash_bytes(&bytes)))
}

/// Reads a record and checks it has the blake3 its stage record lists.
pub(crate) fn read_listed<T: DeserializeOwned>(
    store: &Arc<dyn Store>,
    r: &RecordRef,
    stage: &str,
) -> anyhow::Result<T> {
    let (value, blake3) = read_record(store, &r.key, &format!("rerun `clearframe {stage}`"))?;
    anyhow::ensure!(
        blake3 == r.blake3,
        "{} changed after `clearframe {stage}` wrote it (blake3 {blake3}, recorded {}); rerun `clearframe {stage}`",
        store.url(&r.key),
        r.blake3
    );
    Ok(value)
}

/// Reads a redacted frame back from the work folder as verified, for `detect` and `emit`: it
/// must be the PNG `redact` recorded (by blake3).
pub(crate) fn read_frame(
    work: &Arc<dyn Store>,
    f: &RedactedFrameRecord,
) -> anyhow::Result<crate::redact::RedactedFrame> {
    let bytes = work
        .get(&f.path)
        .with_context(|| format!("cannot read {}", work.url(&f.path)))?;
    crate::redact::RedactedFrame::readmit_png(
        &bytes,
        &f.blake3,
        f.frame,
        f.timestamp_s,
        f.faces_masked as usize,
    )
    .with_context(|| work.url(&f.path).clone())
}

/// Keeps one kind of stage record in a work folder: a stage run without a shard deletes the
/// shards' records of that stage, a shard deletes the single record and the records of shards of
/// another count. Run before the stage writes anything.
pub(crate) fn clear_other_records(
    store: &Arc<dyn Store>,
    stage: &str,
    shard: Option<Shard>,
) -> anyhow::Result<()> {
    if shard.is_some() {
        let single = if stage == "redact" {
            keys::REDACT
        } else {
            keys::DETECT
        };
        delete_if_present(store, single)?;
    }
    let prefix = format!("{}/", keys::SHARDS);
    let listed = store
        .list(&prefix)
        .with_context(|| format!("cannot list {}", store.url(&prefix)))?;
    for m in listed {
        if let Some((st, s)) = keys::parse_shard_record(&m.key)
            && st == stage
            && shard.is_none_or(|mine| mine.count != s.count)
        {
            delete_if_present(store, &m.key)?;
        }
    }
    Ok(())
}

/// What `emit` reads of a work folder's `redact` and `detect` records: one pair, or one per
/// shard, merged and checked as a chain (selection -> redaction -> detections).
pub(crate) struct StageRecords {
    /// Every clip's redaction record, by video id.
    pub redacted: BTreeMap<String, RecordRef>,
    /// Every clip's detections record (clips with redacted frames), by video id.
    pub detected: BTreeMap<String, RecordRef>,
    /// The detect settings' blake3 and the object detector (the same for every shard).
    pub config_blake3: String,
    pub model: String,
    pub model_blake3: String,
}

/// Reads the stage records `emit` builds a dataset from and checks them against the selection
/// (`select_blake3`): `redact.json` and `detect.json`, or the records of every shard of one count
/// (`run --shard I/N`). Refuses, naming them, while any clip of `included` is not processed.
pub(crate) fn read_stage_records(
    work: &Arc<dyn Store>,
    select_blake3: &str,
    included: &[String],
) -> anyhow::Result<StageRecords> {
    let single = match work.get(keys::REDACT) {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => {
            return Err(
                anyhow::Error::from(e).context(format!("cannot read {}", work.url(keys::REDACT)))
            );
        }
    };
    let mut pairs: Vec<(Option<Shard>, String, String)> = Vec::new();
    let mut counts = std::collections::BTreeSet::new();
    if single {
        pairs.push((None, keys::REDACT.to_owned(), keys::DETECT.to_owned()));
    } else {
        let prefix = format!("{}/", keys::SHARDS);
        for m in work
            .list(&prefix)
            .with_context(|| format!("cannot list {}", work.url(&prefix)))?
        {
            if let Some(("redact", s)) = keys::parse_shard_record(&m.key) {
                counts.insert(s.count);
                pairs.push((Some(s), m.key.clone(), keys::detect_record(Some(s))));
            }
        }
        anyhow::ensure!(
            !pairs.is_empty(),
            "{} does not exist: run `clearframe redact` on this work folder first (or `clearframe run --work` with or without --shard)",
            work.url(keys::REDACT)
        );
        anyhow::ensure!(
            counts.len() == 1,
            "{} holds shard records of {} different shard counts; rerun the shards of one count",
            work.location(),
            counts.len()
        );
    }
    let mut out = StageRecords {
        redacted: BTreeMap::new(),
        detected: BTreeMap::new(),
        config_blake3: String::new(),
        model: String::new(),
        model_blake3: String::new(),
    };
    let mut stale = Vec::new();
    for (shard, redact_key, detect_key) in &pairs {
        let (redact, redact_blake3): (RedactStageRecord, String) = read_record(
            work,
            redact_key,
            "run `clearframe redact` on this work folder first",
        )?;
        if redact.select_blake3 != select_blake3 {
            match shard {
                None => anyhow::bail!(
                    "select.json changed after `clearframe redact` ran; rerun redact and detect"
                ),
                Some(s) => {
                    stale.push(*s);
                    continue;
                }
            }
        }
        let detect: Option<(DetectStageRecord, String)> = match (shard, work.get(detect_key)) {
            (Some(_), Err(e)) if e.is_not_found() => None,
            _ => Some(read_record(
                work,
                detect_key,
                "run `clearframe detect` on this work folder first",
            )?),
        };
        let Some((detect, _)) = detect else {
            stale.push(shard.expect("shards only"));
            continue;
        };
        if detect.redact_blake3 != redact_blake3 {
            match shard {
                None => {
                    anyhow::bail!("redact.json changed after `clearframe detect` ran; rerun detect")
                }
                Some(s) => {
                    stale.push(*s);
                    continue;
                }
            }
        }
        if out.model.is_empty() {
            out.config_blake3.clone_from(&detect.config_blake3);
            out.model.clone_from(&detect.model);
            out.model_blake3.clone_from(&detect.model_blake3);
        }
        anyhow::ensure!(
            (&out.config_blake3, &out.model, &out.model_blake3)
                == (&detect.config_blake3, &detect.model, &detect.model_blake3),
            "{}: its shard ran other settings or another object detector than the others; rerun every shard with one configuration",
            work.url(detect_key)
        );
        out.redacted.extend(redact.clips);
        out.detected.extend(detect.clips);
    }
    let missing: Vec<&String> = included
        .iter()
        .filter(|id| !out.redacted.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        let count = counts.first().copied().unwrap_or(1);
        let shards: std::collections::BTreeSet<u32> = (0..count)
            .filter(|i| {
                let s = Shard { index: *i, count };
                missing.iter().any(|id| s.holds(id))
            })
            .collect();
        let names: Vec<&str> = missing.iter().take(20).map(|s| s.as_str()).collect();
        anyhow::bail!(
            "{} selected clip(s) are not processed yet: {}{}\nhint: run (or rerun) shard(s) {} of {count} (`clearframe run ... --work {} --shard I/{count}`){}",
            missing.len(),
            names.join(", "),
            if missing.len() > names.len() {
                ", ..."
            } else {
                ""
            },
            shards
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            work.location(),
            if stale.is_empty() {
                String::new()
            } else {
                format!(
                    "; stale or unfinished: {}",
                    stale
                        .iter()
                        .map(Shard::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    Ok(out)
}

/// Why the clips of the previous dataset version that this one no longer includes are gone,
/// where the ledger says: the basis each was shipped on, checked at `as_of` (revoked, expired,
/// unshared, deleted). Clips whose basis still holds are left to the emitter, which names the
/// selection's reason or the clip's failure.
pub(crate) fn removal_reasons(
    previous: Option<&crate::emit::dest::Previous>,
    included: &std::collections::BTreeSet<String>,
    ledger: &[u8],
    ledger_name: &str,
    as_of: jiff::Timestamp,
) -> anyhow::Result<BTreeMap<String, crate::emit::RemovalReason>> {
    let mut out = BTreeMap::new();
    let Some(previous) = previous else {
        return Ok(out);
    };
    let gone: Vec<(&String, &String)> = previous
        .clips
        .iter()
        .filter(|(id, _)| !included.contains(*id))
        .filter_map(|(id, c)| Some((id, c.basis_event_id.as_ref()?)))
        .collect();
    if gone.is_empty() {
        return Ok(out);
    }
    let parsed = crate::consent::Ledger::parse(ledger, ledger_name)
        .context("the consent ledger is unusable")?;
    let index = parsed.index(as_of);
    for (id, basis) in gone {
        // A basis this ledger does not know says less than the selection's own reason.
        if let Some(lost) = index
            .basis_lost(id, basis)
            .filter(|l| l.code != "basis_not_in_ledger")
        {
            out.insert(
                id.clone(),
                crate::emit::RemovalReason {
                    code: lost.code.to_owned(),
                    event_id: lost.event_id,
                },
            );
        }
    }
    Ok(out)
}

/// Pretty JSON with a trailing newline, as every record is written.
pub(crate) fn record_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(value).expect("records serialise");
    v.push(b'\n');
    v
}

/// Deletes `key` if present.
pub(crate) fn delete_if_present(store: &Arc<dyn Store>, key: &str) -> anyhow::Result<()> {
    match store.delete(key) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("cannot delete {}", store.url(key)))),
    }
}

/// Refuses a non-empty work folder that holds no stage record ClearFrame wrote (`select.json`,
/// `redact.json` or `detect.json`): `select --out` would otherwise write into someone else's
/// folder, and the later stages delete in it.
pub(crate) fn check_work_folder(store: &Arc<dyn Store>) -> anyhow::Result<()> {
    let present: Vec<String> = store
        .list("")
        .with_context(|| format!("cannot list {}", store.location()))?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| !k.starts_with(crate::storage::PROBE_PREFIX))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let parses = |key: &str| -> anyhow::Result<bool> {
        if !present.iter().any(|k| k == key) {
            return Ok(false);
        }
        let bytes = store
            .get(key)
            .with_context(|| format!("cannot read {}", store.url(key)))?;
        Ok(match key {
            keys::SELECT => serde_json::from_slice::<crate::records::SelectRecord>(&bytes)
                .is_ok_and(|r| r.selection.uri == keys::SELECTION),
            keys::REDACT => serde_json::from_slice::<RedactStageRecord>(&bytes)
                .is_ok_and(|r| r.format == REDACT_FORMAT),
            keys::DETECT => serde_json::from_slice::<DetectStageRecord>(&bytes)
                .is_ok_and(|r| r.format == DETECT_FORMAT),
            _ => false,
        })
    };
    for key in [keys::SELECT, keys::REDACT, keys::DETECT] {
        if parses(key)? {
            return Ok(());
        }
    }
    let all: Vec<&String> = present.iter().collect();
    anyhow::bail!(
        "{} holds {}, but no select.json, redact.json or detect.json written by ClearFrame; nothing was written\nhint: give `select --out` an empty folder or prefix, or a work folder `clearframe select` wrote",
        store.location(),
        crate::emit::dest::describe(&all)
    )
}

/// What `redact` names the objects in a clip's folder: `<frame>.png` (at least six digits) and
/// `clip.json`.
fn is_clip_object(name: &str) -> bool {
    name == "clip.json"
        || name
            .strip_suffix(".png")
            .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes a clip's redacted frames and record: the keys `redacted/<id>/<frame>.png` and
/// `redacted/<id>/clip.json` (ClearFrame's own names: the frames of an interrupted `redact` are
/// listed by no record yet, and a revoked clip's frames must go). Anything else there is left
/// alone, with a warning.
pub(crate) fn delete_clip_frames(store: &Arc<dyn Store>, video_id: &str) -> anyhow::Result<()> {
    let prefix = keys::clip_frames(video_id);
    let listed = store
        .list(&prefix)
        .with_context(|| format!("cannot list {}", store.url(&prefix)))?;
    let mut left = Vec::new();
    for m in listed {
        if is_clip_object(&m.key[prefix.len()..]) {
            delete_if_present(store, &m.key)?;
        } else {
            left.push(m.key);
        }
    }
    if left.is_empty() {
        // A local folder emptied this way goes too (S3 has no folders to leave behind).
        if let crate::storage::Location::Local(root) = store.location() {
            crate::storage::beneath::Beneath::new(root)
                .remove_empty_dirs(prefix.trim_end_matches('/'));
        }
    } else {
        let all: Vec<&String> = left.iter().collect();
        tracing::warn!(
            folder = %store.url(&prefix),
            objects = %crate::emit::dest::describe(&all),
            "left alone: not frames ClearFrame wrote"
        );
    }
    Ok(())
}

/// Video ids (safe ones only) that have objects directly under `folder/` (as `<id>.json` or
/// `<id>/...`).
pub(crate) fn listed_clips(
    store: &Arc<dyn Store>,
    folder: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let prefix = format!("{folder}/");
    let listed = store
        .list(&prefix)
        .with_context(|| format!("cannot list {}", store.url(&prefix)))?;
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let rest = m.key.strip_prefix(&prefix)?.to_owned();
            match rest.split_once('/') {
                Some((id, _)) => Some(id.to_owned()),
                None => rest.strip_suffix(".json").map(str::to_owned),
            }
        })
        .filter(|id| crate::emit::is_safe_video_id(id))
        .collect())
}
