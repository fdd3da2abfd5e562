//! The stages one at a time (`select`, `redact`, `detect`, `emit`) on the bundled demo: the same
//! dataset as `run`, resumable, dropping clips whose consent was revoked, refusing stale inputs.

use std::path::Path;

use crate::common::{clearframe, fixture};
use crate::run_s3::{assert_same_files, local_files};

const AS_OF: &str = "2026-11-01T00:00:00Z";

fn select(work: &Path, ledger: &Path) {
    clearframe()
        .args(["select", "--as-of", AS_OF, "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(ledger)
        .arg("--out")
        .arg(work)
        .assert()
        .success();
}

fn stage(args: &[&str], work: &Path) -> assert_cmd::assert::Assert {
    clearframe().args(args).arg("--work").arg(work).assert()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

fn emit(work: &Path, out: &Path) -> assert_cmd::assert::Assert {
    clearframe()
        .arg("emit")
        .arg("--work")
        .arg(work)
        .arg("--out")
        .arg(out)
        .assert()
}

#[test]
fn stages_in_sequence_give_the_run_dataset_resume_and_drop_revoked_clips() {
    let dir = tempfile::tempdir().unwrap();
    let (work, staged, ran) = (
        dir.path().join("work"),
        dir.path().join("staged"),
        dir.path().join("ran"),
    );
    clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "4", "--out"])
        .arg(&ran)
        .arg("--catalog")
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .assert()
        .code(1);

    // Detect before redact: a clear error, nothing written.
    select(&work, &fixture("demo-ledger.jsonl"));
    let a = stage(&["detect"], &work).code(2);
    assert!(
        stderr(&a).contains("redact.json does not exist"),
        "{}",
        stderr(&a)
    );

    // The corrupt clip fails in redact (exit 1); the others go on.
    let a = stage(&["redact", "--fps", "4"], &work).code(1);
    assert!(
        stdout(&a).contains("5 redone") && stdout(&a).contains("1 failed"),
        "{}",
        stdout(&a)
    );
    // Redacted frames are lossless PNGs beside one record per clip; nothing unredacted.
    let pngs = std::fs::read_dir(work.join("redacted/v-car-front"))
        .unwrap()
        .count();
    assert!(pngs >= 10, "{pngs}");
    stage(&["detect"], &work).success();
    let a = emit(&work, &staged).code(1);
    assert!(
        stdout(&a).contains("not in dataset: v-corrupt"),
        "{}",
        stdout(&a)
    );
    // The stage records validate against their committed schemas.
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let valid = |stem: &str, p: &Path| {
        let errors: Vec<String> = crate::schemas::validator(stem)
            .iter_errors(&json(p))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", p.display());
    };
    valid("redact-record", &work.join("redact.json"));
    valid(
        "clip-redaction",
        &work.join("redacted/v-car-front/clip.json"),
    );
    valid("clip-redaction", &work.join("redacted/v-corrupt/clip.json"));
    valid("detect-record", &work.join("detect.json"));
    valid(
        "clip-detections",
        &work.join("detected/v-street-bikes.json"),
    );
    assert_eq!(
        json(&work.join("redacted/v-corrupt/clip.json"))["status"],
        "failed"
    );
    // Every file and folder the run and the stages created has ClearFrame's modes.
    for root in [&ran, &work, &staged] {
        crate::trust_out::assert_modes(root);
    }
    // Byte for byte what `run` wrote.
    let expected = local_files(&ran);
    assert_same_files(&expected, &local_files(&staged));

    // Resume: nothing changed, nothing redone (the failed clip is retried).
    let a = stage(&["redact", "--fps", "4"], &work).code(1);
    assert!(stdout(&a).contains("4 up to date"), "{}", stdout(&a));
    let a = stage(&["detect"], &work).success();
    assert!(
        stdout(&a).contains("0 redone") && stdout(&a).contains("4 up to date"),
        "{}",
        stdout(&a)
    );

    // Only [detect] may change between redact and detect; it redoes detection only.
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(&cfg, "[sampling]\nfps = 4.0\n[faces]\nthreshold = 0.3\n").unwrap();
    let a = clearframe()
        .args(["detect", "--config"])
        .arg(&cfg)
        .arg("--work")
        .arg(&work)
        .assert()
        .code(2);
    assert!(stderr(&a).contains("[faces] differ"), "{}", stderr(&a));
    std::fs::write(&cfg, "[sampling]\nfps = 4.0\n[detect]\nthreshold = 0.3\n").unwrap();
    let a = clearframe()
        .args(["detect", "--config"])
        .arg(&cfg)
        .arg("--work")
        .arg(&work)
        .assert()
        .success();
    assert!(stdout(&a).contains("4 redone"), "{}", stdout(&a));
    let low = dir.path().join("low");
    emit(&work, &low).code(1);
    let count = |d: &Path| -> u64 {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("dataset.json")).unwrap()).unwrap();
        r["counts"]["classes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert!(
        count(&low) > count(&staged),
        "a lower threshold finds more: {} vs {}",
        count(&low),
        count(&staged)
    );

    // A redacted frame changed after redact: detect refuses it.
    let png = std::fs::read_dir(work.join("redacted/v-street-bikes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .unwrap();
    let mut bytes = std::fs::read(&png).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&png, &bytes).unwrap();
    let a = stage(&["detect", "--force"], &work).code(2);
    assert!(
        stderr(&a).contains("changed after `clearframe redact`"),
        "{}",
        stderr(&a)
    );
    bytes[n / 2] ^= 1;
    std::fs::write(&png, &bytes).unwrap();

    // The nightly case: acct-1 revokes the consent v-car-front rests on. Select again into the
    // same work folder; redact deletes the frames and records of acct-1's clips (v-car-front
    // and the corrupt one) and keeps the others.
    let ledger = dir.path().join("ledger.jsonl");
    let mut text = std::fs::read_to_string(fixture("demo-ledger.jsonl")).unwrap();
    text.push_str("{\"event_id\":\"e-99\",\"type\":\"consent.revoked\",\"owner_id\":\"acct-1\",\"at\":\"2026-10-30T00:00:00Z\",\"grant_id\":\"e-1\"}\n");
    std::fs::write(&ledger, text).unwrap();
    select(&work, &ledger);
    let a = stage(&["redact", "--fps", "4"], &work).success();
    assert!(
        stdout(&a).contains("2 dropped") && stdout(&a).contains("3 up to date"),
        "{}",
        stdout(&a)
    );
    assert!(!work.join("redacted/v-car-front").exists());
    assert!(!work.join("redacted/v-car-front/clip.json").exists());
    stage(&["detect"], &work).success();
    let nightly = dir.path().join("nightly");
    emit(&work, &nightly).success();
    let files = local_files(&nightly);
    assert!(
        !files.keys().any(|k| k.contains("v-car-front")),
        "revoked clip left in the dataset"
    );
    assert!(
        files
            .keys()
            .any(|k| k.starts_with("frames/v-street-bikes/"))
    );
    clearframe().arg("verify").arg(&nightly).assert().success();
}
