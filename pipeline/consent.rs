//! The consent ledger and the rules that decide whether a clip may be used.
//!
//! The ledger is parsed whole and checked before any decision: one unreadable line could be the
//! revocation that matters, so any bad line stops the run ([`LedgerError`]). Decisions are then
//! made as of a snapshot instant by a [`ConsentIndex`]; file order never matters, only `at`, and
//! every tie goes against inclusion. Only this module constructs a [`ConsentedClip`], the
//! capability that the decoding stage takes.

use std::collections::HashMap;

use jiff::Timestamp;
use rayon::prelude::*;

use crate::records::{
    Basis, BasisKind, CatalogClip, Grant, LedgerEvent, ReasonCode, SelectionLine,
};

/// Why a ledger cannot be used. Every variant names the source and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{source_name}:{line}: not a valid ledger event: {message}")]
    Invalid {
        source_name: String,
        line: u64,
        message: String,
    },
    #[error("{source_name}:{line}: duplicate event_id {event_id:?} (first on line {first_line})")]
    DuplicateEventId {
        source_name: String,
        line: u64,
        event_id: String,
        first_line: u64,
    },
    #[error("{source_name}:{line}: revocation {event_id:?} names grant {grant_id:?}, {problem}")]
    BadRevocation {
        source_name: String,
        line: u64,
        event_id: String,
        grant_id: String,
        problem: String,
    },
}

/// One parsed ledger event with where it came from.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: LedgerEvent,
    /// 1-based line number.
    pub line: u64,
    /// blake3 of the line's bytes without its terminator.
    pub blake3: [u8; 32],
}

/// A parsed, cross-checked ledger.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    events: Vec<StoredEvent>,
}

/// Splits `bytes` into lines: `(1-based number, bytes without "\n" or "\r\n")`. A final line
/// without a terminator counts; a terminator at the very end does not start a new line. A UTF-8
/// byte-order mark at the start is dropped.
pub fn split_lines(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::with_capacity(bytes.len() / 128 + 1);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        out.push(trim_cr(&bytes[start..end]));
        start = end + 1;
    }
    if start < bytes.len() {
        out.push(trim_cr(&bytes[start..]));
    }
    out.into_iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l))
        .collect()
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn parse_event(line: &[u8]) -> Result<LedgerEvent, String> {
    let event: LedgerEvent = serde_json::from_slice(line).map_err(|e| {
        let msg = e.to_string();
        // serde names the expected variants; say it in the ledger's words.
        if msg.starts_with("unknown variant") {
            format!("unknown event type: {msg}")
        } else {
            msg
        }
    })?;
    let (event_id, owner_id, _) = event.common();
    if event_id.is_empty() {
        return Err("event_id is empty".into());
    }
    if owner_id.is_empty() {
        return Err("owner_id is empty".into());
    }
    match &event {
        LedgerEvent::ConsentGranted(g) => {
            if g.document.uri.is_empty() {
                return Err("grant's document.uri is empty".into());
            }
            if !crate::hashing::is_blake3_hex(&g.document.blake3) {
                return Err(format!(
                    "grant's document.blake3 {:?} is not 64 hex digits",
                    g.document.blake3
                ));
            }
        }
        LedgerEvent::NeighborsShared(s) if s.video_id.is_empty() => {
            return Err("video_id is empty".into());
        }
        LedgerEvent::NeighborsUnshared(v) | LedgerEvent::VideoDeleted(v)
            if v.video_id.is_empty() =>
        {
            return Err("video_id is empty".into());
        }
        LedgerEvent::ConsentRevoked(r) if r.grant_id.as_deref() == Some("") => {
            return Err("grant_id is empty".into());
        }
        _ => {}
    }
    Ok(event)
}

