//! The consent gate: every selection rule, each tie, each invalid catalog and ledger line, and
//! the `select` command end to end on the demo fixtures.

use clearframe::consent::{Ledger, LedgerError, Verdict};
use clearframe::records::{BasisKind, Decision, ReasonCode, SelectionLine};
use clearframe::select::{parse_catalog_line, select};
use jiff::Timestamp;
use serde_json::json;

use crate::common::{clearframe, fixture};

const AS_OF: &str = "2026-11-01T00:00:00Z";

/// The codes of a `NoBasis` exclusion of a clip with at most one grant of its owner: one reason
/// for the grants (or their absence), one for the sharing state.
const NB_NB: &[ReasonCode] = &[ReasonCode::NoBasis, ReasonCode::NoBasis];

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn doc() -> serde_json::Value {
    json!({"uri": "consent-docs/a.pdf", "blake3": "ab".repeat(32)})
}

fn grant(id: &str, owner: &str, at: &str) -> serde_json::Value {
    json!({"event_id": id, "type": "consent.granted", "owner_id": owner, "at": at,
           "scope": ["ml_training"], "devices": ["dev-1"], "document": doc()})
}

fn with(mut v: serde_json::Value, key: &str, val: serde_json::Value) -> serde_json::Value {
    v[key] = val;
    v
}

fn clip() -> serde_json::Value {
    json!({"video_id": "v-1", "uri": "videos/v-1.mp4", "owner_id": "acct-1", "device_id": "dev-1",
           "placement": "outdoor", "captured_at": "2026-10-01T17:04:05Z"})
}

