//! `clearframe verify DIR`: checks that a dataset folder is exactly what the emitter wrote and
//! that every item in it is allowed to be there.
//!
//! It re-hashes every file and checks, naming the file (and manifest line) of each mismatch:
//! - `dataset.json` parses, is in canonical form and its `seal` matches (so every byte counts);
//! - the version's `manifest.jsonl` (`versions/<version>/manifest.jsonl`) parses line by line
//!   and its Merkle root ([`crate::emit::merkle`]) equals `merkle_root`, and its line count
//!   equals `frames`;
//! - every manifest line's frame exists at `frames/<video_id>/<frame:06>-<blake3:16>.jpg` with
//!   the recorded blake3, no frame path appears twice, and every file under `frames/` has a
//!   manifest line;
//! - every file recorded in `files` (annotations, report, selection copy, change log) is in the
//!   version folder and has its blake3, and no other file exists in the folder;
//! - each entry's consent basis is the basis of an `include` line for its clip in the recorded
//!   `selection.jsonl`.
//!
//! While a replacement is under way, or after one was interrupted, the folder also holds the
//! next version's objects beside the sealed marker that vouches for them
//! ([`crate::emit::dest`]): they are listed as `pending`, not as problems, since the version
//! `dataset.json` names is whole and readable.
//!
//! A folder that cannot be read at all is an error; everything else is a [`Problem`] in the
//! [`VerifyReport`], so one run lists every mismatch.

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::emit::{self, ConsentBasis, DatasetRecord, ManifestEntry, merkle, paths};
use crate::hashing;

/// One mismatch: where (a dataset-relative path, with `:line` for manifest lines) and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// Dataset-relative path, `manifest.jsonl:<line>` for a manifest line.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct VerifyReport {
    /// The folder checked.
    pub dir: PathBuf,
    /// Files hashed.
    pub files_checked: u64,
    /// Manifest lines read.
    pub frames: u64,
    /// Merkle root recomputed from `manifest.jsonl` (hex), when it could be read.
    pub merkle_root: Option<String>,
    /// Objects that are not part of this version but of a replacement under way or
    /// interrupted, vouched for by its sealed marker (the next run deletes or keeps them).
    pub pending: Vec<String>,
    /// Every mismatch found, sorted by path.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "{}: {}", p.path, p.what)?;
        }
        if !self.pending.is_empty() {
            writeln!(
                f,
                "{} object(s) of a replacement under way or interrupted are not part of this version (the next run finishes it)",
                self.pending.len()
            )?;
        }
        if self.ok() {
            write!(
                f,
                "verified {}: {} frames, {} files, Merkle root {}",
                self.dir.display(),
                self.frames,
                self.files_checked,
                self.merkle_root.as_deref().unwrap_or("?")
            )
        } else {
            write!(
                f,
                "{}: {} problem(s) found",
                self.dir.display(),
                self.problems.len()
            )
        }
    }
}

/// Why verification could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The folder cannot be listed.
    #[error("cannot read dataset folder {}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Lists every regular file under `dir`, as sorted `/`-separated relative paths. Symlinks and