impl Ledger {
    /// Parses and cross-checks a whole ledger. `source_name` names it in errors. Blank lines are
    /// skipped (they cannot hide an event); anything else that is not a valid event is an error.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<Ledger, LedgerError> {
        let lines = split_lines(bytes);
        let parse_line =
            |&(line, raw): &(u64, &[u8])| -> Option<Result<StoredEvent, (u64, String)>> {
                if is_blank(raw) {
                    return None;
                }
                Some(match parse_event(raw) {
                    Ok(event) => Ok(StoredEvent {
                        event,
                        line,
                        blake3: *blake3::hash(raw).as_bytes(),
                    }),
                    Err(message) => Err((line, message)),
                })
            };
        let parsed: Result<Vec<StoredEvent>, (u64, String)> = lines
            .par_iter()
            .with_min_len(4096)
            .filter_map(parse_line)
            .collect();
        let events = match parsed {
            Ok(events) => events,
            Err(_) => {
                // Report the first bad line in file order, whichever thread saw one first.
                let (line, message) = lines
                    .iter()
                    .filter_map(parse_line)
                    .find_map(Result::err)
                    .expect("an error was seen");
                return Err(LedgerError::Invalid {
                    source_name: source_name.to_string(),
                    line,
                    message,
                });
            }
        };
        let ledger = Ledger { events };
        ledger.cross_check(source_name)?;
        Ok(ledger)
    }

    /// Builds a ledger from events already in memory (line numbers are positions, hashes are of
    /// their canonical JSON). Used by tests and generators; runs the same cross-checks.
    pub fn from_events(events: Vec<LedgerEvent>) -> Result<Ledger, LedgerError> {
        let mut text = Vec::new();
        for e in &events {
            serde_json::to_writer(&mut text, e).expect("ledger events serialize");
            text.push(b'\n');
        }
        Ledger::parse(&text, "<memory>")
    }

    fn cross_check(&self, source_name: &str) -> Result<(), LedgerError> {
        let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(self.events.len());
        for (i, ev) in self.events.iter().enumerate() {
            let (id, _, _) = ev.event.common();
            if let Some(&first) = by_id.get(id) {
                return Err(LedgerError::DuplicateEventId {
                    source_name: source_name.to_string(),
                    line: ev.line,
                    event_id: id.to_string(),
                    first_line: self.events[first].line,
                });
            }
            by_id.insert(id, i);
        }
        for ev in &self.events {
            let LedgerEvent::ConsentRevoked(r) = &ev.event else {
                continue;
            };
            let Some(grant_id) = &r.grant_id else {
                continue;
            };
            let bad = |problem: String| LedgerError::BadRevocation {
                source_name: source_name.to_string(),
                line: ev.line,
                event_id: r.event_id.clone(),
                grant_id: grant_id.clone(),
                problem,
            };
            match by_id.get(grant_id.as_str()).map(|&i| &self.events[i]) {
                None => return Err(bad("which is not in the ledger".into())),
                Some(target) => match &target.event {
                    LedgerEvent::ConsentGranted(g) if g.owner_id != r.owner_id => {
                        return Err(bad(format!(
                            "a grant of another owner ({:?}, line {}); the revocation is by {:?}",
                            g.owner_id, target.line, r.owner_id
                        )));
                    }
                    LedgerEvent::ConsentGranted(_) => {}
                    other => {
                        return Err(bad(format!(
                            "which is a {} event (line {}), not a grant",
                            other.kind(),
                            target.line
                        )));
                    }
                },
            }
        }
        Ok(())
    }

    /// The events, in file order.
    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when the ledger has no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Indexes the events that count at `as_of` (those with `at <= as_of`).
    pub fn index(&self, as_of: Timestamp) -> ConsentIndex<'_> {
        ConsentIndex::build(self, as_of)
    }
}

/// The latest sharing state of one clip: the instant of its latest sharing event(s) and, if every
/// event at that instant is a public share by one owner, that owner and the first such event.
#[derive(Debug, Clone, Copy)]
struct ShareState<'a> {
    at: Timestamp,
    qualifying: Option<(&'a str, usize)>,
    latest: usize,
}

