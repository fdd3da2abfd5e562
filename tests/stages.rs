//! The stages one at a time (`select`, `redact`, `detect`, `emit`) on the bundled demo: the same
//! dataset as `run`, resumable, dropping clips whose consent was revoked, refusing stale inputs.

use std::path::{Path, PathBuf};

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

pub(crate) fn emit(work: &Path, out: &Path) -> assert_cmd::assert::Assert {
    clearframe()
        .arg("emit")
        .arg("--work")
        .arg(work)
        .arg("--out")
        .arg(out)
        .assert()
}

/// The temp folder one scenario runs in, and the folders its commands write.
struct Scenario {
    dir: tempfile::TempDir,
    /// The stages' work folder (`select --out`, `--work` of the others).
    work: PathBuf,
    /// What `emit` writes from the first pass of the stages.
    staged: PathBuf,
    /// What `run` writes in one go.
    ran: PathBuf,
}

impl Scenario {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (work, staged, ran) = (
            dir.path().join("work"),
            dir.path().join("staged"),
            dir.path().join("ran"),
        );
        Scenario {
            dir,
            work,
            staged,
            ran,
        }
    }

    /// A path in the scenario's temp folder.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Asserts that the JSON file `p` validates against the committed schema `stem`.
fn valid(stem: &str, p: &Path) {
    let errors: Vec<String> = crate::schemas::validator(stem)
        .iter_errors(&json(p))
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{}: {errors:?}", p.display());
}

/// The number of detections, all classes together, in the dataset emitted to `d`.
fn count(d: &Path) -> u64 {
    json(&d.join("dataset.json"))["counts"]["classes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// `run` on the demo writes the reference dataset; it exits 1 for the corrupt clip.
fn run_the_whole_pipeline(s: &Scenario) {
    clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "4", "--out"])
        .arg(&s.ran)
        .arg("--catalog")
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .assert()
        .code(1);
}

/// After `select`, detect before redact is a clear error, and nothing is written.
fn detect_before_redact_is_refused(s: &Scenario) {
    select(&s.work, &fixture("demo-ledger.jsonl"));
    let a = stage(&["detect"], &s.work).code(2);
    assert!(
        stderr(&a).contains("redact.json does not exist"),
        "{}",
        stderr(&a)
    );
}

/// The corrupt clip fails in redact (exit 1); the others go on. Redacted frames are lossless
/// PNGs beside one record per clip; nothing unredacted.
fn redact_fails_the_corrupt_clip_and_goes_on(s: &Scenario) {
    let a = stage(&["redact", "--fps", "4"], &s.work).code(1);
    assert!(
        stdout(&a).contains("5 redone") && stdout(&a).contains("1 failed"),
        "{}",
        stdout(&a)
    );
    let pngs = std::fs::read_dir(s.work.join("redacted/v-car-front"))
        .unwrap()
        .count();
    assert!(pngs >= 10, "{pngs}");
}

/// Detect goes through; emit writes the dataset without the corrupt clip and exits 1.
fn detect_and_emit_leave_out_the_corrupt_clip(s: &Scenario) {
    stage(&["detect"], &s.work).success();
    let a = emit(&s.work, &s.staged).code(1);
    assert!(
        stdout(&a).contains("not in dataset: v-corrupt"),
        "{}",
        stdout(&a)
    );
}

/// The stage records validate against their committed schemas, the corrupt clip's record says
/// it failed, and every file and folder the run and the stages created has ClearFrame's modes.
fn records_validate_and_modes_hold(s: &Scenario) {
    let work = &s.work;
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
    for root in [&s.ran, &s.work, &s.staged] {
        crate::trust_out::assert_modes(root);
    }
}

/// The stages emit byte for byte what `run` wrote.
fn stages_equal_run_byte_for_byte(s: &Scenario) {
    let expected = local_files(&s.ran);
    assert_same_files(&expected, &local_files(&s.staged));
}

/// Resume: nothing changed, nothing redone. The corrupt clip is not tried again (its bytes and
/// the settings are unchanged, and `not_a_video` repeats), but it is still failed: exit 1.
fn resume_redoes_nothing(s: &Scenario) {
    let a = stage(&["redact", "--fps", "4"], &s.work).code(1);
    assert!(
        stdout(&a).contains("0 redone") && stdout(&a).contains("5 up to date, 1 failed"),
        "{}",
        stdout(&a)
    );
    let a = stage(&["detect"], &s.work).success();
    assert!(
        stdout(&a).contains("0 redone") && stdout(&a).contains("4 up to date"),
        "{}",
        stdout(&a)
    );
}

