//! Stage 1, `select`: catalog + consent ledger -> `selection.jsonl`, one decision per catalog line.
//!
//! The ledger is read and checked whole first; any bad ledger line stops the stage before
//! anything is written. Catalog lines are decided independently: a bad one is excluded with a
//! reason and the rest go on. Output is written atomically, the small `select.json` record last.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use jiff::Timestamp;
use rayon::prelude::*;

use crate::consent::{ConsentIndex, Ledger, Verdict, split_lines};
use crate::records::{CatalogClip, Decision, InputRef, ReasonCode, SelectRecord, SelectionLine};
use crate::storage::{self, Location, ObjectRef, Sources, Store, StoreArgs};

/// Arguments of `clearframe select`.
#[derive(clap::Args, Debug)]
pub struct SelectArgs {
    /// Catalog of clips (JSON Lines, one clip per line): a path, file:///path or s3://bucket/key.
    #[arg(long, value_name = "URL")]
    pub catalog: String,
    /// Consent ledger (JSON Lines, append-only events): a path, file:///path or s3://bucket/key.
    /// Any invalid line stops the run.
    #[arg(long, value_name = "URL")]
    pub ledger: String,
    /// Snapshot instant (RFC 3339 with an offset): only events at or before it count. Default: now.
    #[arg(long, value_parser = parse_timestamp)]
    pub as_of: Option<Timestamp>,
    /// Output location (a folder, file:///path or s3://bucket/prefix): receives selection.jsonl
    /// and then select.json.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Print the per-clip decision table (default: only when the catalog has at most 50 lines).
    #[arg(long)]
    pub table: bool,
    /// Where clips may be read from besides the catalog's own folder or S3 prefix
    /// (comma-separated URLs, e.g. s3://clips/2026/); a clip elsewhere is excluded with
    /// `source_not_allowed`.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Parses an RFC 3339 instant with an offset.
pub fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    crate::records::instant::parse(s)
}

/// The result of selecting a catalog against a ledger.
#[derive(Debug, Clone)]
pub struct Selection {
    pub lines: Vec<SelectionLine>,
    pub as_of: Timestamp,
}

impl Selection {
    /// Number of included clips.
    pub fn included(&self) -> u64 {
        self.lines
            .iter()
            .filter(|l| l.decision == Decision::Include)
            .count() as u64
    }
    /// Excluded clips counted by their first reason code.
    pub fn excluded_by_reason(&self) -> BTreeMap<ReasonCode, u64> {
        let mut m = BTreeMap::new();
        for l in &self.lines {
            if let Some(code) = l.reason_codes.first() {
                *m.entry(*code).or_default() += 1;
            }
        }
        m
    }
}

/// Parses one catalog line into a checked clip, or says why it is not one.
pub fn parse_catalog_line(raw: &[u8]) -> Result<CatalogClip, String> {
    let clip: CatalogClip =
        serde_json::from_slice(raw).map_err(|e| format!("not a valid catalog clip: {e}"))?;
    clip.check()?;
    Ok(clip)
}

/// Best effort to name the clip on a line that did not parse as a clip.
fn salvage_video_id(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        video_id: String,
    }
    serde_json::from_slice::<IdOnly>(raw)
        .ok()
        .map(|x| x.video_id)
}

/// A catalog parsed line by line, with the ids that appear more than once.
pub struct ParsedCatalog {
    lines: Vec<(u64, Option<String>, Result<CatalogClip, String>)>,
    duplicates: std::collections::HashSet<String>,
    /// The catalog's location and the allowed sources, when restricted ([`ParsedCatalog::restrict`]).
    sources: Option<(Location, Sources)>,
}