/// Why a recorded basis no longer holds ([`ConsentIndex::basis_lost`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BasisLost {
    /// `video_deleted`, `account_deleted`, `revoked`, `expired`, `unshared`, or
    /// `basis_not_in_ledger`.
    pub code: &'static str,
    /// The ledger event that ended the basis.
    pub event_id: Option<String>,
    /// The event, as a person reads it (kind, id, line, instant).
    pub event: String,
}

/// The ledger as it stood at one instant, indexed for per-clip decisions.
pub struct ConsentIndex<'a> {
    ledger: &'a Ledger,
    as_of: Timestamp,
    grants_by_owner: HashMap<&'a str, Vec<usize>>,
    /// Grant id -> the earliest targeted revocation of it.
    revoked_grants: HashMap<&'a str, usize>,
    /// Owner -> the latest blanket revocation (no `grant_id`).
    blanket_revocations: HashMap<&'a str, usize>,
    deleted_videos: HashMap<&'a str, usize>,
    deleted_accounts: HashMap<&'a str, usize>,
    sharing: HashMap<&'a str, ShareState<'a>>,
}

/// Keeps, per key, the event chosen by `better(new, old)`.
fn keep<'a>(
    map: &mut HashMap<&'a str, usize>,
    key: &'a str,
    i: usize,
    better: impl Fn(usize, usize) -> bool,
) {
    map.entry(key)
        .and_modify(|old| {
            if better(i, *old) {
                *old = i;
            }
        })
        .or_insert(i);
}

impl<'a> ConsentIndex<'a> {
    fn build(ledger: &'a Ledger, as_of: Timestamp) -> Self {
        let mut ix = ConsentIndex {
            ledger,
            as_of,
            grants_by_owner: HashMap::new(),
            revoked_grants: HashMap::new(),
            blanket_revocations: HashMap::new(),
            deleted_videos: HashMap::new(),
            deleted_accounts: HashMap::new(),
            sharing: HashMap::new(),
        };
        let ev = &ledger.events;
        let at = |i: usize| ev[i].event.common().2;
        let earlier = |a: usize, b: usize| (at(a), ev[a].line) < (at(b), ev[b].line);
        let later = |a: usize, b: usize| at(a) > at(b);
        for (i, stored) in ev.iter().enumerate() {
            if stored.event.common().2 > as_of {
                continue;
            }
            match &stored.event {
                LedgerEvent::ConsentGranted(g) => {
                    ix.grants_by_owner.entry(&g.owner_id).or_default().push(i);
                }
                LedgerEvent::ConsentRevoked(r) => match &r.grant_id {
                    Some(g) => keep(&mut ix.revoked_grants, g, i, earlier),
                    None => keep(&mut ix.blanket_revocations, &r.owner_id, i, later),
                },
                LedgerEvent::VideoDeleted(v) => {
                    keep(&mut ix.deleted_videos, &v.video_id, i, earlier);
                }
                LedgerEvent::AccountDeleted(a) => {
                    keep(&mut ix.deleted_accounts, &a.owner_id, i, earlier);
                }
                LedgerEvent::NeighborsShared(s) => {
                    let q = (s.visibility == "public").then_some((s.owner_id.as_str(), i));
                    ix.update_share(&s.video_id, s.at, q, i);
                }
                LedgerEvent::NeighborsUnshared(v) => ix.update_share(&v.video_id, v.at, None, i),
            }
        }
        for grants in ix.grants_by_owner.values_mut() {
            grants.sort_by_key(|&i| (at(i), ev[i].line));
        }
        ix
    }