/// Only [detect] may change between redact and detect; it redoes detection only, and a lower
/// threshold finds more.
fn only_detect_settings_may_change(s: &Scenario) {
    let cfg = s.path("cfg.toml");
    let detect_with = |toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        clearframe()
            .args(["detect", "--config"])
            .arg(&cfg)
            .arg("--work")
            .arg(&s.work)
            .assert()
    };
    let a = detect_with("[sampling]\nfps = 4.0\n[faces]\nthreshold = 0.3\n").code(2);
    assert!(stderr(&a).contains("[faces] differ"), "{}", stderr(&a));
    // A [detect] out of range is refused like `run` refuses it, before the work folder changes.
    let record = std::fs::read(s.work.join("detect.json")).unwrap();
    for bad in [
        "threshold = 1.1",
        "tile_size = 63",
        "class_thresholds = { unicorn = 0.3 }",
    ] {
        let a = detect_with(&format!("[sampling]\nfps = 4.0\n[detect]\n{bad}\n")).code(2);
        assert!(stderr(&a).contains("detect."), "{bad}: {}", stderr(&a));
        assert_eq!(
            std::fs::read(s.work.join("detect.json")).unwrap(),
            record,
            "{bad}"
        );
    }
    let a = detect_with("[sampling]\nfps = 4.0\n[detect]\nthreshold = 0.3\n").success();
    assert!(stdout(&a).contains("4 redone"), "{}", stdout(&a));
    let low = s.path("low");
    emit(&s.work, &low).code(1);
    assert!(
        count(&low) > count(&s.staged),
        "a lower threshold finds more: {} vs {}",
        count(&low),
        count(&s.staged)
    );
}

/// A redacted frame changed after redact: detect refuses it. The frame is restored after.
fn a_changed_png_is_refused(s: &Scenario) {
    let png = std::fs::read_dir(s.work.join("redacted/v-street-bikes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .unwrap();
    let mut bytes = std::fs::read(&png).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&png, &bytes).unwrap();
    let a = stage(&["detect", "--force"], &s.work).code(2);
    assert!(
        stderr(&a).contains("changed after `clearframe redact`"),
        "{}",
        stderr(&a)
    );
    bytes[n / 2] ^= 1;
    std::fs::write(&png, &bytes).unwrap();
}

/// The nightly case: acct-1 revokes the consent v-car-front rests on. Select again into the
/// same work folder; redact deletes the frames and records of acct-1's clips (v-car-front and
/// the corrupt one) and keeps the others; the emitted dataset has no trace of v-car-front and
/// verifies.
fn a_revocation_drops_the_clip_nightly(s: &Scenario) {
    let ledger = s.path("ledger.jsonl");
    let mut text = std::fs::read_to_string(fixture("demo-ledger.jsonl")).unwrap();
    text.push_str("{\"event_id\":\"e-99\",\"type\":\"consent.revoked\",\"owner_id\":\"acct-1\",\"at\":\"2026-10-30T00:00:00Z\",\"grant_id\":\"e-1\"}\n");
    std::fs::write(&ledger, text).unwrap();
    select(&s.work, &ledger);
    let a = stage(&["redact", "--fps", "4"], &s.work).success();
    assert!(
        stdout(&a).contains("2 dropped") && stdout(&a).contains("3 up to date"),
        "{}",
        stdout(&a)
    );
    assert!(!s.work.join("redacted/v-car-front").exists());
    assert!(!s.work.join("redacted/v-car-front/clip.json").exists());
    stage(&["detect"], &s.work).success();
    let nightly = s.path("nightly");
    emit(&s.work, &nightly).success();
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

/// One scenario, one run: the run and the redact stage are expensive, so the steps share them
/// and must go in this order.
#[test]
fn stages_in_sequence_give_the_run_dataset_resume_and_drop_revoked_clips() {
    let s = Scenario::new();
    run_the_whole_pipeline(&s);
    detect_before_redact_is_refused(&s);
    redact_fails_the_corrupt_clip_and_goes_on(&s);
    detect_and_emit_leave_out_the_corrupt_clip(&s);
    records_validate_and_modes_hold(&s);
    stages_equal_run_byte_for_byte(&s);
    resume_redoes_nothing(&s);
    only_detect_settings_may_change(&s);
    a_changed_png_is_refused(&s);
    a_revocation_drops_the_clip_nightly(&s);
}
