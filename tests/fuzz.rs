//! Fuzzing the consent gate on stable Rust (proptest): ledgers and catalogs are generated, then
//! mutated byte by byte (flips, deletions, insertions, duplicated, swapped and cut lines). The
//! parsers must never panic, and whenever a mutated ledger is accepted, the selection must never
//! include a clip that an independent oracle excludes. The oracle is a second, small
//! implementation of the README's consent rules over plain JSON values (it shares no code with
//! `clearframe::consent`); where the README leaves room, it errs towards inclusion, so that any
//! clip the gate includes and the oracle does not is a real breach.
//!
//! Bounded here (`CLEARFRAME_FUZZ_CASES`, default 1500 per property); `scripts/fuzz.sh` runs
//! longer.

use clearframe::consent::{Ledger, Verdict};
use clearframe::records::BasisKind;
use clearframe::select::{parse_catalog_line, select};
use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("CLEARFRAME_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn day(d: i64) -> String {
    format!("2026-01-{:02}T00:00:00Z", d + 1)
}

/// One generated event, as a JSON object (ids are filled in by [`ledger_text`]).
fn event() -> impl Strategy<Value = Value> {
    let d = 0i64..12;
    let owner = (0u8..3).prop_map(|o| format!("acct-{o}"));
    let video = (0u8..4).prop_map(|v| format!("v-{v}"));
    prop_oneof![
        4 => (
            owner.clone(),
            d.clone(),
            prop::sample::subsequence(vec!["ml_training", "analytics", "support"], 0..=3),
            prop_oneof![Just(vec!["*".to_owned()]), prop::collection::vec((0u8..3).prop_map(|x| format!("dev-{x}")), 0..3)],
            prop::option::of(prop::sample::subsequence(vec!["outdoor", "indoor"], 0..=2)),
            prop::option::of(0i64..12),
            prop::option::of(0i64..12),
            prop::option::of(0i64..14),
        )
            .prop_map(|(owner, at, scope, devices, placements, from, until, expires)| {
                let mut g = json!({"type": "consent.granted", "owner_id": owner, "at": day(at),
                    "scope": scope, "devices": devices,
                    "document": {"uri": "d.pdf", "blake3": "0".repeat(64)}});
                if let Some(p) = placements { g["placements"] = json!(p); }
                if let Some(f) = from { g["captured_from"] = json!(day(f)); }
                if let Some(u) = until { g["captured_until"] = json!(day(u)); }
                if let Some(e) = expires { g["expires_at"] = json!(day(e)); }
                g
            }),
        2 => (owner.clone(), d.clone(), prop::option::of(0usize..8)).prop_map(|(owner, at, target)| {
            // `target`: the k-th grant of the ledger, resolved in `ledger_text`.
            json!({"type": "consent.revoked", "owner_id": owner, "at": day(at), "target": target})
        }),
        2 => (owner.clone(), video.clone(), d.clone(), prop_oneof![Just("public"), Just("private")])
            .prop_map(|(owner, video, at, vis)| json!({"type": "neighbors.shared", "owner_id": owner, "video_id": video, "at": day(at), "visibility": vis})),
        1 => (owner.clone(), video.clone(), d.clone())
            .prop_map(|(owner, video, at)| json!({"type": "neighbors.unshared", "owner_id": owner, "video_id": video, "at": day(at)})),
        1 => (owner.clone(), video, d.clone())
            .prop_map(|(owner, video, at)| json!({"type": "video.deleted", "owner_id": owner, "video_id": video, "at": day(at)})),
        1 => (owner, d).prop_map(|(owner, at)| json!({"type": "account.deleted", "owner_id": owner, "at": day(at)})),
    ]
}

/// The ledger's JSON Lines: event ids `e<i>`; a revocation's `target` becomes the `grant_id` of
/// a grant of the same owner (or none: a blanket revocation).
fn ledger_text(events: &[Value]) -> String {
    let mut grants: Vec<(String, String)> = Vec::new();
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        let mut e = e.clone();
        let id = format!("e{i}");
        e["event_id"] = json!(id);
        if e["type"] == "consent.granted" {
            grants.push((id.clone(), e["owner_id"].as_str().unwrap().to_owned()));
        }
        if e["type"] == "consent.revoked" {
            let target = e.as_object_mut().unwrap().remove("target").unwrap();
            let own: Vec<&String> = grants
                .iter()
                .filter(|g| g.1 == e["owner_id"])
                .map(|g| &g.0)
                .collect();
            if let (Some(k), false) = (target.as_u64(), own.is_empty()) {
                e["grant_id"] = json!(own[k as usize % own.len()]);
            }
        }
        out.push_str(&e.to_string());
        out.push('\n');
    }
    out
}