    fn update_share(
        &mut self,
        video_id: &'a str,
        at: Timestamp,
        q: Option<(&'a str, usize)>,
        i: usize,
    ) {
        let ledger = self.ledger;
        let lines = |i: usize| ledger.events[i].line;
        let new = ShareState {
            at,
            qualifying: q,
            latest: i,
        };
        match self.sharing.get_mut(video_id) {
            None => {
                self.sharing.insert(video_id, new);
            }
            Some(old) if at > old.at => *old = new,
            Some(old) if at == old.at => {
                // A tie: it qualifies only if every event at this instant is a public share by
                // the same owner. Keep the earliest line as the basis, for determinism.
                old.qualifying = match (old.qualifying, q) {
                    (Some((o1, a)), Some((o2, b))) if o1 == o2 => {
                        Some((o1, if lines(a) <= lines(b) { a } else { b }))
                    }
                    _ => None,
                };
                if old.qualifying.is_none() && lines(i) < lines(old.latest) {
                    old.latest = i;
                }
            }
            Some(_) => {}
        }
    }

    /// The snapshot instant.
    pub fn as_of(&self) -> Timestamp {
        self.as_of
    }

    fn basis(&self, i: usize, kind: BasisKind) -> Basis {
        let stored = &self.ledger.events[i];
        let document_blake3 = match &stored.event {
            LedgerEvent::ConsentGranted(g) => Some(g.document.blake3.to_ascii_lowercase()),
            _ => None,
        };
        Basis {
            kind,
            event_id: stored.event.common().0.to_string(),
            event_blake3: blake3::Hash::from_bytes(stored.blake3).to_hex().to_string(),
            event_line: stored.line,
            document_blake3,
        }
    }

    fn describe(&self, i: usize) -> String {
        let s = &self.ledger.events[i];
        let (id, _, at) = s.event.common();
        format!("{} {id:?} (line {}, at {at})", s.event.kind(), s.line)
    }

    /// Why grant `g` does not cover `clip`, or `None` when it does. Without `explain` the reason
    /// is left empty: deciding a million clips should not format a million explanations.
    fn grant_problem(&self, g: &Grant, clip: &CatalogClip, explain: bool) -> Option<String> {
        let say = |f: &dyn Fn() -> String| Some(if explain { f() } else { String::new() });
        if !g.scope.iter().any(|s| s == "ml_training") {
            return say(&|| "its scope does not include ml_training".into());
        }
        if !g.devices.iter().any(|d| d == "*" || *d == clip.device_id) {
            return say(&|| format!("it does not cover device {:?}", clip.device_id));
        }
        if !g.placements.contains(&clip.placement) {
            return say(&|| format!("it does not cover {} cameras", clip.placement.as_str()));
        }
        if let Some(from) = g.captured_from
            && clip.captured_at < from
        {
            return say(&|| {
                format!(
                    "it covers clips captured from {from}; this one was captured at {}",
                    clip.captured_at
                )
            });
        }
        if let Some(until) = g.captured_until
            && clip.captured_at > until
        {
            return say(&|| {
                format!(
                    "it covers clips captured until {until}; this one was captured at {}",
                    clip.captured_at
                )
            });
        }
        if let Some(expires) = g.expires_at
            && expires <= self.as_of
        {
            return say(&|| format!("it expired at {expires}"));
        }
        if let Some(&r) = self.revoked_grants.get(g.event_id.as_str()) {
            return say(&|| format!("it was revoked by {}", self.describe(r)));
        }
        if let Some(&r) = self.blanket_revocations.get(g.owner_id.as_str())
            && g.at <= self.ledger.events[r].event.common().2
        {
            return say(&|| format!("it was revoked by {}", self.describe(r)));
        }
        None
    }

    /// Whether the basis a dataset recorded for `video_id` (the ledger event `event_id`, a grant
    /// or a public share) still holds at this index's instant, and if not, why: the reason code
    /// and the event that ended it. Used on an older dataset, whose items carry their basis but
    /// not the catalog line: a basis that no longer holds makes its items no longer allowed as
    /// they are, even if another event might admit the clip again in a new build.
    pub fn basis_lost(&self, video_id: &str, event_id: &str) -> Option<BasisLost> {
        let ev = &self.ledger.events;
        let id = |i: usize| ev[i].event.common().0.to_string();
        let lost = |code: &'static str, i: usize| {
            Some(BasisLost {
                code,
                event_id: Some(id(i)),
                event: self.describe(i),
            })
        };
        if let Some(&i) = self.deleted_videos.get(video_id) {
            return lost("video_deleted", i);
        }
        let basis = ev
            .iter()
            .enumerate()
            .find(|(_, s)| s.event.common().0 == event_id && s.event.common().2 <= self.as_of);
        let Some((b, stored)) = basis else {
            return Some(BasisLost {
                code: "basis_not_in_ledger",
                event_id: Some(event_id.to_owned()),
                event: format!(
                    "no event {event_id:?} at or before {} in this ledger",
                    self.as_of
                ),
            });
        };
        let owner = stored.event.common().1;
        if let Some(&i) = self.deleted_accounts.get(owner) {
            return lost("account_deleted", i);
        }
        match &stored.event {
            LedgerEvent::ConsentGranted(g) => {
                if let Some(expires) = g.expires_at
                    && expires <= self.as_of
                {
                    return Some(BasisLost {
                        code: "expired",
                        event_id: Some(id(b)),
                        event: format!("{} expired at {expires}", self.describe(b)),
                    });
                }
                if let Some(&r) = self.revoked_grants.get(g.event_id.as_str()) {
                    return lost("revoked", r);
                }
                if let Some(&r) = self.blanket_revocations.get(g.owner_id.as_str())
                    && g.at <= ev[r].event.common().2
                {
                    return lost("revoked", r);
                }
                None
            }
            LedgerEvent::NeighborsShared(sh) if sh.video_id == video_id => {
                match self.sharing.get(video_id) {
                    Some(state) if state.qualifying.is_some_and(|(o, _)| o == owner) => None,
                    Some(state) => lost("unshared", state.latest),
                    None => lost("unshared", b),
                }
            }
            _ => Some(BasisLost {
                code: "basis_not_in_ledger",
                event_id: Some(event_id.to_owned()),
                event: format!(
                    "{} is not a grant or a public share of {video_id}",
                    self.describe(b)
                ),
            }),
        }
    }