fn ledger_text(events: &[serde_json::Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// Decides `clip` against `events` as of `as_of`.
fn decide_at(events: &[serde_json::Value], clip: &serde_json::Value, as_of: &str) -> Verdict {
    let ledger =
        Ledger::parse(ledger_text(events).as_bytes(), "test-ledger").expect("valid ledger");
    let clip = parse_catalog_line(clip.to_string().as_bytes()).expect("valid clip");
    ledger.index(ts(as_of)).decide(&clip)
}

fn decide(events: &[serde_json::Value], clip: &serde_json::Value) -> Verdict {
    decide_at(events, clip, AS_OF)
}

fn included_by(v: &Verdict) -> Option<(BasisKind, String)> {
    match v {
        Verdict::Include(b) => Some((b.kind, b.event_id.clone())),
        Verdict::Exclude(_) => None,
    }
}

fn excluded_with(v: &Verdict) -> Vec<ReasonCode> {
    match v {
        Verdict::Include(b) => panic!("expected an exclusion, got include by {b:?}"),
        Verdict::Exclude(r) => r.iter().map(|r| r.0).collect(),
    }
}

/// Asserts that `v` excludes the clip with exactly the reason codes `codes`, and that one of the
/// reasons' texts contains `fragment`: the clip is out for the rule under test, not another one.
#[track_caller]
fn assert_excluded(v: &Verdict, codes: &[ReasonCode], fragment: &str) {
    let reasons = match v {
        Verdict::Include(b) => panic!("expected an exclusion, got include by {b:?}"),
        Verdict::Exclude(r) => r,
    };
    let got: Vec<ReasonCode> = reasons.iter().map(|r| r.0).collect();
    assert_eq!(got, codes, "reason codes; reasons: {reasons:#?}");
    assert!(
        reasons.iter().any(|(_, text)| text.contains(fragment)),
        "no reason contains {fragment:?}; reasons: {reasons:#?}"
    );
}

#[test]
fn a_matching_grant_includes_with_its_event_hash() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z");
    let v = decide(std::slice::from_ref(&g), &clip());
    assert_eq!(included_by(&v), Some((BasisKind::Consent, "e-1".into())));
    let Verdict::Include(b) = v else {
        unreachable!()
    };
    assert_eq!(
        b.event_blake3,
        blake3::hash(g.to_string().as_bytes()).to_hex().to_string()
    );
    assert_eq!(b.document_blake3.as_deref(), Some("ab".repeat(32).as_str()));
}

#[test]
fn no_event_means_no_clip() {
    let v = decide(&[], &clip());
    assert_eq!(
        excluded_with(&v),
        vec![ReasonCode::NoBasis, ReasonCode::NoBasis]
    );
    assert_excluded(&v, NB_NB, r#"no consent grant by owner "acct-1""#);
    assert_excluded(&v, NB_NB, "not shared on Neighbors");
}

#[test]
fn grant_must_be_for_ml_training() {
    let g = with(
        grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
        "scope",
        json!(["support", "ml_eval"]),
    );
    assert_excluded(
        &decide(&[g], &clip()),
        NB_NB,
        "its scope does not include ml_training",
    );
}

#[test]
fn grant_of_another_owner_does_not_count() {
    assert_excluded(
        &decide(&[grant("e-1", "acct-2", "2026-01-05T10:00:00Z")], &clip()),
        NB_NB,
        r#"no consent grant by owner "acct-1""#,
    );
}

#[test]
fn devices_list_and_wildcard() {
    let other = with(
        grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
        "devices",
        json!(["dev-2"]),
    );
    assert_excluded(
        &decide(&[other], &clip()),
        NB_NB,
        r#"it does not cover device "dev-1""#,
    );
    let star = with(
        grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
        "devices",
        json!(["*"]),
    );
    assert!(included_by(&decide(&[star], &clip())).is_some());
}

#[test]
fn placements_default_to_outdoor_only() {
    let indoor = with(clip(), "placement", json!("indoor"));
    assert_excluded(
        &decide(&[grant("e-1", "acct-1", "2026-01-05T10:00:00Z")], &indoor),
        NB_NB,
        "it does not cover indoor cameras",
    );
    let g = with(
        grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
        "placements",
        json!(["indoor"]),
    );
    assert!(included_by(&decide(std::slice::from_ref(&g), &indoor)).is_some());
    assert_excluded(
        &decide(&[g], &clip()),
        NB_NB,
        "it does not cover outdoor cameras",
    );
}

#[test]
fn capture_window_is_inclusive() {
    let at = "2026-10-01T17:04:05Z";
    let g = |from: &str, until: &str| {
        let g = with(
            grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
            "captured_from",
            json!(from),
        );
        with(g, "captured_until", json!(until))
    };
    assert!(
        included_by(&decide(&[g(at, at)], &clip())).is_some(),
        "both bounds equal to captured_at"
    );
    assert_excluded(
        &decide(
            &[g("2026-10-01T17:04:06Z", "2026-12-01T00:00:00Z")],
            &clip(),
        ),
        NB_NB,
        "it covers clips captured from 2026-10-01T17:04:06Z",
    );
    assert_excluded(
        &decide(
            &[g("2026-01-01T00:00:00Z", "2026-10-01T17:04:04Z")],
            &clip(),
        ),
        NB_NB,
        "it covers clips captured until 2026-10-01T17:04:04Z",
    );
    // Offsets are instants: 19:04:05+02:00 is 17:04:05Z.
    assert!(included_by(&decide(&[g("2026-10-01T19:04:05+02:00", at)], &clip())).is_some());
}

#[test]
fn expiry_must_be_strictly_after_as_of() {
    let g = |exp: &str| {
        with(
            grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
            "expires_at",
            json!(exp),
        )
    };
    assert_excluded(
        &decide(&[g(AS_OF)], &clip()),
        NB_NB,
        "it expired at 2026-11-01T00:00:00Z",
    );
    assert_excluded(
        &decide(&[g("2026-10-31T00:00:00Z")], &clip()),
        NB_NB,
        "it expired at 2026-10-31T00:00:00Z",
    );
    assert!(included_by(&decide(&[g("2026-11-01T00:00:01Z")], &clip())).is_some());
}

#[test]
fn only_events_at_or_before_as_of_count() {
    assert!(
        included_by(&decide(&[grant("e-1", "acct-1", AS_OF)], &clip())).is_some(),
        "at == as_of counts"
    );
    assert_excluded(
        &decide(&[grant("e-1", "acct-1", "2026-11-01T00:00:01Z")], &clip()),
        NB_NB,
        r#"no consent grant by owner "acct-1" at or before 2026-11-01T00:00:00Z"#,
    );
    let rev = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": "2026-12-01T00:00:00Z", "grant_id": "e-1"});
    let events = [grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), rev];
    assert!(
        included_by(&decide(&events, &clip())).is_some(),
        "a future revocation does not count yet"
    );
    assert_excluded(
        &decide_at(&events, &clip(), "2026-12-01T00:00:00Z"),
        NB_NB,
        r#"it was revoked by consent.revoked "r""#,
    );
}

#[test]
fn targeted_revocation_revokes_that_grant_only() {
    let rev = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": "2026-06-01T00:00:00Z", "grant_id": "e-1"});
    let g2 = grant("e-2", "acct-1", "2026-02-01T00:00:00Z");
    assert_excluded(
        &decide(
            &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), rev.clone()],
            &clip(),
        ),
        NB_NB,
        r#"it was revoked by consent.revoked "r""#,
    );
    let v = decide(
        &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), g2, rev],
        &clip(),
    );
    assert_eq!(included_by(&v), Some((BasisKind::Consent, "e-2".into())));
}

#[test]
fn blanket_revocation_revokes_earlier_and_same_instant_grants_not_later_ones() {
    let rev = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": "2026-06-01T00:00:00Z"});
    assert_excluded(
        &decide(
            &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), rev.clone()],
            &clip(),
        ),
        NB_NB,
        r#"it was revoked by consent.revoked "r""#,
    );
    // Tie: a grant at the same instant as the revocation is revoked.
    assert_excluded(
        &decide(
            &[grant("e-1", "acct-1", "2026-06-01T00:00:00Z"), rev.clone()],
            &clip(),
        ),
        NB_NB,
        r#"it was revoked by consent.revoked "r""#,
    );
    let later = grant("e-2", "acct-1", "2026-06-01T00:00:01Z");
    assert_eq!(
        included_by(&decide(&[rev, later], &clip())),
        Some((BasisKind::Consent, "e-2".into()))
    );
}

#[test]
fn blanket_revocation_of_another_owner_does_nothing() {
    let rev = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-9", "at": "2026-06-01T00:00:00Z"});
    assert!(
        included_by(&decide(
            &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), rev],
            &clip()
        ))
        .is_some()
    );
}

fn share(id: &str, owner: &str, video: &str, at: &str, vis: &str) -> serde_json::Value {
    json!({"event_id": id, "type": "neighbors.shared", "owner_id": owner, "video_id": video, "at": at, "visibility": vis})
}

