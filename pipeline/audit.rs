//! The audit trail: an append-only, hash-chained log of every command that reads clips or writes
//! a dataset (`run`, `redact`, `emit`, `anonymize`), so that who read what, and what was written
//! and erased, can always be accounted for.
//!
//! A log is a folder or S3 prefix of records `<seq:012>.json`, from `000000000000.json` on. Each
//! is an [`AuditRecord`] in canonical form (pretty JSON, trailing newline) that holds the blake3
//! of the record before it (`prev`) and its own `seal` (the blake3 of the record with `seal`
//! empty). A record is only ever created, never replaced: the store's create-if-absent write
//! ([`Store::put_new`]: a no-replace rename locally, `If-None-Match: *` on S3) makes two writers
//! racing for the same number take turns instead of forking the chain.
//!
//! An audited command appends a `start` record before it reads any clip (if that fails, it does
//! not run) and an `end` record when it is done, with what it read, decided, wrote and erased,
//! or why it failed (if that fails, the command fails).
//!
//! [`verify`] finds any edited, removed, inserted or reordered record and names the first bad
//! one; a head pinned from an earlier `verify` (`--head`) also finds records cut off the end.

#![allow(
    clippy::print_stdout,
    reason = "the audit commands print their findings"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::storage::{Location, S3Options, Store};

/// Format id of an audit record.
pub const AUDIT_FORMAT: &str = "clearframe-audit/1";

/// Environment variable naming the log when `--audit-log` is not given.
pub const LOG_VAR: &str = "CLEARFRAME_AUDIT_LOG";

/// Appends tried before giving up when other writers keep taking the next number.
const APPEND_TRIES: usize = 64;

/// Which end of a command a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// Written before the command reads any clip.
    Start,
    /// Written when the command is done (or failed).
    End,
}

/// One record of the log (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// [`AUDIT_FORMAT`].
    pub format: String,
    /// Position in the log, from 0; the file is `<seq:012>.json`.
    pub seq: u64,
    /// blake3 of the bytes of record `seq - 1`; `null` for record 0.
    pub prev: Option<String>,
    pub event: AuditEvent,
    /// Ties a command's `start` and `end` records.
    pub run_id: String,
    /// When the record was written (RFC 3339, UTC).
    pub at: String,
    /// Who ran the command: `--actor`, else the AWS role (`AWS_ROLE_ARN`), else `$USER` /
    /// `$LOGNAME`, else the uid.
    pub actor: String,
    /// Where `actor` came from: `--actor`, `AWS_ROLE_ARN`, `USER`, `LOGNAME` or `uid`.
    pub actor_source: String,
    /// The AWS access key id in the environment, when there is one (it names the principal; it
    /// is not the secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    /// The machine's host name.
    pub host: String,
    /// The subcommand.
    pub command: String,
    /// Its arguments as given (credentials come from the environment, never from arguments).
    pub args: Vec<String>,
    pub clearframe_version: String,
    /// What the command did; empty in a `start` record.
    #[serde(default)]
    pub details: AuditDetails,
    /// blake3 of this record with `seal` empty.
    pub seal: String,
}

/// What an audited command read, decided, wrote and erased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditDetails {
    /// Inputs by name (`catalog`, `ledger`, `config`, or an input file's path) -> blake3.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Models loaded, by file name -> blake3.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Selection decisions: catalog lines per decision.
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
    /// The clips the selection included.
    #[serde(default)]
    pub included: BTreeSet<String>,
    /// The clips whose bytes were read (decoded).
    #[serde(default)]
    pub clips_read: BTreeSet<String>,
    /// What was written: a dataset version (`<location> version <v> root <merkle root>`) or a
    /// work folder.
    #[serde(default)]
    pub written: Vec<String>,
    /// Clips whose data was erased (from a dataset or a work folder), with where.
    #[serde(default)]
    pub erased: BTreeMap<String, BTreeSet<String>>,
    /// `ok`, `exit <n>` or the error, in one line.
    #[serde(default)]
    pub outcome: String,
}

impl AuditRecord {
    /// The canonical bytes, as in the log.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("an audit record serialises");
        v.push(b'\n');
        v
    }

    /// blake3 of [`Self::to_bytes`] with `seal` empty.
    pub fn compute_seal(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.seal.clear();
        crate::hashing::hash_bytes(&unsealed.to_bytes())
    }
}

/// `text` on one line, at most 500 characters (for the `outcome` of an end record).
pub fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(500).collect()
}

/// The key of record `seq`.
pub fn record_key(seq: u64) -> String {
    format!("{seq:012}.json")
}