/// other non-regular entries are listed too (and later reported), never followed.
fn list_files(dir: &Path) -> Result<Vec<(String, bool)>, VerifyError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&abs).map_err(|source| VerifyError::Io {
            path: abs.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| VerifyError::Io {
                path: abs.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().map_err(|source| VerifyError::Io {
                path: entry.path(),
                source,
            })?;
            if ft.is_dir() {
                stack.push((entry.path(), r));
            } else {
                out.push((r, ft.is_file()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Verifies the dataset folder `dir` (see the module docs).
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, what: String| {
        problems.push(Problem {
            path: path.to_string(),
            what,
        });
    };
    let files = list_files(dir)?;
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut files_checked = 0u64;
    for (rel, regular) in &files {
        if !regular {
            problem(rel, "is not a regular file".into());
            continue;
        }
        match hashing::hash_file(&dir.join(rel)) {
            Ok(h) => {
                files_checked += 1;
                hashes.insert(rel.clone(), h);
            }
            Err(e) => problem(rel, format!("cannot read: {e}")),
        }
    }
    let mut accounted: BTreeSet<String> = BTreeSet::new();

    // dataset.json
    accounted.insert(paths::DATASET.into());
    let record: Option<DatasetRecord> = match std::fs::read(dir.join(paths::DATASET)) {
        Err(e) => {
            problem(
                paths::DATASET,
                format!("cannot read ({e}); the emit stage did not finish"),
            );
            None
        }
        Ok(bytes) => match serde_json::from_slice::<DatasetRecord>(&bytes) {
            Err(e) => {
                problem(paths::DATASET, format!("not a dataset record: {e}"));
                None
            }
            Ok(r) => {
                if r.to_bytes() != bytes {
                    problem(
                        paths::DATASET,
                        "not in canonical form: the file was edited".into(),
                    );
                }
                let seal = r.compute_seal();
                if seal != r.seal {
                    problem(
                        paths::DATASET,
                        format!("seal is {}, the record's content hashes to {seal}", r.seal),
                    );
                }
                if r.format != emit::DATASET_FORMAT {
                    problem(
                        paths::DATASET,
                        format!("format {:?} is not {:?}", r.format, emit::DATASET_FORMAT),
                    );
                }
                if r.merkle != merkle::CONSTRUCTION {
                    problem(
                        paths::DATASET,
                        format!(
                            "Merkle construction {:?} is not {:?}",
                            r.merkle,
                            merkle::CONSTRUCTION
                        ),
                    );
                }
                Some(r)
            }
        },
    };

    // Recorded files.
    if let Some(r) = &record {
        let folder = r.path("");
        for (rel, want) in &r.files {
            accounted.insert(rel.clone());
            if !rel.starts_with(&folder) || rel.ends_with(paths::MANIFEST) {
                problem(
                    rel,
                    format!("dataset.json lists it, but it is not a file of {folder}"),
                );
            }
            match hashes.get(rel) {
                None => problem(rel, "recorded in dataset.json but missing".into()),
                Some(got) if got != want => {
                    problem(rel, format!("blake3 is {got}, dataset.json records {want}"));
                }
                Some(_) => {}
            }
        }
    }

    // Selection.
    let mut included: BTreeMap<String, ConsentBasis> = BTreeMap::new();
    // Without a record there is no version folder to read (dataset.json's problem says why).
    let selection_path = record.as_ref().map(|r| r.path(paths::SELECTION));
    let manifest_path = record.as_ref().map(|r| r.path(paths::MANIFEST));
    match selection_path
        .as_deref()
        .map(|p| (p, std::fs::read(dir.join(p))))
    {
        None => {}
        Some((p, Err(e))) => problem(p, format!("cannot read the recorded selection: {e}")),
        Some((p, Ok(bytes))) => match emit::parse_selection(&bytes) {
            Err(e) => problem(p, e),
            Ok(lines) => {
                for l in lines {
                    if let (true, Some(v), Some(b)) = (l.decision == "include", l.video_id, l.basis)
                    {
                        included.insert(v, b);
                    }
                }
            }
        },
    }

    // Manifest.
    let mut frames = 0u64;
    let mut merkle_root = None;
    let manifest_read = manifest_path.as_deref().map(|p| {
        accounted.insert(p.to_owned());
        (p, std::fs::read(dir.join(p)))
    });
    match manifest_read {
        None => {}
        Some((mpath, Err(e))) => problem(mpath, format!("cannot read: {e}")),
        Some((mpath, Ok(bytes))) => {
            match merkle::manifest_root(&bytes) {
                Err(e) => problem(mpath, e),
                Ok(root) => {
                    let root = hashing::hex(&root);
                    if let Some(r) = record.as_ref().filter(|r| r.merkle_root != root) {
                        problem(
                            mpath,
                            format!(
                                "Merkle root is {root}, dataset.json records {}",
                                r.merkle_root
                            ),
                        );
                    }
                    merkle_root = Some(root);
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                let at = format!("{mpath}:{}", i + 1);
                frames += 1;
                let e: ManifestEntry = match serde_json::from_str(line) {
                    Ok(e) => e,
                    Err(err) => {
                        problem(&at, format!("not a manifest entry: {err}"));
                        continue;
                    }
                };
                let expected = ManifestEntry::frame_path(&e.video_id, e.frame, &e.blake3);
                if !emit::is_safe_video_id(&e.video_id) || e.path != expected {
                    problem(&at, format!("path {:?} is not {expected:?}", e.path));
                }
                if !accounted.insert(e.path.clone()) {
                    problem(&at, format!("{} is listed twice", e.path));
                }
                match hashes.get(&e.path) {
                    None => problem(&e.path, format!("missing; listed on {at}")),
                    Some(h) if *h != e.blake3 => {
                        problem(&e.path, format!("blake3 is {h}, {at} records {}", e.blake3));
                    }
                    Some(_) => {}
                }
                match included.get(&e.video_id) {
                    None => problem(
                        &at,
                        format!(
                            "clip {} is not included by the recorded selection",
                            e.video_id
                        ),
                    ),
                    Some(b) if *b != e.provenance.consent => problem(
                        &at,
                        format!(
                            "consent basis {}/{} is not the selection's {}/{}",
                            e.provenance.consent.kind,
                            e.provenance.consent.event_id,
                            b.kind,
                            b.event_id
                        ),
                    ),
                    Some(_) => {}
                }
            }
            if let Some(r) = record.as_ref().filter(|r| r.frames != frames) {
                problem(
                    mpath,
                    format!("{frames} lines, dataset.json records {} frames", r.frames),
                );
            }
        }
    }

    // Anything else is not part of the dataset, but may be part of the next version, or be a
    // temporary file a killed writer left (the next writer sweeps those).
    let next = crate::emit::dest::pending_objects(dir);
    let temporary = |rel: &str| {
        rel.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(crate::storage::TEMP_PREFIX))
    };
    let mut pending = Vec::new();
    for (rel, regular) in &files {
        if *regular && !accounted.contains(rel) {
            if next.contains(rel) || temporary(rel) {
                pending.push(rel.clone());
            } else if rel.starts_with(&format!("{}/", paths::FRAMES_DIR)) {
                problem(rel, "frame has no manifest line".into());
            } else {
                problem(rel, "not recorded in dataset.json".into());
            }
        }
    }

    problems.sort();
    problems.dedup();
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        files_checked,
        frames,
        merkle_root,
        pending,
        problems,
    })
}

/// Arguments of `clearframe verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The dataset folder written by `clearframe run`.
    pub dir: PathBuf,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also check the dataset's items against this consent ledger (a path, file:///path or
    /// s3://bucket/key): list every clip whose recorded basis no longer holds at --as-of
    /// (revoked, expired, unshared, deleted, account deleted), with the event, and exit 1.
    #[arg(long, value_name = "URL")]
    pub ledger: Option<String>,
    /// The instant for --ledger (RFC 3339 with an offset). Default: now.
    #[arg(long, requires = "ledger", value_parser = crate::stages::select::parse_timestamp)]
    pub as_of: Option<jiff::Timestamp>,
}

/// A clip of a dataset whose recorded basis no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoLongerAllowed {
    pub video_id: String,
    /// The event the dataset recorded as the clip's basis.
    pub basis_event_id: String,
    /// Why it no longer holds: `revoked`, `expired`, `unshared`, `video_deleted`,
    /// `account_deleted` or `basis_not_in_ledger`.
    pub code: String,
    /// The event that ended it.
    pub event_id: Option<String>,
    /// The event, as a person reads it.
    pub event: String,
    /// The clip's items in the dataset (frame paths, from the manifest).
    pub frames: Vec<String>,
}

/// What consent at one instant says of a dataset's items ([`consent_check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentReport {
    /// The instant checked.
    pub as_of: String,
    /// blake3 of the ledger read.
    pub ledger_blake3: String,
    /// Clips checked (the dataset's included clips).
    pub clips: u64,
    /// Clips whose basis no longer holds, by video id.
    pub no_longer_allowed: Vec<NoLongerAllowed>,
}