fn unshare(id: &str, owner: &str, video: &str, at: &str) -> serde_json::Value {
    json!({"event_id": id, "type": "neighbors.unshared", "owner_id": owner, "video_id": video, "at": at})
}

#[test]
fn public_share_by_the_owner_is_a_basis() {
    let v = decide(
        &[share(
            "s",
            "acct-1",
            "v-1",
            "2026-10-02T00:00:00Z",
            "public",
        )],
        &clip(),
    );
    assert_eq!(included_by(&v), Some((BasisKind::Neighbors, "s".into())));
}

#[test]
fn share_must_be_public_by_the_owner_for_that_clip() {
    assert_excluded(
        &decide(
            &[share(
                "s",
                "acct-1",
                "v-1",
                "2026-10-02T00:00:00Z",
                "neighbors",
            )],
            &clip(),
        ),
        NB_NB,
        r#"not publicly shared: its latest sharing event is neighbors.shared "s""#,
    );
    assert_excluded(
        &decide(
            &[share(
                "s",
                "acct-2",
                "v-1",
                "2026-10-02T00:00:00Z",
                "public",
            )],
            &clip(),
        ),
        NB_NB,
        r#"shared publicly by "acct-2", who is not the clip's owner"#,
    );
    assert_excluded(
        &decide(
            &[share(
                "s",
                "acct-1",
                "v-2",
                "2026-10-02T00:00:00Z",
                "public",
            )],
            &clip(),
        ),
        NB_NB,
        "not shared on Neighbors",
    );
}

#[test]
fn latest_sharing_event_wins_whatever_the_file_order() {
    let s = share("s", "acct-1", "v-1", "2026-10-02T00:00:00Z", "public");
    let u = unshare("u", "acct-1", "v-1", "2026-10-03T00:00:00Z");
    let unshared = r#"not publicly shared: its latest sharing event is neighbors.unshared "u""#;
    assert_excluded(&decide(&[s.clone(), u.clone()], &clip()), NB_NB, unshared);
    assert_excluded(&decide(&[u.clone(), s.clone()], &clip()), NB_NB, unshared);
    let s2 = share("s2", "acct-1", "v-1", "2026-10-04T00:00:00Z", "public");
    assert_eq!(
        included_by(&decide(&[s2.clone(), u.clone(), s.clone()], &clip())),
        Some((BasisKind::Neighbors, "s2".into()))
    );
    // Made private again later: out.
    let p = share("p", "acct-1", "v-1", "2026-10-05T00:00:00Z", "private");
    assert_excluded(
        &decide(&[s, u, s2, p], &clip()),
        NB_NB,
        r#"not publicly shared: its latest sharing event is neighbors.shared "p""#,
    );
}

#[test]
fn unshare_at_the_same_instant_as_share_wins() {
    let at = "2026-10-02T00:00:00Z";
    assert_excluded(
        &decide(
            &[
                share("s", "acct-1", "v-1", at, "public"),
                unshare("u", "acct-1", "v-1", at),
            ],
            &clip(),
        ),
        NB_NB,
        "not publicly shared: its latest sharing event is",
    );
    assert_excluded(
        &decide(
            &[
                unshare("u", "acct-1", "v-1", at),
                share("s", "acct-1", "v-1", at, "public"),
            ],
            &clip(),
        ),
        NB_NB,
        "not publicly shared: its latest sharing event is",
    );
    assert_excluded(
        &decide(
            &[
                share("s", "acct-1", "v-1", at, "public"),
                share("p", "acct-1", "v-1", at, "private"),
            ],
            &clip(),
        ),
        NB_NB,
        "not publicly shared: its latest sharing event is",
    );
}

#[test]
fn revocation_at_the_same_instant_as_grant_wins() {
    let at = "2026-05-05T05:05:05Z";
    let rev = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": at, "grant_id": "e-1"});
    let revoked = r#"it was revoked by consent.revoked "r""#;
    assert_excluded(
        &decide(&[rev.clone(), grant("e-1", "acct-1", at)], &clip()),
        NB_NB,
        revoked,
    );
    assert_excluded(
        &decide(&[grant("e-1", "acct-1", at), rev], &clip()),
        NB_NB,
        revoked,
    );
}

#[test]
fn erasure_beats_every_basis() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z");
    let s = share("s", "acct-1", "v-1", "2026-10-02T00:00:00Z", "public");
    let vd = json!({"event_id": "d", "type": "video.deleted", "owner_id": "acct-1", "video_id": "v-1", "at": "2026-10-10T00:00:00Z"});
    let ad = json!({"event_id": "a", "type": "account.deleted", "owner_id": "acct-1", "at": "2026-10-10T00:00:00Z"});
    assert_excluded(
        &decide(&[g.clone(), s.clone(), vd.clone()], &clip()),
        &[ReasonCode::VideoDeleted],
        r#"clip erased by video.deleted "d""#,
    );
    assert_excluded(
        &decide(&[g.clone(), s.clone(), ad.clone()], &clip()),
        &[ReasonCode::AccountDeleted],
        r#"owner "acct-1" erased by account.deleted "a""#,
    );
    // A grant after the erasure does not bring the clip back.
    let later = grant("e-2", "acct-1", "2026-10-20T00:00:00Z");
    assert_excluded(
        &decide(&[g.clone(), vd.clone(), later], &clip()),
        &[ReasonCode::VideoDeleted],
        r#"clip erased by video.deleted "d""#,
    );
    // An erasure after as_of does not count yet.
    assert!(included_by(&decide_at(&[g, vd], &clip(), "2026-10-09T00:00:00Z")).is_some());
    // Deleting another clip or account does nothing to this one.
    let other = json!({"event_id": "o", "type": "video.deleted", "owner_id": "acct-1", "video_id": "v-2", "at": "2026-10-10T00:00:00Z"});
    assert!(
        included_by(&decide(
            &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z"), other],
            &clip()
        ))
        .is_some()
    );
}