impl ParsedCatalog {
    /// Parses every line (in parallel) and finds duplicate ids: a `video_id` seen on more than
    /// one line, valid or not, excludes every copy (fail closed).
    pub fn parse(catalog: &[u8]) -> ParsedCatalog {
        let lines: Vec<_> = split_lines(catalog)
            .par_iter()
            .with_min_len(2048)
            .map(|&(n, raw)| match parse_catalog_line(raw) {
                Ok(clip) => (n, Some(clip.video_id.clone()), Ok(clip)),
                Err(e) => (n, salvage_video_id(raw), Err(e)),
            })
            .collect();
        let mut seen: HashMap<&str, u32> = HashMap::with_capacity(lines.len());
        for (_, id, _) in &lines {
            if let Some(id) = id {
                *seen.entry(id.as_str()).or_default() += 1;
            }
        }
        let duplicates = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id.to_string())
            .collect();
        ParsedCatalog {
            lines,
            duplicates,
            sources: None,
        }
    }

    /// Excludes clips whose URI (relative to the catalog at `catalog`, or `s3://…`) lies outside
    /// `sources`, with [`ReasonCode::SourceNotAllowed`].
    pub fn restrict(&mut self, catalog: Location, sources: Sources) {
        self.sources = Some((catalog, sources));
    }

    /// Number of catalog lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when the catalog has no lines.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Decides lines `range` (in parallel, order kept).
    pub fn decide(
        &self,
        range: std::ops::Range<usize>,
        index: &ConsentIndex<'_>,
    ) -> Vec<SelectionLine> {
        self.lines[range]
            .par_iter()
            .with_min_len(1024)
            .map(|(n, id, clip)| self.decide_one(*n, id, clip, index))
            .collect()
    }

    fn decide_one(
        &self,
        n: u64,
        id: &Option<String>,
        clip: &Result<CatalogClip, String>,
        index: &ConsentIndex<'_>,
    ) -> SelectionLine {
        let mut reasons: Vec<(ReasonCode, String)> = Vec::new();
        if let Err(e) = clip {
            reasons.push((ReasonCode::InvalidLine, e.clone()));
        }
        if let Some(id) = id.as_deref().filter(|id| self.duplicates.contains(*id)) {
            reasons.push((
                ReasonCode::DuplicateVideoId,
                format!("video_id {id:?} appears on more than one catalog line"),
            ));
        }
        // An end-to-end encrypted clip is out whatever the consent says: its bytes are the
        // owner's alone (decided here, so no later stage ever opens it).
        if let Ok(clip) = clip.as_ref()
            && clip.e2ee
        {
            reasons.push((
                ReasonCode::EndToEndEncrypted,
                format!(
                    "clip {} is end-to-end encrypted: ClearFrame never decodes it, whatever the consent says",
                    clip.video_id
                ),
            ));
        }
        if let (Ok(clip), Some((base, sources))) = (clip, &self.sources)
            && let Err(e) = sources.check_uri(base, &clip.uri)
        {
            let why = match e {
                storage::StorageError::SourceNotAllowed { url, allowed } => format!(
                    "uri {:?} points at {url}, outside the allowed sources ({allowed}); pass --sources to allow it",
                    clip.uri
                ),
                other => format!("uri {:?}: {other}", clip.uri),
            };
            reasons.push((ReasonCode::SourceNotAllowed, why));
        }
        let (basis, clip_out) = match (reasons.is_empty(), clip) {
            (true, Ok(clip)) => match index.decide(clip) {
                Verdict::Include(basis) => (Some(basis), Some(clip.clone())),
                Verdict::Exclude(r) => {
                    reasons = r;
                    (None, None)
                }
            },
            _ => (None, None),
        };
        SelectionLine {
            line: n,
            video_id: id.clone(),
            decision: if basis.is_some() {
                Decision::Include
            } else {
                Decision::Exclude
            },
            basis,
            reason_codes: reasons.iter().map(|r| r.0).collect(),
            reasons: reasons.into_iter().map(|r| r.1).collect(),
            clip: clip_out,
        }
    }
}

/// Decides every catalog line against an indexed ledger, all in memory. Pure: no I/O.
pub fn select(catalog: &[u8], index: &ConsentIndex<'_>) -> Selection {
    let parsed = ParsedCatalog::parse(catalog);
    Selection {
        lines: parsed.decide(0..parsed.len(), index),
        as_of: index.as_of(),
    }
}

/// Serializes selection lines as JSON Lines (in parallel, order kept).
pub fn to_jsonl(lines: &[SelectionLine]) -> Vec<u8> {
    let chunks: Vec<Vec<u8>> = lines
        .par_chunks(8192)
        .map(|chunk| {
            let mut buf = Vec::with_capacity(chunk.len() * 256);
            for l in chunk {
                serde_json::to_writer(&mut buf, l).expect("selection lines serialize");
                buf.push(b'\n');
            }
            buf
        })
        .collect();
    chunks.concat()
}