/// A byte-level mutation of a text.
#[derive(Debug, Clone)]
enum Mutation {
    /// The p-th decimal digit of the text becomes another digit (keeps the JSON valid: moves
    /// instants, renames owners, devices, videos and event ids).
    Digit(usize, u8),
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, u8),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        6 => (pos, 0u8..10).prop_map(|(p, d)| Mutation::Digit(p, d)),
        4 => (pos, any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        2 => (pos, 1usize..12).prop_map(|(p, n)| Mutation::Delete(p, n)),
        2 => (pos, prop_oneof![any::<u8>(), Just(b'"'), Just(b','), Just(b'}'), Just(b'0'), Just(b'9'), Just(b'\n')])
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => pos.prop_map(Mutation::DuplicateLine),
        1 => (pos, pos).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => pos.prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, muts: &[Mutation]) -> Vec<u8> {
    let lines_of =
        |b: &[u8]| -> Vec<Vec<u8>> { b.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect() };
    let mut b = text.as_bytes().to_vec();
    for m in muts {
        if b.is_empty() && !matches!(m, Mutation::Insert(..)) {
            continue;
        }
        match *m {
            Mutation::Digit(p, d) => {
                let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    b[digits[p % digits.len()]] = b'0' + d;
                }
            }
            Mutation::Flip(p, x) => {
                let i = p % b.len();
                b[i] ^= x | 1;
            }
            Mutation::Delete(p, k) => {
                let i = p % b.len();
                let j = (i + k).min(b.len());
                b.drain(i..j);
            }
            Mutation::Insert(p, x) => {
                let i = p % (b.len() + 1);
                b.insert(i, x);
            }
            Mutation::DuplicateLine(p) => {
                let mut lines = lines_of(&b);
                let i = p % lines.len();
                let l = lines[i].clone();
                lines.insert(i, l);
                b = lines.join(&b'\n');
            }
            Mutation::SwapLines(p, q) => {
                let mut lines = lines_of(&b);
                let (i, j) = (p % lines.len(), q % lines.len());
                lines.swap(i, j);
                b = lines.join(&b'\n');
            }
            Mutation::Truncate(p) => b.truncate(p % b.len()),
        }
    }
    b
}

/// A clip of the universe the properties decide.
struct Clip {
    video: String,
    owner: String,
    device: String,
    placement: &'static str,
    captured: Timestamp,
    json: Value,
}

fn clips() -> Vec<Clip> {
    let mut v = Vec::new();
    for video in 0..4u8 {
        for owner in 0..3u8 {
            for (device, placement) in [(0u8, "outdoor"), (1, "indoor"), (2, "outdoor")] {
                let json = json!({"video_id": format!("v-{video}"), "uri": "x.mp4",
                    "owner_id": format!("acct-{owner}"), "device_id": format!("dev-{device}"),
                    "placement": placement, "captured_at": day(3)});
                v.push(Clip {
                    video: format!("v-{video}"),
                    owner: format!("acct-{owner}"),
                    device: format!("dev-{device}"),
                    placement,
                    captured: day(3).parse().unwrap(),
                    json,
                });
            }
        }
    }
    v
}