fn select_lines(catalog: &str, events: &[serde_json::Value]) -> Vec<SelectionLine> {
    let ledger = Ledger::parse(ledger_text(events).as_bytes(), "test-ledger").unwrap();
    select(catalog.as_bytes(), &ledger.index(ts(AS_OF))).lines
}

#[test]
fn invalid_catalog_lines_are_excluded_with_a_reason_and_the_rest_go_on() {
    let good = clip().to_string();
    let cases: Vec<(String, &str)> = vec![
        ("{not json".to_string(), "bad JSON"),
        (
            json!({"video_id": "v-x", "uri": "a.mp4"}).to_string(),
            "missing field",
        ),
        (
            with(clip(), "video_id", json!("bad id!")).to_string(),
            "bad video_id",
        ),
        (
            with(clip(), "video_id", json!(".")).to_string(),
            "dot video_id",
        ),
        (
            with(clip(), "video_id", json!("..")).to_string(),
            "dotdot video_id",
        ),
        (
            with(clip(), "video_id", json!("x".repeat(129))).to_string(),
            "long video_id",
        ),
        (
            with(clip(), "uri", json!("../outside.mp4")).to_string(),
            "escaping uri",
        ),
        (
            with(clip(), "uri", json!("videos/../../outside.mp4")).to_string(),
            "escaping uri deep",
        ),
        (
            with(clip(), "uri", json!("/etc/passwd")).to_string(),
            "absolute uri",
        ),
        (
            with(clip(), "uri", json!("https://example.com/a.mp4")).to_string(),
            "other scheme",
        ),
        (
            with(clip(), "uri", json!("s3://bucket")).to_string(),
            "s3 without key",
        ),
        (
            with(clip(), "placement", json!("garage")).to_string(),
            "unknown placement",
        ),
        (
            with(clip(), "captured_at", json!("2026-10-01 17:04")).to_string(),
            "bad timestamp",
        ),
        (
            with(clip(), "captured_at", json!("2026-10-01T17:04:05")).to_string(),
            "timestamp without offset",
        ),
        (
            with(clip(), "captured_at", json!("2016-12-31T23:59:60Z")).to_string(),
            "leap second",
        ),
        (
            with(clip(), "captured_at", json!("2026-10-01T17:04:05Z[UTC]")).to_string(),
            "bracketed time zone",
        ),
        (
            with(clip(), "blake3", json!("abc")).to_string(),
            "bad blake3",
        ),
        (
            with(
                clip(),
                "privacy_zones",
                json!([[[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]]]),
            )
            .to_string(),
            "zone out of range",
        ),
        (
            with(clip(), "privacy_zones", json!([[[0.0, 0.0], [1.0, 0.0]]])).to_string(),
            "zone too small",
        ),
        (String::new(), "blank line"),
    ];
    for (i, (bad, what)) in cases.iter().enumerate() {
        let good2 = with(clip(), "video_id", json!(format!("ok-{i}"))).to_string();
        let catalog = format!("{bad}\n{good2}\n");
        let lines = select_lines(
            &catalog,
            &[with(
                grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
                "devices",
                json!(["*"]),
            )],
        );
        assert_eq!(lines.len(), 2, "{what}");
        assert_eq!(lines[0].decision, Decision::Exclude, "{what}");
        assert_eq!(
            lines[0].reason_codes,
            vec![ReasonCode::InvalidLine],
            "{what}: {:?}",
            lines[0].reasons
        );
        assert!(!lines[0].reasons[0].is_empty(), "{what}");
        assert_eq!(
            lines[1].decision,
            Decision::Include,
            "{what}: the next line goes on"
        );
    }
    let _ = good;
}

#[test]
fn s3_uris_and_nested_relative_uris_are_accepted() {
    for uri in [
        "s3://bucket/clips/v-1.mp4",
        "videos/2026/v-1.mp4",
        "./v-1.mp4",
    ] {
        assert!(
            parse_catalog_line(with(clip(), "uri", json!(uri)).to_string().as_bytes()).is_ok(),
            "{uri}"
        );
    }
}

#[test]
fn duplicate_video_id_excludes_every_copy() {
    let a = clip().to_string();
    let b = with(clip(), "device_id", json!("dev-2")).to_string();
    let c = with(clip(), "video_id", json!("v-2")).to_string();
    let lines = select_lines(
        &format!("{a}\n{c}\n{b}\n"),
        &[with(
            grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
            "devices",
            json!(["*"]),
        )],
    );
    assert_eq!(lines[0].reason_codes, vec![ReasonCode::DuplicateVideoId]);
    assert_eq!(lines[2].reason_codes, vec![ReasonCode::DuplicateVideoId]);
    assert_eq!(lines[1].decision, Decision::Include);
    // Also when the other copy is itself invalid.
    let bad = with(clip(), "placement", json!("garage")).to_string();
    let lines = select_lines(
        &format!("{a}\n{bad}\n"),
        &[grant("e-1", "acct-1", "2026-01-05T10:00:00Z")],
    );
    assert_eq!(lines[0].decision, Decision::Exclude);
    assert_eq!(lines[0].reason_codes, vec![ReasonCode::DuplicateVideoId]);
}

