//! The audit trail: every command that reads clips or writes a dataset appends a start and an
//! end record to a hash-chained log; `audit verify` finds every kind of tampering and names the
//! first bad record; concurrent writers never fork the chain; a log that cannot be written stops
//! the command before it reads anything.

use std::path::Path;

use clearframe::audit::{self, AuditEvent, AuditLog, AuditRecord, record_key};
use clearframe::storage::S3Options;

use crate::common::{clearframe, fixture};
use crate::storage::server::S3sServer;
use crate::trust_out::mini_catalog;

const AS_OF: &str = "2026-11-01T00:00:00Z";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn records(log: &Path) -> Vec<AuditRecord> {
    audit::records(&AuditLog::open(s(log), &S3Options::default()).unwrap()).unwrap()
}

/// `clearframe audit verify LOG [--head H]`: exit code and stdout.
fn audit_verify(log: &Path, head: Option<&str>) -> (i32, String) {
    let mut c = clearframe();
    c.args(["audit", "verify", s(log)]);
    if let Some(h) = head {
        c.args(["--head", h]);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn audited_commands_record_who_read_what_and_what_was_written_and_erased() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(tmp.path());
    let (work, out, log) = (
        tmp.path().join("work"),
        tmp.path().join("out"),
        tmp.path().join("audit"),
    );
    let run = |ledger: &Path| {
        clearframe()
            .args(["run", "--as-of", AS_OF, "--fps", "1", "--catalog"])
            .arg(&catalog)
            .arg("--ledger")
            .arg(ledger)
            .args(["--work", s(&work), "--out", s(&out)])
            .args(["--audit-log", s(&log), "--actor", "alice@example"])
            .assert()
            .success();
    };
    run(&fixture("demo-ledger.jsonl"));
    // acct-3 revokes e-4: the clip is erased from the dataset and the work folder.
    let revoked = tmp.path().join("revoked.jsonl");
    let mut text = std::fs::read_to_string(fixture("demo-ledger.jsonl")).unwrap();
    text.push_str("{\"event_id\":\"r-4\",\"type\":\"consent.revoked\",\"owner_id\":\"acct-3\",\"at\":\"2026-10-30T00:00:00Z\",\"grant_id\":\"e-4\"}\n");
    std::fs::write(&revoked, text).unwrap();
    run(&revoked);
    // A command that reads clips outside any catalog is audited too (actor from the environment).
    let anon = tmp.path().join("anon.jpg");
    clearframe()
        .args(["anonymize", "--audit-log", s(&log)])
        .arg(fixture("media/dog.jpg"))
        .arg("--output")
        .arg(&anon)
        .env("USER", "bob")
        .env_remove("AWS_ROLE_ARN")
        .assert()
        .success();

    let r = records(&log);
    assert_eq!(r.len(), 6, "{r:#?}");
    let events: Vec<(AuditEvent, &str)> = r.iter().map(|r| (r.event, r.command.as_str())).collect();
    assert_eq!(
        events,
        [
            (AuditEvent::Start, "run"),
            (AuditEvent::End, "run"),
            (AuditEvent::Start, "run"),
            (AuditEvent::End, "run"),
            (AuditEvent::Start, "anonymize"),
            (AuditEvent::End, "anonymize"),
        ]
    );
    for (i, rec) in r.iter().enumerate() {
        assert_eq!(rec.seq, i as u64);
        assert_eq!(rec.clearframe_version, env!("CARGO_PKG_VERSION"));
    }
    assert_eq!(r[0].run_id, r[1].run_id);
    assert_ne!(r[1].run_id, r[2].run_id);
    assert_eq!(
        (r[0].actor.as_str(), r[0].actor_source.as_str()),
        ("alice@example", "--actor")
    );
    assert_eq!(
        (r[4].actor.as_str(), r[4].actor_source.as_str()),
        ("bob", "USER")
    );
    // The start record holds no details: it is written before anything is read.
    assert_eq!(r[0].details, audit::AuditDetails::default());
    let first = &r[1].details;
    assert_eq!(first.outcome, "ok");
    assert_eq!(first.included.iter().collect::<Vec<_>>(), ["v-bunny-yard"]);
    assert_eq!(
        first.clips_read.iter().collect::<Vec<_>>(),
        ["v-bunny-yard"]
    );
    assert_eq!(
        first.inputs["catalog"],
        clearframe::hashing::hash_file(&catalog).unwrap()
    );
    assert!(
        first.models.keys().any(|m| m.starts_with("retinaface")),
        "{first:?}"
    );
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    assert!(first.written[0].contains(s(&out)), "{first:?}");
    let second = &r[3].details;
    assert!(
        second.included.is_empty() && second.clips_read.is_empty(),
        "{second:?}"
    );
    assert!(second.models.is_empty(), "a consent change loads no model");
    let places = &second.erased["v-bunny-yard"];
    assert!(
        places.contains("dataset") && places.contains(s(&work)),
        "{places:?}"
    );
    assert!(second.written[0].contains(version["version"].as_str().unwrap()));
    assert!(
        r[5].details
            .clips_read
            .iter()
            .any(|p| p.ends_with("dog.jpg")),
        "{:?}",
        r[5]
    );

    let (code, text) = audit_verify(&log, None);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("6 records, chain intact"), "{text}");
    let shown = clearframe()
        .args(["audit", "show", s(&log)])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.lines().count(), 6, "{shown}");
    assert!(
        shown.contains("by alice@example (--actor)") && shown.contains("1 erased"),
        "{shown}"
    );
}