/// What `run_select` produced.
#[derive(Debug)]
pub struct SelectOutcome {
    pub record: SelectRecord,
    /// The selection lines, kept only when the catalog has at most `keep_lines` lines.
    pub lines: Option<Vec<SelectionLine>>,
}

/// Lines decided and written per batch: bounds memory for million-clip catalogs.
const BATCH: usize = 65_536;

/// The whole stage on local files (see [`run_select_store`]).
pub fn run_select(
    catalog: &Path,
    ledger: &Path,
    as_of: Timestamp,
    out: &Path,
    keep_lines: usize,
) -> anyhow::Result<SelectOutcome> {
    let local = |p: &Path| -> anyhow::Result<ObjectRef> {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("{} is not a file name", p.display()))?;
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(ObjectRef {
            store: Arc::new(storage::LocalStore::reading_named_file(
                parent.to_path_buf(),
            )),
            key: name.to_owned(),
            url: p.display().to_string(),
        })
    };
    let out: Arc<dyn Store> = Arc::new(storage::LocalStore::new(out.to_path_buf()));
    let catalog = local(catalog)?;
    let sources = Sources::new(catalog.store.location(), &[])?;
    run_select_store(&catalog, &local(ledger)?, as_of, &out, keep_lines, &sources)
}

/// The whole stage on any store: read catalog and ledger, check the ledger, decide, write
/// `select.json` then `selection.jsonl` into `out` (the record first: see below). A bad
/// ledger returns an error before anything is written, and so does an `out` that is neither
/// empty nor a work folder ClearFrame wrote ([`super::check_work_folder`]) or that refuses a
/// probe write (S3). Clips outside `sources` are excluded. Lines are decided and streamed out in batches (through a temporary
/// file beside the output for local folders, in a private staging folder for S3; the selection
/// holds no media); they are returned only when there are at most `keep_lines`.
pub fn run_select_store(
    catalog: &ObjectRef,
    ledger: &ObjectRef,
    as_of: Timestamp,
    out: &Arc<dyn Store>,
    keep_lines: usize,
    sources: &Sources,
) -> anyhow::Result<SelectOutcome> {
    let ledger_bytes = ledger
        .get()
        .with_context(|| format!("cannot read consent ledger {}", ledger.url))?;
    let ledger_hash = crate::hashing::hash_bytes(&ledger_bytes);
    let parsed = Ledger::parse(&ledger_bytes, &ledger.url)
        .context("the consent ledger is unusable; nothing was selected")?;
    drop(ledger_bytes);
    let index = parsed.index(as_of);

    let catalog_bytes = catalog
        .get()
        .with_context(|| format!("cannot read catalog {}", catalog.url))?;
    let catalog_hash = crate::hashing::hash_bytes(&catalog_bytes);
    let mut clips = ParsedCatalog::parse(&catalog_bytes);
    drop(catalog_bytes);
    clips.restrict(catalog.store.location().clone(), sources.clone());

    // Before anything is written: the output is ours to write, and writes will be accepted.
    super::check_work_folder(out)?;
    out.probe_write()
        .with_context(|| format!("a probe write to {} was refused", out.location()))?;

    let selection_url = out.url("selection.jsonl");
    let write_err = || format!("cannot write {selection_url}");
    let local_root = match out.location() {
        Location::Local(root) => {
            storage::create_dir_all(root)
                .with_context(|| format!("cannot create output folder {}", root.display()))?;
            Some(root.clone())
        }
        Location::S3 { .. } => None,
    };
    let staging = match &local_root {
        Some(_) => None,
        None => Some(
            crate::staging::Staging::create("select").context("cannot create a staging folder")?,
        ),
    };
    let temp_dir = match (&local_root, &staging) {
        (Some(root), _) => root.as_path(),
        (None, Some(s)) => s.path(),
        (None, None) => unreachable!("S3 output has a staging folder"),
    };
    // Named like every temporary file ClearFrame writes (`….<owner>.<n>`), so that one a killed
    // select left is swept by the next writer.
    let prefix = format!(
        "{}selection.jsonl.{}.",
        storage::TEMP_PREFIX,
        storage::beneath::temp_owner()
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(temp_dir)
        .with_context(write_err)?;
    storage::set_file_mode(tmp.as_file()).with_context(write_err)?;
    let mut hasher = blake3::Hasher::new();
    let (mut included, mut by_reason) = (0u64, BTreeMap::<ReasonCode, u64>::new());
    let mut kept = (clips.len() <= keep_lines).then(Vec::new);
    for start in (0..clips.len()).step_by(BATCH) {
        let lines = clips.decide(start..(start + BATCH).min(clips.len()), &index);
        for l in &lines {
            match l.reason_codes.first() {
                None => included += 1,
                Some(code) => *by_reason.entry(*code).or_default() += 1,
            }
        }
        let bytes = to_jsonl(&lines);
        hasher.update(&bytes);
        tmp.write_all(&bytes).with_context(write_err)?;
        if let Some(kept) = &mut kept {
            kept.extend(lines);
        }
    }
    let total = clips.len() as u64;
    crate::audit::note_input("catalog", &catalog_hash);
    crate::audit::note_input("ledger", &ledger_hash);
    let record = SelectRecord {
        clearframe_version: env!("CARGO_PKG_VERSION").to_string(),
        as_of,
        catalog: InputRef {
            uri: catalog.url.clone(),
            blake3: catalog_hash,
            lines: total,
        },
        ledger: InputRef {
            uri: ledger.url.clone(),
            blake3: ledger_hash,
            lines: parsed.len() as u64,
        },
        selection: InputRef {
            uri: "selection.jsonl".into(),
            blake3: crate::hashing::hex(&hasher.finalize()),
            lines: total,
        },
        included,
        excluded: total - included,
        excluded_by_reason: by_reason,
    };
    let mut rec = serde_json::to_vec_pretty(&record)?;
    rec.push(b'\n');
    // The record goes first: from the first object a select writes, the folder holds the
    // record that makes it a work folder, so that a shard selecting beside this one (into the
    // same, empty folder) never finds ClearFrame's selection without its record and refuses.
    // A reader checks the selection against the record's blake3, so one killed between the two
    // writes leaves a folder that the stages refuse and the next select rewrites.
    out.put_record("select.json", rec.into())
        .with_context(|| format!("cannot write {}", out.url("select.json")))?;
    match &local_root {
        Some(root) => {
            tmp.as_file().sync_all().with_context(write_err)?;
            tmp.persist(root.join("selection.jsonl"))
                .map_err(|e| e.error)
                .with_context(write_err)?;
            std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .with_context(write_err)?;
        }
        None => {
            tmp.as_file_mut()
                .seek(SeekFrom::Start(0))
                .with_context(write_err)?;
            out.put_reader("selection.jsonl", tmp.as_file_mut())
                .with_context(write_err)?;
        }
    }

    Ok(SelectOutcome {
        record,
        lines: kept,
    })
}

/// Prints the per-clip table to `w`.
pub fn print_table(w: &mut impl Write, lines: &[SelectionLine]) -> std::io::Result<()> {
    writeln!(
        w,
        "{:>5}  {:<24} {:<8} basis / reason",
        "line", "video_id", "decision"
    )?;
    for l in lines {
        let id = l.video_id.as_deref().unwrap_or("-");
        let why = match (&l.basis, l.reasons.first()) {
            (Some(b), _) => format!("{:?} {}", b.kind, b.event_id).to_lowercase(),
            (None, Some(r)) => r.clone(),
            (None, None) => String::new(),
        };
        let decision = match l.decision {
            Decision::Include => "include",
            Decision::Exclude => "exclude",
        };
        writeln!(w, "{:>5}  {:<24} {:<8} {}", l.line, id, decision, why)?;
    }
    Ok(())
}

/// Prints the summary: counts by decision and by reason.
pub fn print_summary(
    w: &mut impl Write,
    record: &SelectRecord,
    selection_url: &str,
) -> std::io::Result<()> {
    writeln!(
        w,
        "selected {} of {} clips as of {} ({} excluded); ledger: {} events",
        record.included, record.catalog.lines, record.as_of, record.excluded, record.ledger.lines
    )?;
    for (code, n) in &record.excluded_by_reason {
        writeln!(w, "  excluded, {:<20} {n}", code.as_str())?;
    }
    writeln!(w, "wrote {selection_url}")
}

/// Runs `clearframe select`. Exit 0: done; 1: done, but some catalog lines were invalid;
/// errors (2) stop before anything is written.
pub fn run_cli(args: &SelectArgs) -> anyhow::Result<ExitCode> {
    let as_of = args.as_of.unwrap_or_else(Timestamp::now);
    let _span = tracing::info_span!("select", as_of = %as_of).entered();
    let keep = if args.table { usize::MAX } else { 50 };
    let options = args.store.to_options()?;
    let catalog = ObjectRef::open(&args.catalog, &options)?;
    let ledger = ObjectRef::open(&args.ledger, &options)?;
    let out = storage::open(&args.out, &options)?;
    let sources = Sources::new(catalog.store.location(), &args.sources)?;
    let outcome = run_select_store(&catalog, &ledger, as_of, &out, keep, &sources)?;
    let mut stdout = std::io::stdout().lock();
    if let Some(lines) = &outcome.lines {
        print_table(&mut stdout, lines)?;
    }
    print_summary(&mut stdout, &outcome.record, &out.url("selection.jsonl"))?;
    let invalid = outcome
        .record
        .excluded_by_reason
        .get(&ReasonCode::InvalidLine)
        .copied()
        .unwrap_or(0);
    if invalid > 0 {
        tracing::warn!(
            invalid,
            "catalog lines could not be read; their clips were excluded"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStore, ObjectMeta, Result as StoreResult};
    use std::sync::Mutex;

    /// A local work folder that, before every write, records whether the folder as it stands
    /// would pass [`super::super::check_work_folder`], the check a shard selecting beside
    /// another makes.
    #[derive(Debug)]
    struct Watched {
        inner: Arc<dyn Store>,
        refused_before: Mutex<Vec<String>>,
    }

    impl Watched {
        fn check(&self, key: &str) {
            if super::super::check_work_folder(&self.inner).is_err() {
                self.refused_before.lock().unwrap().push(key.to_owned());
            }
        }
    }

    impl Store for Watched {
        fn location(&self) -> &Location {
            self.inner.location()
        }
        fn get(&self, key: &str) -> StoreResult<bytes::Bytes> {
            self.inner.get(key)
        }
        fn reader(&self, key: &str) -> StoreResult<Box<dyn std::io::Read + Send>> {
            self.inner.reader(key)
        }
        fn put(&self, key: &str, data: bytes::Bytes) -> StoreResult<()> {
            self.check(key);
            self.inner.put(key, data)
        }
        fn put_reader(&self, key: &str, reader: &mut dyn std::io::Read) -> StoreResult<u64> {
            self.check(key);
            self.inner.put_reader(key, reader)
        }
        fn put_record(&self, key: &str, data: bytes::Bytes) -> StoreResult<()> {
            self.check(key);
            self.inner.put_record(key, data)
        }
        fn put_new(&self, key: &str, data: bytes::Bytes) -> StoreResult<bool> {
            self.check(key);
            self.inner.put_new(key, data)
        }
        fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> StoreResult<()> {
            self.inner.delete(key)
        }
    }

    /// Shards select into one work folder at once: whatever a select has written so far, a
    /// second select's check must find a work folder ClearFrame wrote, never refuse it. (The old
    /// order, selection then record, left `selection.jsonl` alone for a moment, and a shard that
    /// looked then refused to run.)
    #[test]
    fn a_folder_a_select_is_writing_is_always_a_work_folder() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let dir = tempfile::tempdir().unwrap();
        let work = Arc::new(Watched {
            inner: Arc::new(LocalStore::new(dir.path().join("work"))),
            refused_before: Mutex::new(Vec::new()),
        });
        let out: Arc<dyn Store> = work.clone();
        let open = |name: &str| {
            ObjectRef::open(fixtures.join(name).to_str().unwrap(), &Default::default()).unwrap()
        };
        let catalog = open("demo-catalog.jsonl");
        let sources = Sources::new(catalog.store.location(), &[]).unwrap();
        let as_of: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        for _ in 0..2 {
            run_select_store(
                &catalog,
                &open("demo-ledger.jsonl"),
                as_of,
                &out,
                0,
                &sources,
            )
            .unwrap();
            // The S3 path writes both objects through the store; the local path renames the
            // selection into place, so look once more after it.
            work.check("(after)");
        }
        assert_eq!(
            work.refused_before.lock().unwrap().as_slice(),
            [] as [String; 0]
        );
        for key in ["select.json", "selection.jsonl"] {
            assert!(dir.path().join("work").join(key).is_file(), "{key}");
        }
    }
}