/// The README's rules, written again from its text, over the ledger's JSON values. Returns the
/// kinds of basis it would accept for `clip` (empty: excluded).
fn oracle(events: &[Value], clip: &Clip, as_of: Timestamp) -> Vec<BasisKind> {
    let at = |e: &Value| -> Option<Timestamp> { e["at"].as_str()?.parse().ok() };
    let ts = |v: &Value| -> Option<Timestamp> { v.as_str()?.parse().ok() };
    // Only events with `at <= as_of` count. (An event whose time the oracle cannot read counts,
    // erring towards inclusion where it could grant and towards exclusion where it could erase.)
    let counts: Vec<&Value> = events
        .iter()
        .filter(|e| at(e).is_none_or(|t| t <= as_of))
        .collect();
    let is = |e: &Value, ty: &str| e["type"] == ty;
    // Erased: a video.deleted for the clip, an account.deleted for its owner.
    if counts.iter().any(|e| {
        (is(e, "video.deleted") && e["video_id"] == clip.video.as_str())
            || (is(e, "account.deleted") && e["owner_id"] == clip.owner.as_str())
    }) {
        return vec![];
    }
    let mut kinds = Vec::new();
    // Consent: a grant by the owner that covers the clip and is not revoked.
    let covers = |g: &Value| -> bool {
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let scope = strs(&g["scope"]);
        let devices = strs(&g["devices"]);
        let placements = if g.get("placements").is_some() {
            strs(&g["placements"])
        } else {
            vec!["outdoor".to_owned()]
        };
        let within = |bound: &str, ok: fn(Timestamp, Timestamp) -> bool| match g.get(bound) {
            None => true,
            Some(v) => ts(v).is_none_or(|b| ok(clip.captured, b)),
        };
        scope.iter().any(|s| s == "ml_training")
            && (devices.iter().any(|d| d == "*") || devices.contains(&clip.device))
            && placements.iter().any(|p| p == clip.placement)
            && within("captured_from", |c, b| b <= c)
            && within("captured_until", |c, b| c <= b)
            && match g.get("expires_at") {
                None => true,
                Some(v) => ts(v).is_none_or(|x| x > as_of),
            }
    };
    let revoked = |g: &Value| -> bool {
        counts.iter().any(|r| {
            is(r, "consent.revoked")
                && r["owner_id"] == g["owner_id"]
                && match r.get("grant_id") {
                    Some(id) => *id == g["event_id"],
                    // A blanket revocation: every grant at or before it (ties: it wins).
                    None => match (at(g), at(r)) {
                        (Some(tg), Some(tr)) => tg <= tr,
                        _ => false,
                    },
                }
        })
    };
    if counts.iter().any(|g| {
        is(g, "consent.granted") && g["owner_id"] == clip.owner.as_str() && covers(g) && !revoked(g)
    }) {
        kinds.push(BasisKind::Consent);
    }
    // Neighbors: the clip's latest sharing event is a public share by its owner.
    let sharing: Vec<&&Value> = counts
        .iter()
        .filter(|e| {
            (is(e, "neighbors.shared") || is(e, "neighbors.unshared"))
                && e["video_id"] == clip.video.as_str()
        })
        .collect();
    if let Some(latest) = sharing.iter().filter_map(|e| at(e)).max() {
        let last: Vec<&&&Value> = sharing.iter().filter(|e| at(e) == Some(latest)).collect();
        let public_by_owner = |e: &Value| {
            is(e, "neighbors.shared")
                && e["visibility"] == "public"
                && e["owner_id"] == clip.owner.as_str()
        };
        // "Ties go against inclusion": every sharing event at that instant must be one.
        if last.iter().all(|e| public_by_owner(e)) {
            kinds.push(BasisKind::Neighbors);
        }
    }
    kinds
}