fn parse_key(key: &str) -> Option<u64> {
    let digits = key.strip_suffix(".json")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// An audit log in a store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
}

impl AuditLog {
    /// The log at `url` (a folder, `file://` URL or `s3://bucket/prefix`).
    pub fn open(url: &str, s3: &S3Options) -> anyhow::Result<AuditLog> {
        let location = Location::parse(url)?;
        let store = crate::storage::open_location(location.clone(), s3)
            .with_context(|| format!("cannot open the audit log {location}"))?;
        Ok(AuditLog { store })
    }

    /// Where it is.
    pub fn location(&self) -> &Location {
        self.store.location()
    }

    /// The numbers of the records present, sorted, and any other object there.
    fn keys(&self) -> anyhow::Result<(Vec<u64>, Vec<String>)> {
        let mut seqs = Vec::new();
        let mut other = Vec::new();
        for m in self.store.list("")? {
            match parse_key(&m.key) {
                Some(n) => seqs.push(n),
                None => other.push(m.key),
            }
        }
        seqs.sort_unstable();
        Ok((seqs, other))
    }

    /// Appends `record` (its `seq`, `prev` and `seal` are set here) after the last record,
    /// retrying when another writer took the number. Returns the record as written.
    pub fn append(&self, mut record: AuditRecord) -> anyhow::Result<AuditRecord> {
        for _ in 0..APPEND_TRIES {
            let (seqs, _) = self.keys()?;
            let (seq, prev) = match seqs.last() {
                None => (0, None),
                Some(&last) => {
                    let bytes = self.store.get(&record_key(last))?;
                    let previous: AuditRecord = serde_json::from_slice(&bytes)
                        .ok()
                        .filter(|r: &AuditRecord| r.seal == r.compute_seal() && r.seq == last)
                        .with_context(|| {
                            format!(
                                "the last record of the audit log, {}, is damaged: run `clearframe audit verify {}`",
                                self.store.url(&record_key(last)),
                                self.location()
                            )
                        })?;
                    (previous.seq + 1, Some(crate::hashing::hash_bytes(&bytes)))
                }
            };
            record.seq = seq;
            record.prev = prev;
            record.seal = record.compute_seal();
            let bytes = record.to_bytes();
            if self.store.put_new(&record_key(seq), bytes.clone().into())? {
                return Ok(record);
            }
            // Taken: by another writer, or by this very write when its answer was lost and the
            // retry found the record in place (then it holds exactly these bytes).
            if self
                .store
                .get(&record_key(seq))
                .is_ok_and(|there| there[..] == bytes[..])
            {
                return Ok(record);
            }
        }
        anyhow::bail!(
            "cannot append to the audit log {}: other writers took the next record {APPEND_TRIES} times",
            self.location()
        )
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Records checked (up to the first bad one).
    pub records: u64,
    /// blake3 of the last good record: pin it to detect records cut off the end later.
    pub head: Option<String>,
    /// The first bad record and what is wrong with it.
    pub first_bad: Option<(u64, String)>,
}

/// Checks the chain (see the module docs); `pinned`, a head from an earlier check, must be the
/// blake3 of one of the records.
pub fn verify(log: &AuditLog, pinned: Option<&str>) -> anyhow::Result<AuditReport> {
    let (seqs, other) = log.keys()?;
    let mut report = AuditReport {
        records: 0,
        head: None,
        first_bad: None,
    };
    let mut seen_pinned = pinned.is_none();
    let bad = |seq: u64, why: String, report: &mut AuditReport| {
        report.first_bad = Some((seq, why));
    };
    if let Some(o) = other.first() {
        bad(
            0,
            format!("{o} is not a record of an audit log (records are <seq:012>.json)"),
            &mut report,
        );
        return Ok(report);
    }
    let mut prev: Option<String> = None;
    for (expected, seq) in (0u64..).zip(&seqs) {
        if *seq != expected {
            bad(
                expected,
                format!("record {expected} is missing (removed); the next present is {seq}"),
                &mut report,
            );
            return Ok(report);
        }
        let bytes = log.store.get(&record_key(*seq))?;
        let record: AuditRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                bad(*seq, format!("not an audit record ({e})"), &mut report);
                return Ok(report);
            }
        };
        let why = if record.to_bytes() != bytes[..] {
            Some("not in canonical form: it was edited".to_owned())
        } else if record.format != AUDIT_FORMAT {
            Some(format!(
                "format {:?} is not {AUDIT_FORMAT:?}",
                record.format
            ))
        } else if record.seal != record.compute_seal() {
            Some("its seal does not match its content: it was edited".to_owned())
        } else if record.seq != *seq {
            Some(format!(
                "it says it is record {}: records were reordered or renamed",
                record.seq
            ))
        } else if record.prev != prev {
            Some(
                "it does not follow the record before it (its prev is not that record's blake3): a record was edited, inserted or reordered"
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(why) = why {
            bad(*seq, why, &mut report);
            return Ok(report);
        }
        let hash = crate::hashing::hash_bytes(&bytes);
        seen_pinned |= pinned == Some(hash.as_str());
        prev = Some(hash);
        report.records += 1;
        report.head.clone_from(&prev);
    }
    if !seen_pinned {
        let n = report.records;
        bad(
            n,
            format!(
                "no record has the pinned head {}: records were cut off the end or the log was rewritten",
                pinned.unwrap_or_default()
            ),
            &mut report,
        );
    }
    Ok(report)
}

/// Every record of the log, in order (unchecked: see [`verify`]).
pub fn records(log: &AuditLog) -> anyhow::Result<Vec<AuditRecord>> {
    let (seqs, _) = log.keys()?;
    seqs.iter()
        .map(|s| {
            let bytes = log.store.get(&record_key(*s))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an audit record", record_key(*s)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The running command's record.

/// The audited command in this process, and what its stages noted.
struct Current {
    log: AuditLog,
    start: AuditRecord,
    details: AuditDetails,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

fn with_current(f: impl FnOnce(&mut AuditDetails)) {
    if let Ok(mut guard) = CURRENT.lock()
        && let Some(c) = guard.as_mut()
    {
        f(&mut c.details);
    }
}

/// Notes an input's blake3.
pub fn note_input(name: &str, blake3: &str) {
    with_current(|d| {
        d.inputs.insert(name.to_owned(), blake3.to_owned());
    });
}

/// Notes a model loaded.
pub fn note_model(file: &str, blake3: &str) {
    with_current(|d| {
        d.models.insert(file.to_owned(), blake3.to_owned());
    });
}

/// Notes the selection's decisions and included clips.
pub fn note_selection<'a>(
    decisions: &BTreeMap<String, u64>,
    included: impl IntoIterator<Item = &'a str>,
) {
    let included: Vec<&str> = included.into_iter().collect();
    with_current(|d| {
        d.decisions.clone_from(decisions);
        d.included.extend(included.iter().map(|s| (*s).to_owned()));
    });
}

/// Notes that a clip's bytes were read.
pub fn note_clip_read(video_id: &str) {
    with_current(|d| {
        d.clips_read.insert(video_id.to_owned());
    });
}

/// Notes something written.
pub fn note_written(what: String) {
    with_current(|d| d.written.push(what));
}

/// Notes a clip's data erased from `place`.
pub fn note_erased(video_id: &str, place: &str) {
    with_current(|d| {
        d.erased
            .entry(video_id.to_owned())
            .or_default()
            .insert(place.to_owned());
    });
}

/// Who runs this process, and where that name came from.
fn actor(given: Option<&str>) -> (String, String) {
    if let Some(a) = given.filter(|a| !a.trim().is_empty()) {
        return (a.to_owned(), "--actor".to_owned());
    }
    for var in ["AWS_ROLE_ARN", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return (v, var.to_owned());
        }
    }
    (
        format!("uid {}", rustix::process::getuid().as_raw()),
        "uid".to_owned(),
    )
}

fn host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The log to use: `--audit-log`, else `$CLEARFRAME_AUDIT_LOG`, else
/// `$XDG_STATE_HOME/clearframe/audit` (`~/.local/state/clearframe/audit`).
pub fn default_log(given: Option<&str>) -> anyhow::Result<String> {
    if let Some(g) = given {
        return Ok(g.to_owned());
    }
    if let Ok(v) = std::env::var(LOG_VAR)
        && !v.is_empty()
    {
        return Ok(v);
    }
    let state =
        match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(s) => std::path::PathBuf::from(s),
            None => std::path::PathBuf::from(std::env::var_os("HOME").context(
                "no --audit-log, $CLEARFRAME_AUDIT_LOG or $HOME to keep the audit log in",
            )?)
            .join(".local/state"),
        };
    Ok(state
        .join("clearframe/audit")
        .to_string_lossy()
        .into_owned())
}

/// Starts auditing `command`: appends its `start` record. An error here means the command must
/// not run.
pub fn start(
    log_url: &str,
    s3: &S3Options,
    command: &str,
    args: Vec<String>,
    given_actor: Option<&str>,
) -> anyhow::Result<()> {
    let log = AuditLog::open(log_url, s3)?;
    let (actor, actor_source) = actor(given_actor);
    let now = jiff::Timestamp::now().to_string();
    let run_id = crate::hashing::hash_bytes(
        format!("{}\n{now}\n{}\n{args:?}", std::process::id(), host()).as_bytes(),
    )[..16]
        .to_owned();
    let record = AuditRecord {
        format: AUDIT_FORMAT.to_owned(),
        seq: 0,
        prev: None,
        event: AuditEvent::Start,
        run_id,
        at: now,
        actor,
        actor_source,
        aws_access_key_id: std::env::var("AWS_ACCESS_KEY_ID")
            .ok()
            .filter(|v| !v.is_empty()),
        host: host(),
        command: command.to_owned(),
        args,
        clearframe_version: env!("CARGO_PKG_VERSION").to_owned(),
        details: AuditDetails::default(),
        seal: String::new(),
    };
    let start = log.append(record).with_context(|| {
        format!(
            "cannot write to the audit log {}; nothing was read (choose a log with --audit-log or ${LOG_VAR})",
            log.location()
        )
    })?;
    *CURRENT
        .lock()
        .map_err(|_| anyhow::anyhow!("the audit state is poisoned"))? = Some(Current {
        log,
        start,
        details: AuditDetails::default(),
    });
    Ok(())
}

/// Ends the audited command: appends its `end` record with what was noted and `outcome`.
/// Returns the record's number (`None` when no command was being audited).
pub fn finish(outcome: String) -> anyhow::Result<Option<(u64, Location)>> {
    let current = CURRENT
        .lock()
        .map_err(|_| anyhow::anyhow!("the audit state is poisoned"))?
        .take();
    let Some(Current {
        log,
        start,
        mut details,
    }) = current
    else {
        return Ok(None);
    };
    details.outcome = outcome;
    let record = AuditRecord {
        event: AuditEvent::End,
        at: jiff::Timestamp::now().to_string(),
        details,
        seal: String::new(),
        ..start
    };
    let written = log.append(record).with_context(|| {
        format!(
            "cannot write the end of this command to the audit log {}: the work is done but not accounted for",
            log.location()
        )
    })?;
    Ok(Some((written.seq, log.location().clone())))
}

/// Arguments of `clearframe audit`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the log's chain: names the first edited, removed, inserted or reordered record
    /// (exit 1), else prints the head to pin.
    Verify {
        /// The log: a folder or s3://bucket/prefix.
        log: String,
        /// A head printed by an earlier `audit verify`: also detects records cut off the end.
        #[arg(long)]
        head: Option<String>,
        #[command(flatten)]
        store: crate::storage::StoreArgs,
    },
    /// Print the log, one line per record.
    Show {
        /// The log: a folder or s3://bucket/prefix.
        log: String,
        /// Print the records as JSON lines instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: crate::storage::StoreArgs,
    },
}

/// Runs `clearframe audit …`.
pub fn run_cli(cmd: &AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { log, head, store } => {
            let log = AuditLog::open(log, &store.to_options()?)?;
            let report = verify(&log, head.as_deref())?;
            match &report.first_bad {
                None => {
                    println!(
                        "audit log {}: {} records, chain intact; head {}",
                        log.location(),
                        report.records,
                        report.head.as_deref().unwrap_or("(empty)")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((seq, why)) => {
                    println!(
                        "audit log {}: record {seq} ({}) is bad: {why}",
                        log.location(),
                        record_key(*seq)
                    );
                    println!("  {} records before it are intact", report.records);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Show { log, json, store } => {
            let log = AuditLog::open(log, &store.to_options()?)?;
            for r in records(&log)? {
                if *json {
                    println!("{}", serde_json::to_string(&r)?);
                    continue;
                }
                let d = &r.details;
                let mut line = format!(
                    "{:>6} {} {:<5} {} {} by {} ({}) on {}",
                    r.seq,
                    r.at,
                    match r.event {
                        AuditEvent::Start => "start",
                        AuditEvent::End => "end",
                    },
                    r.run_id,
                    r.command,
                    r.actor,
                    r.actor_source,
                    r.host
                );
                match r.event {
                    AuditEvent::Start => line.push_str(&format!(": {}", r.args.join(" "))),
                    AuditEvent::End => line.push_str(&format!(
                        ": {}; {} included, {} read, {} erased; wrote {}",
                        d.outcome,
                        d.included.len(),
                        d.clips_read.len(),
                        d.erased.len(),
                        if d.written.is_empty() {
                            "nothing".to_owned()
                        } else {
                            d.written.join(", ")
                        }
                    )),
                }
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