/// Checks every clip of the dataset in `dir` against `ledger` at `as_of`: its recorded basis
/// (the dataset's `selection.jsonl`) must still hold. A ledger that cannot be read is an error.
pub fn consent_check(
    dir: &Path,
    ledger: &[u8],
    ledger_name: &str,
    as_of: jiff::Timestamp,
) -> anyhow::Result<ConsentReport> {
    use anyhow::Context;
    let parsed = crate::consent::Ledger::parse(ledger, ledger_name)
        .context("the consent ledger is unusable")?;
    let index = parsed.index(as_of);
    let record_path = dir.join(paths::DATASET);
    let record: DatasetRecord = serde_json::from_slice(
        &std::fs::read(&record_path)
            .with_context(|| format!("cannot read {}", record_path.display()))?,
    )
    .with_context(|| format!("{} is not a dataset record", record_path.display()))?;
    let selection_path = dir.join(record.path(paths::SELECTION));
    let selection = std::fs::read(&selection_path)
        .with_context(|| format!("cannot read {}", selection_path.display()))?;
    let manifest_path = dir.join(record.path(paths::MANIFEST));
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let mut frames: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let e: ManifestEntry = serde_json::from_str(line).context("manifest.jsonl")?;
        frames.entry(e.video_id).or_default().push(e.path);
    }
    let mut report = ConsentReport {
        as_of: as_of.to_string(),
        ledger_blake3: hashing::hash_bytes(ledger),
        clips: 0,
        no_longer_allowed: Vec::new(),
    };
    for line in selection.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let l: emit::ShippedSelectionLine =
            serde_json::from_slice(line).context("selection.jsonl")?;
        report.clips += 1;
        if let Some(lost) = index.basis_lost(&l.video_id, &l.basis.event_id) {
            report.no_longer_allowed.push(NoLongerAllowed {
                frames: frames.remove(&l.video_id).unwrap_or_default(),
                video_id: l.video_id,
                basis_event_id: l.basis.event_id,
                code: lost.code.to_owned(),
                event_id: lost.event_id,
                event: lost.event,
            });
        }
    }
    Ok(report)
}