fn values(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| serde_json::from_slice(l).expect("an accepted ledger's lines are JSON"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, .. ProptestConfig::default() })]

    /// The gate never includes what the oracle excludes, on any mutated ledger it accepts (and
    /// on the unmutated ones, where it must also agree on every included clip's basis kind).
    #[test]
    fn a_mutated_ledger_never_lets_in_a_clip_the_rules_exclude(
        events in prop::collection::vec(event(), 0..16),
        muts in prop::collection::vec(mutation(), 0..4),
        as_of in 0i64..14,
    ) {
        let text = ledger_text(&events);
        let bytes = mutate(&text, &muts);
        let Ok(ledger) = Ledger::parse(&bytes, "fuzz.jsonl") else {
            return Ok(()); // refused: the run stops, nothing is included
        };
        let evs = values(&bytes);
        let as_of: Timestamp = day(as_of).parse().unwrap();
        let index = ledger.index(as_of);
        for clip in clips() {
            let c = parse_catalog_line(clip.json.to_string().as_bytes()).unwrap();
            if let Verdict::Include(basis) = index.decide(&c) {
                let allowed = oracle(&evs, &clip, as_of);
                prop_assert!(
                    allowed.contains(&basis.kind),
                    "{} by {} included on {:?} ({}), which the rules do not allow (oracle: {:?})\nledger:\n{}",
                    clip.video, clip.owner, basis.kind, basis.event_id, allowed,
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    /// On valid ledgers the gate and the oracle agree both ways: nothing the rules allow is
    /// left out either.
    #[test]
    fn on_valid_ledgers_the_gate_and_the_oracle_agree(
        events in prop::collection::vec(event(), 0..16),
        as_of in 0i64..14,
    ) {
        let text = ledger_text(&events);
        let ledger = Ledger::parse(text.as_bytes(), "fuzz.jsonl").expect("generated ledgers are valid");
        let evs = values(text.as_bytes());
        let as_of: Timestamp = day(as_of).parse().unwrap();
        let index = ledger.index(as_of);
        for clip in clips() {
            let c = parse_catalog_line(clip.json.to_string().as_bytes()).unwrap();
            let included = matches!(index.decide(&c), Verdict::Include(_));
            let allowed = !oracle(&evs, &clip, as_of).is_empty();
            prop_assert_eq!(included, allowed, "{} by {}\nledger:\n{}", clip.video, clip.owner, text);
        }
    }

    /// Mutated catalogs: no panic, and a line the parser accepts decides like the same clip
    /// written cleanly.
    #[test]
    fn mutated_catalogs_never_panic_and_excluded_lines_stay_excluded(
        events in prop::collection::vec(event(), 0..10),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let catalog: String = clips().iter().map(|c| format!("{}\n", c.json)).collect();
        let bytes = mutate(&catalog, &muts);
        let text = ledger_text(&events);
        let ledger = Ledger::parse(text.as_bytes(), "fuzz.jsonl").expect("generated ledgers are valid");
        let index = ledger.index(day(13).parse().unwrap());
        let selection = select(&bytes, &index);
        let evs = values(text.as_bytes());
        for line in &selection.lines {
            if let Some(basis) = &line.basis {
                let clip = line.clip.as_ref().expect("an included line has its clip");
                let c = Clip {
                    video: clip.video_id.clone(),
                    owner: clip.owner_id.clone(),
                    device: clip.device_id.clone(),
                    placement: clip.placement.as_str(),
                    captured: clip.captured_at,
                    json: Value::Null,
                };
                let allowed = oracle(&evs, &c, day(13).parse().unwrap());
                prop_assert!(allowed.contains(&basis.kind), "line {}: {:?} not allowed ({allowed:?})", line.line, clip);
            }
        }
    }
}

/// The mutation fuzzing is not vacuous: with a fixed seed, a good share of the mutated ledgers
/// (mutations that change bytes) are still accepted and then decide clips, so the oracle check
/// above runs on real, altered ledgers. Prints the counts (`--nocapture`).
#[test]
fn mutated_ledgers_are_often_accepted_and_then_decide_clips() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        prop::collection::vec(event(), 1..16),
        prop::collection::vec(mutation(), 1..4),
    );
    let (mut changed, mut accepted, mut included) = (0u64, 0u64, 0u64);
    let runs = u64::from(cases()).max(1500);
    for _ in 0..runs {
        let (events, muts) = strategy.new_tree(&mut runner).unwrap().current();
        let text = ledger_text(&events);
        let bytes = mutate(&text, &muts);
        if bytes == text.as_bytes() {
            continue;
        }
        changed += 1;
        if let Ok(ledger) = Ledger::parse(&bytes, "fuzz.jsonl") {
            accepted += 1;
            let index = ledger.index(day(13).parse().unwrap());
            included += clips()
                .iter()
                .filter(|c| {
                    let c = parse_catalog_line(c.json.to_string().as_bytes()).unwrap();
                    matches!(index.decide(&c), Verdict::Include(_))
                })
                .count() as u64;
        }
    }
    println!(
        "fuzz: {runs} mutated ledgers, {changed} with other bytes, {accepted} of those accepted, {included} clip inclusions checked against the oracle"
    );
    assert!(
        accepted * 20 > changed,
        "only {accepted} of {changed} accepted"
    );
    assert!(included > 0);
}