    /// Decides one valid clip: erasure first, then a consent basis, then a Neighbors basis.
    pub fn decide(&self, clip: &CatalogClip) -> Verdict {
        let mut reasons = Vec::new();
        if let Some(&i) = self.deleted_videos.get(clip.video_id.as_str()) {
            reasons.push((
                ReasonCode::VideoDeleted,
                format!("clip erased by {}", self.describe(i)),
            ));
        }
        if let Some(&i) = self.deleted_accounts.get(clip.owner_id.as_str()) {
            reasons.push((
                ReasonCode::AccountDeleted,
                format!("owner {:?} erased by {}", clip.owner_id, self.describe(i)),
            ));
        }
        if !reasons.is_empty() {
            return Verdict::Exclude(reasons);
        }
        let grants = self
            .grants_by_owner
            .get(clip.owner_id.as_str())
            .map_or(&[][..], Vec::as_slice);
        let grant = |i: usize| match &self.ledger.events[i].event {
            LedgerEvent::ConsentGranted(g) => g,
            _ => unreachable!("grants_by_owner holds grants only"),
        };
        if let Some(&i) = grants
            .iter()
            .find(|&&i| self.grant_problem(grant(i), clip, false).is_none())
        {
            return Verdict::Include(self.basis(i, BasisKind::Consent));
        }
        let share = self.sharing.get(clip.video_id.as_str());
        if let Some(ShareState {
            qualifying: Some((owner, i)),
            ..
        }) = share
            && *owner == clip.owner_id
        {
            return Verdict::Include(self.basis(*i, BasisKind::Neighbors));
        }
        let mut problems: Vec<String> = grants
            .iter()
            .map(|&i| {
                format!(
                    "grant {}: {}",
                    self.describe(i),
                    self.grant_problem(grant(i), clip, true).unwrap_or_default()
                )
            })
            .collect();
        if problems.is_empty() {
            problems.push(format!(
                "no consent grant by owner {:?} at or before {}",
                clip.owner_id, self.as_of
            ));
        }
        const MAX_EXPLAINED: usize = 5;
        if problems.len() > MAX_EXPLAINED {
            let more = problems.len() - MAX_EXPLAINED;
            problems.truncate(MAX_EXPLAINED);
            problems.push(format!("and {more} more grants that do not cover it"));
        }
        problems.push(match share {
            None => "not shared on Neighbors".to_string(),
            Some(s) => match s.qualifying {
                Some((owner, _)) => {
                    format!("shared publicly by {owner:?}, who is not the clip's owner")
                }
                None => format!(
                    "not publicly shared: its latest sharing event is {}",
                    self.describe(s.latest)
                ),
            },
        });
        Verdict::Exclude(
            problems
                .into_iter()
                .map(|p| (ReasonCode::NoBasis, p))
                .collect(),
        )
    }
}