#[test]
fn an_end_to_end_encrypted_clip_is_excluded_whatever_the_consent_says() {
    let sealed = with(with(clip(), "video_id", json!("v-2")), "e2ee", json!(true));
    let plain = with(clip(), "e2ee", json!(false));
    let share = share("n-1", "acct-1", "v-2", "2026-02-01T00:00:00Z", "public");
    let grant = with(
        grant("e-1", "acct-1", "2026-01-05T10:00:00Z"),
        "devices",
        json!(["*"]),
    );
    let lines = select_lines(&format!("{plain}\n{sealed}\n"), &[grant, share]);
    assert_eq!(lines[0].decision, Decision::Include, "the control clip");
    assert_eq!(lines[1].decision, Decision::Exclude);
    assert_eq!(lines[1].reason_codes, vec![ReasonCode::EndToEndEncrypted]);
    assert!(lines[1].reasons[0].contains("end-to-end encrypted"));
    assert!(lines[1].basis.is_none() && lines[1].clip.is_none());
    // Anything but a boolean is not a catalog line (and so excluded too).
    let odd = with(clip(), "e2ee", json!("yes"));
    let lines = select_lines(&format!("{odd}\n"), &[]);
    assert_eq!(lines[0].reason_codes, vec![ReasonCode::InvalidLine]);
}

#[test]
fn unreadable_line_has_null_video_id_and_lines_are_numbered_from_one() {
    let lines = select_lines(&format!("garbage\n{}\n", clip()), &[]);
    assert_eq!(lines[0].video_id, None);
    assert_eq!((lines[0].line, lines[1].line), (1, 2));
    assert_eq!(lines[1].video_id.as_deref(), Some("v-1"));
}

fn ledger_error(text: &str) -> LedgerError {
    Ledger::parse(text.as_bytes(), "ledger.jsonl").expect_err("the ledger must be refused")
}

/// Regression: unknown fields were ignored, so a misspelt bound (`expire_at`, `captured_form`)
/// left a grant unbounded and its clips were included.
#[test]
fn an_unknown_ledger_field_stops_the_run_instead_of_widening_a_grant() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z");
    for (key, val) in [
        ("expire_at", json!("2026-01-06T00:00:00Z")),
        ("captured_form", json!("2026-01-01T00:00:00Z")),
        ("captured_untill", json!("2026-01-01T00:00:00Z")),
        ("Scope", json!(["ml_training"])),
    ] {
        let bad = with(g.clone(), key, val);
        let err = ledger_error(&format!("{bad}\n"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("ledger.jsonl:1:") && msg.contains(key),
            "{key}: {msg}"
        );
    }
    // Inside a nested object, and on every other event type, too.
    let mut nested = g.clone();
    nested["document"]["signed_by"] = json!("someone");
    assert!(
        ledger_error(&format!("{nested}\n"))
            .to_string()
            .contains("signed_by")
    );
    for extra in [
        r#"{"event_id":"e-2","type":"consent.revoked","owner_id":"acct-1","at":"2026-01-01T00:00:00Z","grant":"e-1"}"#,
        r#"{"event_id":"e-2","type":"neighbors.shared","owner_id":"acct-1","video_id":"v","at":"2026-01-01T00:00:00Z","visibility":"public","expires":"x"}"#,
        r#"{"event_id":"e-2","type":"video.deleted","owner_id":"acct-1","video_id":"v","at":"2026-01-01T00:00:00Z","note":1}"#,
        r#"{"event_id":"e-2","type":"account.deleted","owner_id":"acct-1","at":"2026-01-01T00:00:00Z","video_id":"v"}"#,
    ] {
        let msg = ledger_error(&format!("{g}\n{extra}\n")).to_string();
        assert!(msg.starts_with("ledger.jsonl:2:"), "{extra}: {msg}");
    }
}

/// Regression: an unknown catalog field (a misspelt `privacy_zone`) was ignored, so the clip was
/// decoded without its zone.
#[test]
fn an_unknown_catalog_field_makes_the_line_invalid() {
    let events = [grant("e-1", "acct-1", "2026-01-05T10:00:00Z")];
    let zone = json!([[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]]);
    let catalog = format!(
        "{}\n{}\n",
        with(clip(), "privacy_zone", zone),
        with(with(clip(), "video_id", json!("v-ok")), "e2e", json!(true))
    );
    let lines = select_lines(&catalog, &events);
    for l in &lines {
        assert_eq!(l.decision, Decision::Exclude, "{l:?}");
        assert_eq!(l.reason_codes, vec![ReasonCode::InvalidLine], "{l:?}");
    }
    assert!(
        lines[0].reasons[0].contains("privacy_zone"),
        "{:?}",
        lines[0]
    );
}