/// Runs `clearframe verify`: prints the report to stdout, exits 0 when the dataset verifies and
/// 1 when any mismatch was found.
pub fn run_cli(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let report = verify(&args.dir).with_context(|| format!("verifying {}", args.dir.display()))?;
    let consent = match &args.ledger {
        None => None,
        Some(url) => {
            let ledger =
                crate::storage::ObjectRef::open(url, &crate::storage::S3Options::default())?;
            let bytes = ledger
                .get()
                .with_context(|| format!("cannot read consent ledger {}", ledger.url))?;
            let as_of = args.as_of.unwrap_or_else(jiff::Timestamp::now);
            Some(consent_check(&args.dir, &bytes, &ledger.url, as_of)?)
        }
    };
    if args.json {
        match &consent {
            None => println!("{}", serde_json::to_string_pretty(&report)?),
            Some(c) => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"verify": report, "consent": c}))?
            ),
        }
    } else {
        println!("{report}");
        if let Some(c) = &consent {
            let n: usize = c.no_longer_allowed.iter().map(|x| x.frames.len()).sum();
            println!(
                "consent at {}: {} of {} clips ({n} frames) no longer allowed",
                c.as_of,
                c.no_longer_allowed.len(),
                c.clips
            );
            for x in &c.no_longer_allowed {
                println!(
                    "  {}: {} by {} ({} frames, basis {})",
                    x.video_id,
                    x.code,
                    x.event,
                    x.frames.len(),
                    x.basis_event_id
                );
            }
        }
    }
    if !report.ok() {
        eprintln!(
            "hint: the dataset differs from what was emitted; re-run `clearframe run` or restore the files named above"
        );
    }
    let revoked = consent
        .as_ref()
        .is_some_and(|c| !c.no_longer_allowed.is_empty());
    if revoked {
        eprintln!(
            "hint: rebuild the dataset (`clearframe run ... --work W --out D`) and delete your copies of the items listed"
        );
    }
    Ok(if report.ok() && !revoked {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