#[test]
fn audit_verify_names_the_first_edited_removed_inserted_or_reordered_record() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let handle = AuditLog::open(s(&log), &S3Options::default()).unwrap();
    for i in 0..5 {
        handle.append(record(&format!("actor-{i}"))).unwrap();
    }
    let (code, text) = audit_verify(&log, None);
    assert_eq!(code, 0, "{text}");
    let head = text.rsplit("head ").next().unwrap().trim().to_owned();
    let case = |name: &str, tamper: &dyn Fn(&Path)| -> String {
        let copy = tmp.path().join(name);
        copy_dir(&log, &copy);
        tamper(&copy);
        let (code, text) = audit_verify(&copy, Some(&head));
        assert_eq!(code, 1, "{name}: tampering went unnoticed:\n{text}");
        text
    };
    let read = |dir: &Path, seq: u64| -> AuditRecord {
        serde_json::from_slice(&std::fs::read(dir.join(record_key(seq))).unwrap()).unwrap()
    };
    let write = |dir: &Path, seq: u64, r: &AuditRecord| {
        std::fs::write(dir.join(record_key(seq)), r.to_bytes()).unwrap();
    };

    // Edited in place (one byte of the actor).
    let text = case("edited", &|d| {
        let p = d.join(record_key(2));
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replace("actor-2", "actor-X");
        std::fs::write(p, t).unwrap();
    });
    assert!(
        text.contains("record 2 (000000000002.json) is bad") && text.contains("edited"),
        "{text}"
    );
    // Edited and sealed again: the next record no longer follows it.
    let text = case("resealed", &|d| {
        let mut r = read(d, 2);
        r.actor = "someone-else".into();
        r.seal = r.compute_seal();
        write(d, 2, &r);
    });
    assert!(
        text.contains("record 3 ") && text.contains("does not follow"),
        "{text}"
    );
    // Removed from the middle.
    let text = case("removed", &|d| {
        std::fs::remove_file(d.join(record_key(1))).unwrap();
    });
    assert!(text.contains("record 1 is missing"), "{text}");
    // A forged record inserted after record 1, with a correct prev and seal; the later records
    // renumbered and sealed again.
    let text = case("inserted", &|d| {
        let mut later: Vec<AuditRecord> = (2..5).map(|s| read(d, s)).collect();
        let mut forged = read(d, 1);
        forged.seq = 2;
        forged.prev = Some(clearframe::hashing::hash_bytes(
            &std::fs::read(d.join(record_key(1))).unwrap(),
        ));
        forged.actor = "forger".into();
        forged.seal = forged.compute_seal();
        write(d, 2, &forged);
        for r in &mut later {
            r.seq += 1;
            r.seal = r.compute_seal();
            write(d, r.seq, r);
        }
    });
    assert!(
        text.contains("record 3 ") && text.contains("does not follow"),
        "{text}"
    );
    // Two records swapped.
    let text = case("reordered", &|d| {
        let (a, b) = (d.join(record_key(1)), d.join(record_key(3)));
        let tmp = d.join("swap");
        std::fs::rename(&a, &tmp).unwrap();
        std::fs::rename(&b, &a).unwrap();
        std::fs::rename(&tmp, &b).unwrap();
    });
    assert!(
        text.contains("record 1 ") && text.contains("says it is record 3"),
        "{text}"
    );
    // The last record cut off: only a pinned head can tell.
    let text = case("truncated", &|d| {
        std::fs::remove_file(d.join(record_key(4))).unwrap();
    });
    assert!(text.contains("cut off the end"), "{text}");
    let copy = tmp.path().join("truncated");
    assert_eq!(
        audit_verify(&copy, None).0,
        0,
        "without a pinned head a shorter log is whole"
    );
    // Something else in the log's folder.
    let text = case("foreign", &|d| {
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
    });
    assert!(text.contains("notes.txt is not a record"), "{text}");
}