#[test]
fn invalid_ledger_lines_stop_with_file_and_line() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z").to_string();
    let mut no_doc = grant("e-2", "acct-1", "2026-01-05T10:00:00Z");
    no_doc.as_object_mut().unwrap().remove("document");
    let mut no_owner = grant("e-2", "acct-1", "2026-01-05T10:00:00Z");
    no_owner.as_object_mut().unwrap().remove("owner_id");
    let cases = [
        ("{\"event_id\": ", "bad JSON"),
        (
            r#"{"event_id":"e-2","type":"consent.maybe","owner_id":"acct-1","at":"2026-01-01T00:00:00Z"}"#,
            "unknown type",
        ),
        (&no_owner.to_string(), "missing field"),
        (&no_doc.to_string(), "grant without document"),
        (
            &with(
                grant("e-2", "acct-1", "2026-01-05T10:00:00Z"),
                "document",
                json!(null),
            )
            .to_string(),
            "null document",
        ),
        (
            &with(
                grant("e-2", "acct-1", "2026-01-05T10:00:00Z"),
                "at",
                json!("yesterday"),
            )
            .to_string(),
            "bad timestamp",
        ),
        (
            &with(
                grant("e-2", "acct-1", "2026-01-05T10:00:00Z"),
                "placements",
                json!(["garage"]),
            )
            .to_string(),
            "unknown placement",
        ),
        (
            r#"{"event_id":"e-2","type":"video.deleted","owner_id":"acct-1","at":"2026-01-01T00:00:00Z"}"#,
            "deletion without video_id",
        ),
        (&g, "duplicate event id"),
    ];
    for (bad, what) in cases {
        let err = ledger_error(&format!("{g}\n{bad}\n"));
        let msg = err.to_string();
        assert!(msg.starts_with("ledger.jsonl:2:"), "{what}: {msg}");
    }
}

#[test]
fn revocation_must_name_a_grant_of_the_same_owner() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z").to_string();
    let other_owner = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-2", "at": "2026-06-01T00:00:00Z", "grant_id": "e-1"});
    assert!(matches!(
        ledger_error(&format!("{g}\n{other_owner}\n")),
        LedgerError::BadRevocation { line: 2, .. }
    ));
    let unknown = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": "2026-06-01T00:00:00Z", "grant_id": "e-404"});
    assert!(matches!(
        ledger_error(&format!("{g}\n{unknown}\n")),
        LedgerError::BadRevocation { .. }
    ));
    let share = share("s", "acct-1", "v-1", "2026-01-01T00:00:00Z", "public");
    let not_grant = json!({"event_id": "r", "type": "consent.revoked", "owner_id": "acct-1", "at": "2026-06-01T00:00:00Z", "grant_id": "s"});
    assert!(matches!(
        ledger_error(&format!("{share}\n{not_grant}\n")),
        LedgerError::BadRevocation { .. }
    ));
}

#[test]
fn event_hash_is_of_the_line_as_read_without_its_terminator() {
    let g = grant("e-1", "acct-1", "2026-01-05T10:00:00Z").to_string();
    // CRLF line endings and blank lines: the hash is of the line's bytes only.
    let text = format!("\r\n{g}\r\n\n");
    let ledger = Ledger::parse(text.as_bytes(), "l").unwrap();
    let clip = parse_catalog_line(clip().to_string().as_bytes()).unwrap();
    let Verdict::Include(b) = ledger.index(ts(AS_OF)).decide(&clip) else {
        panic!()
    };
    assert_eq!(
        b.event_blake3,
        blake3::hash(g.as_bytes()).to_hex().to_string()
    );
    assert_eq!(b.event_line, 2);
}

#[test]
fn select_command_on_the_demo_writes_selection_and_record() {
    let out = tempfile::tempdir().unwrap();
    let assert = clearframe()
        .args(["select", "--as-of", AS_OF, "--out"])
        .arg(out.path())
        .arg("--catalog")
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(stdout.contains("selected 5 of 9 clips"), "{stdout}");
    let text = std::fs::read_to_string(out.path().join("selection.jsonl")).unwrap();
    let lines: Vec<SelectionLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decided: Vec<(&str, Decision)> = lines
        .iter()
        .map(|l| (l.video_id.as_deref().unwrap(), l.decision))
        .collect();
    use Decision::*;
    assert_eq!(
        decided,
        vec![
            ("v-car-front", Include),
            ("v-street-bikes", Include),
            ("v-bunny-yard", Include),
            ("v-living-room", Include),
            ("v-revoked", Exclude),
            ("v-unshared", Exclude),
            ("v-deleted", Exclude),
            ("v-corrupt", Include),
            ("v-private", Exclude),
        ]
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("select.json")).unwrap()).unwrap();
    assert_eq!(record["as_of"], AS_OF);
    let catalog_hash = blake3::hash(&std::fs::read(fixture("demo-catalog.jsonl")).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(record["catalog"]["blake3"], catalog_hash.as_str());
    assert_eq!(
        record["selection"]["blake3"],
        blake3::hash(text.as_bytes()).to_hex().to_string().as_str()
    );
}