/// The outcome for one clip.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Include(Basis),
    Exclude(Vec<(ReasonCode, String)>),
}

/// A clip that the consent gate let in, with the event that allowed it. Only this module can
/// construct one (the gate's decision, or [`readmit_selection`] of a recorded selection whose
/// blake3 checks); decoding takes one, so no other path leads from a catalog to pixels.
///
/// ```compile_fail
/// fn forge(clip: clearframe::records::CatalogClip, basis: clearframe::records::Basis)
///     -> clearframe::consent::ConsentedClip {
///     clearframe::consent::ConsentedClip { clip, basis }
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentedClip {
    clip: CatalogClip,
    basis: Basis,
}

impl ConsentedClip {
    /// The clip as checked.
    pub fn clip(&self) -> &CatalogClip {
        &self.clip
    }
    /// The consent or sharing event that allowed it.
    pub fn basis(&self) -> &Basis {
        &self.basis
    }
}

/// Why a recorded selection cannot be re-admitted.
#[derive(Debug, thiserror::Error)]
pub enum ReadmitError {
    #[error(
        "it changed after `clearframe select` wrote it (blake3 {actual}, the record says {recorded}); rerun select"
    )]
    Changed { actual: String, recorded: String },
    #[error("line {line} is not a selection line: {source}")]
    Line {
        line: u64,
        source: serde_json::Error,
    },
    #[error("it admits {admitted} clips, the record says {recorded} were included")]
    Count { admitted: u64, recorded: u64 },
}

/// Re-admits the includes of a selection that `select` recorded (for `run`, which selects first,
/// and the stages that resume from `selection.jsonl`): the bytes must have the blake3 the select
/// record holds, every line must parse, and the complete includes must number what the record
/// says. Besides the consent gate itself, this is the only way to a [`ConsentedClip`]. Anything
/// but a complete include is skipped: fail closed.
pub(crate) fn readmit_selection(
    bytes: &[u8],
    recorded_blake3: &str,
    recorded_included: u64,
) -> Result<Vec<ConsentedClip>, ReadmitError> {
    let actual = crate::hashing::hash_bytes(bytes);
    if actual != recorded_blake3 {
        return Err(ReadmitError::Changed {
            actual,
            recorded: recorded_blake3.to_owned(),
        });
    }
    let mut included = Vec::new();
    for (line, text) in split_lines(bytes) {
        let parsed: SelectionLine =
            serde_json::from_slice(text).map_err(|source| ReadmitError::Line { line, source })?;
        included.extend(readmit_line(&parsed));
    }
    if included.len() as u64 != recorded_included {
        return Err(ReadmitError::Count {
            admitted: included.len() as u64,
            recorded: recorded_included,
        });
    }
    Ok(included)
}

fn readmit_line(line: &SelectionLine) -> Option<ConsentedClip> {
    use crate::records::Decision;
    if line.decision != Decision::Include || !line.reasons.is_empty() {
        return None;
    }
    let (clip, basis) = (line.clip.clone()?, line.basis.clone()?);
    if line.video_id.as_deref() != Some(clip.video_id.as_str()) || clip.check().is_err() {
        return None;
    }
    Some(ConsentedClip { clip, basis })
}