fn record(actor: &str) -> AuditRecord {
    AuditRecord {
        format: audit::AUDIT_FORMAT.into(),
        seq: 0,
        prev: None,
        event: AuditEvent::Start,
        run_id: "test".into(),
        at: "2026-12-04T00:00:00Z".into(),
        actor: actor.into(),
        actor_source: "--actor".into(),
        aws_access_key_id: None,
        host: "test".into(),
        command: "run".into(),
        args: vec![],
        clearframe_version: env!("CARGO_PKG_VERSION").into(),
        details: audit::AuditDetails::default(),
        seal: String::new(),
    }
}

/// Four writers appending at once to one local log: every record lands, none twice, and the
/// chain holds. On S3 the same appends go through `If-None-Match: *`: the real server refuses a
/// second create of a key, and two writers alternating on one log give one chain. (s3s-fs checks the condition before writing, not atomically, so it cannot
/// stand in for S3 in a true race; S3 itself evaluates it atomically.)
#[test]
fn concurrent_writers_take_turns_and_never_fork_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("log");
    std::thread::scope(|scope| {
        for w in 0..4 {
            let local = &local;
            scope.spawn(move || {
                let log = AuditLog::open(s(local), &S3Options::default()).unwrap();
                for i in 0..8 {
                    log.append(record(&format!("writer-{w}-{i}"))).unwrap();
                }
            });
        }
    });
    let log = AuditLog::open(s(&local), &S3Options::default()).unwrap();
    let report = audit::verify(&log, None).unwrap();
    assert_eq!(report.first_bad, None);
    assert_eq!(report.records, 32);
    let actors: std::collections::BTreeSet<String> = audit::records(&log)
        .unwrap()
        .into_iter()
        .map(|r| r.actor)
        .collect();
    assert_eq!(actors.len(), 32, "a record was lost");

    let server = S3sServer::start();
    let store = server.store(crate::run_s3::BUCKET, "");
    assert!(
        store
            .put_new("probe/one", bytes::Bytes::from_static(b"1"))
            .unwrap()
    );
    assert!(
        !store
            .put_new("probe/one", bytes::Bytes::from_static(b"2"))
            .unwrap()
    );
    assert_eq!(&store.get("probe/one").unwrap()[..], b"1");
    let url = format!("s3://{}/audit", crate::run_s3::BUCKET);
    let (a, b) = (
        AuditLog::open(&url, &server.options()).unwrap(),
        AuditLog::open(&url, &server.options()).unwrap(),
    );
    for i in 0..6 {
        let w = if i % 2 == 0 { &a } else { &b };
        assert_eq!(w.append(record(&format!("s3-{i}"))).unwrap().seq, i);
    }
    let report = audit::verify(&a, None).unwrap();
    assert_eq!((report.first_bad, report.records), (None, 6));
}

#[test]
fn a_log_that_cannot_be_written_stops_the_command_before_it_reads_a_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(tmp.path());
    // The log's folder would be below a regular file.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let out = tmp.path().join("out");
    let a = clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "1", "--catalog"])
        .arg(&catalog)
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .args(["--out", s(&out)])
        .args(["--audit-log", &format!("{}/audit", s(&blocker))])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr);
    assert!(
        stderr.contains("cannot write to the audit log") && stderr.contains("nothing was read"),
        "{stderr}"
    );
    assert!(!out.exists(), "the command ran without its audit record");
}