#[test]
fn select_command_exits_1_when_catalog_lines_are_invalid_and_still_writes() {
    let out = tempfile::tempdir().unwrap();
    clearframe()
        .args(["select", "--as-of", AS_OF, "--out"])
        .arg(out.path())
        .arg("--catalog")
        .arg(fixture("bad/catalog-invalid-lines.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .assert()
        .code(1);
    let text = std::fs::read_to_string(out.path().join("selection.jsonl")).unwrap();
    let n = std::fs::read_to_string(fixture("bad/catalog-invalid-lines.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(text.lines().count(), n);
}

#[test]
fn a_bad_ledger_stops_everything_and_writes_nothing() {
    for bad in [
        "bad/ledger-unknown-type.jsonl",
        "bad/ledger-grant-without-document.jsonl",
        "bad/ledger-foreign-revocation.jsonl",
        "bad/ledger-unknown-field.jsonl",
        // jiff reads a leap second `:60` as `:59`: an instant that bounds consent must mean
        // what it says.
        "bad/ledger-leap-second.jsonl",
        "no-such-ledger.jsonl",
    ] {
        let out = tempfile::tempdir().unwrap();
        let assert = clearframe()
            .args(["select", "--as-of", AS_OF, "--out"])
            .arg(out.path().join("sel"))
            .arg("--catalog")
            .arg(fixture("demo-catalog.jsonl"))
            .arg("--ledger")
            .arg(fixture(bad))
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(
            stderr.contains(bad.rsplit('/').next().unwrap()),
            "{bad}: {stderr}"
        );
        assert!(
            !out.path().join("sel").exists(),
            "{bad}: nothing may be written"
        );
    }
}

/// Property tests: random ledgers over a small world of owners, devices, clips and instants.
mod properties {
    use super::*;
    use clearframe::records::{
        AccountEvent, ConsentDocument, Grant, LedgerEvent, Placement, Revocation, Share, VideoEvent,
    };
    use proptest::prelude::*;

    fn t(i: i64) -> Timestamp {
        Timestamp::from_second(1_767_225_600 + i * 86_400).unwrap() // 2026-01-01 + i days
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Grant {
            owner: u8,
            device: Option<u8>,
            indoor: bool,
            at: i64,
            from: Option<i64>,
            until: Option<i64>,
            expires: Option<i64>,
        },
        Revoke {
            owner: u8,
            at: i64,
            target: Option<usize>,
        },
        Share {
            owner: u8,
            video: u8,
            at: i64,
            public: bool,
        },
        Unshare {
            owner: u8,
            video: u8,
            at: i64,
        },
        DeleteVideo {
            owner: u8,
            video: u8,
            at: i64,
        },
        DeleteAccount {
            owner: u8,
            at: i64,
        },
    }

    fn ev() -> impl Strategy<Value = Ev> {
        let day = 0i64..12;
        prop_oneof![
            3 => (0u8..3, proptest::option::of(0u8..3), any::<bool>(), day.clone(), proptest::option::of(0i64..12), proptest::option::of(0i64..12), proptest::option::of(0i64..14))
                .prop_map(|(owner, device, indoor, at, from, until, expires)| Ev::Grant { owner, device, indoor, at, from, until, expires }),
            1 => (0u8..3, day.clone(), proptest::option::of(0usize..8)).prop_map(|(owner, at, target)| Ev::Revoke { owner, at, target }),
            2 => (0u8..3, 0u8..4, day.clone(), any::<bool>()).prop_map(|(owner, video, at, public)| Ev::Share { owner, video, at, public }),
            1 => (0u8..3, 0u8..4, day.clone()).prop_map(|(owner, video, at)| Ev::Unshare { owner, video, at }),
            1 => (0u8..3, 0u8..4, day.clone()).prop_map(|(owner, video, at)| Ev::DeleteVideo { owner, video, at }),
            1 => (0u8..3, day).prop_map(|(owner, at)| Ev::DeleteAccount { owner, at }),
        ]
    }

    /// Turns abstract events into ledger events; a targeted revocation points at an existing
    /// grant of the same owner, or becomes a blanket one.
    fn build(evs: &[Ev]) -> Vec<LedgerEvent> {
        let mut out = Vec::new();
        let mut grants: Vec<(String, u8)> = Vec::new();
        for (i, e) in evs.iter().enumerate() {
            let id = format!("e{i}");
            let owner = |o: &u8| format!("acct-{o}");
            out.push(match e {
                Ev::Grant {
                    owner: o,
                    device,
                    indoor,
                    at,
                    from,
                    until,
                    expires,
                } => {
                    grants.push((id.clone(), *o));
                    LedgerEvent::ConsentGranted(Box::new(Grant {
                        event_id: id,
                        owner_id: owner(o),
                        at: t(*at),
                        scope: vec!["ml_training".into()],
                        devices: vec![device.map_or("*".into(), |d| format!("dev-{d}"))],
                        placements: if *indoor {
                            vec![Placement::Outdoor, Placement::Indoor]
                        } else {
                            vec![Placement::Outdoor]
                        },
                        captured_from: from.map(t),
                        captured_until: until.map(t),
                        expires_at: expires.map(t),
                        document: ConsentDocument {
                            uri: "d.pdf".into(),
                            blake3: "0".repeat(64),
                        },
                    }))
                }
                Ev::Revoke {
                    owner: o,
                    at,
                    target,
                } => {
                    let own: Vec<&String> =
                        grants.iter().filter(|g| g.1 == *o).map(|g| &g.0).collect();
                    let grant_id =
                        target.and_then(|k| (!own.is_empty()).then(|| own[k % own.len()].clone()));
                    LedgerEvent::ConsentRevoked(Revocation {
                        event_id: id,
                        owner_id: owner(o),
                        at: t(*at),
                        grant_id,
                    })
                }
                Ev::Share {
                    owner: o,
                    video,
                    at,
                    public,
                } => LedgerEvent::NeighborsShared(Share {
                    event_id: id,
                    owner_id: owner(o),
                    video_id: format!("v-{video}"),
                    at: t(*at),
                    visibility: if *public {
                        "public".into()
                    } else {
                        "private".into()
                    },
                }),
                Ev::Unshare {
                    owner: o,
                    video,
                    at,
                } => LedgerEvent::NeighborsUnshared(VideoEvent {
                    event_id: id,
                    owner_id: owner(o),
                    video_id: format!("v-{video}"),
                    at: t(*at),
                }),
                Ev::DeleteVideo {
                    owner: o,
                    video,
                    at,
                } => LedgerEvent::VideoDeleted(VideoEvent {
                    event_id: id,
                    owner_id: owner(o),
                    video_id: format!("v-{video}"),
                    at: t(*at),
                }),
                Ev::DeleteAccount { owner: o, at } => LedgerEvent::AccountDeleted(AccountEvent {
                    event_id: id,
                    owner_id: owner(o),
                    at: t(*at),
                }),
            });
        }
        out
    }

    /// Every (clip, owner, device, placement) the world has, captured on day 3.
    fn clips() -> Vec<clearframe::records::CatalogClip> {
        let mut v = Vec::new();
        for video in 0..4u8 {
            for owner in 0..3u8 {
                for (device, placement) in [(0u8, "outdoor"), (1, "indoor"), (2, "outdoor")] {
                    let c = json!({"video_id": format!("v-{video}"), "uri": "x.mp4", "owner_id": format!("acct-{owner}"),
                                   "device_id": format!("dev-{device}"), "placement": placement,
                                   "captured_at": t(3).to_string()});
                    v.push(parse_catalog_line(c.to_string().as_bytes()).unwrap());
                }
            }
        }
        v
    }

    fn decisions(events: Vec<LedgerEvent>, as_of: i64) -> Vec<Verdict> {
        let ledger = Ledger::from_events(events).expect("generated ledgers are valid");
        let ix = ledger.index(t(as_of));
        clips().iter().map(|c| ix.decide(c)).collect()
    }

    fn is_in(v: &Verdict) -> bool {
        matches!(v, Verdict::Include(_))
    }

    fn is_erased(v: &Verdict) -> bool {
        matches!(v, Verdict::Exclude(r) if r.iter().any(|r| matches!(r.0, ReasonCode::VideoDeleted | ReasonCode::AccountDeleted)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

        #[test]
        fn adding_a_revocation_never_adds_a_clip(evs in prop::collection::vec(ev(), 0..14), owner in 0u8..3, at in 0i64..12, target in proptest::option::of(0usize..8), as_of in 0i64..14) {
            let before = decisions(build(&evs), as_of);
            let mut more = evs.clone();
            more.push(Ev::Revoke { owner, at, target });
            let after = decisions(build(&more), as_of);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(is_in(b) || !is_in(a), "a revocation let a clip in: {b:?} -> {a:?}");
            }
        }

        #[test]
        fn removing_a_non_erasure_event_never_lifts_an_erasure(evs in prop::collection::vec(ev(), 1..14), k in 0usize..14, as_of in 0i64..14) {
            let k = k % evs.len();
            prop_assume!(!matches!(evs[k], Ev::DeleteVideo { .. } | Ev::DeleteAccount { .. }));
            let before = decisions(build(&evs), as_of);
            let mut fewer = evs.clone();
            fewer.remove(k);
            let after = decisions(build(&fewer), as_of);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(!is_erased(b) || !is_in(a), "an erased clip came back: {b:?} -> {a:?}");
            }
        }

        #[test]
        fn adding_any_event_never_lifts_an_erasure(evs in prop::collection::vec(ev(), 0..14), extra in ev(), as_of in 0i64..14) {
            let before = decisions(build(&evs), as_of);
            let mut more = evs.clone();
            more.push(extra);
            let after = decisions(build(&more), as_of);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(!is_erased(b) || is_erased(a));
            }
        }

        #[test]
        fn file_order_never_matters(evs in prop::collection::vec(ev(), 0..14), seed in any::<u64>(), as_of in 0i64..14) {
            let events = build(&evs);
            let mut shuffled = events.clone();
            // Fisher-Yates with a small LCG: deterministic per seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let a: Vec<bool> = decisions(events, as_of).iter().map(is_in).collect();
            let b: Vec<bool> = decisions(shuffled, as_of).iter().map(is_in).collect();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn every_include_rests_on_a_counting_event_of_the_owner(evs in prop::collection::vec(ev(), 0..14), as_of in 0i64..14) {
            let events = build(&evs);
            let ledger = Ledger::from_events(events.clone()).unwrap();
            let ix = ledger.index(t(as_of));
            for c in clips() {
                if let Verdict::Include(b) = ix.decide(&c) {
                    let e = events.iter().find(|e| e.common().0 == b.event_id).unwrap();
                    prop_assert!(e.common().2 <= t(as_of));
                    prop_assert_eq!(e.common().1, c.owner_id.as_str());
                    match (b.kind, e) {
                        (BasisKind::Consent, LedgerEvent::ConsentGranted(_)) => {}
                        (BasisKind::Neighbors, LedgerEvent::NeighborsShared(s)) => prop_assert_eq!(&s.video_id, &c.video_id),
                        _ => prop_assert!(false, "basis kind does not match its event"),
                    }
                }
            }
        }
    }
}
