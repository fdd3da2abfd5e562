//! Nightly rebuilds: `run --work` reuses what is unchanged and gives the bytes of a plain `run`;
//! shards run in parallel (as a Kubernetes Indexed Job runs them) merge into the same dataset;
//! a revocation erases the clip from the work folder and the dataset without redoing vision work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{clearframe, fixture, version_file};
use crate::run_s3::{assert_same_dataset, assert_same_files, local_files};
use crate::stages::emit;

const AS_OF: &str = "2026-11-01T00:00:00Z";

/// `clearframe run` on the demo with `ledger`, `extra` arguments appended.
fn run(ledger: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = clearframe();
    cmd.args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(ledger)
        .args(extra);
    cmd
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The plain run's dataset, the reference every other build is compared with.
fn reference(dir: &Path, ledger: &Path) -> BTreeMap<String, Vec<u8>> {
    let plain = dir.join(format!(
        "plain-{}",
        ledger.file_stem().unwrap().to_str().unwrap()
    ));
    run(ledger, &["--out", s(&plain)]).assert().code(1);
    local_files(&plain)
}

#[test]
fn run_with_a_work_folder_reuses_every_clip_and_gives_the_plain_runs_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let ledger = fixture("demo-ledger.jsonl");
    let expected = reference(tmp.path(), &ledger);

    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .code(1);
    assert!(stdout(&a).contains("5 redone"), "{}", stdout(&a));
    assert_same_files(&expected, &local_files(&out));

    // Nothing changed: nothing redone (the corrupt clip's failure repeats and is kept), no model
    // loaded, nothing written to the dataset; still exit 1 for the failed clip.
    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .code(1);
    let text = stdout(&a);
    assert!(
        text.contains("0 redone")
            && text.contains("5 up to date, 1 failed")
            && text.contains("models not loaded")
            && text.contains("nothing written"),
        "{text}"
    );
    assert_same_files(&expected, &local_files(&out));

    // A frame removed from the dataset is written again: an incomplete dataset is not skipped.
    // (The same version, over the previous one: its change log says every clip was kept.)
    let frame = out.join(crate::common::frame_key(&out, "v-street-bikes", 0));
    std::fs::remove_file(&frame).unwrap();
    run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .code(1);
    let files = local_files(&out);
    assert_same_dataset(&expected, &files);
    let changes: serde_json::Value =
        serde_json::from_slice(crate::run_s3::version_bytes(&files, "changes.json")).unwrap();
    assert_eq!(changes["previous_merkle_root"], changes["merkle_root"]);
    assert_eq!(changes["kept"].as_array().unwrap().len(), 4);

    // A frame overwritten there with other bytes (the same path, the same count of files) is
    // not taken for the dataset: it is written again (found in review: only presence was
    // checked).
    let other =
        std::fs::read(out.join(crate::common::frame_key(&out, "v-street-bikes", 4))).unwrap();
    std::fs::write(&frame, other).unwrap();
    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .code(1);
    assert!(!stdout(&a).contains("nothing written"), "{}", stdout(&a));
    assert_same_dataset(&expected, &local_files(&out));
    clearframe().arg("verify").arg(&out).assert().success();
}

/// Shard `index` of `count` as a Kubernetes Indexed Job pod runs it: `--shard env/N` and
/// `JOB_COMPLETION_INDEX`.
fn shard(ledger: &Path, work: &Path, index: u32, count: u32) -> std::process::Child {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("clearframe"));
    cmd.args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(ledger)
        .arg("--work")
        .arg(work)
        .arg("--shard")
        .arg(format!("env/{count}"))
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .env_remove("AWS_BATCH_JOB_ARRAY_INDEX")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

#[test]
fn shards_in_parallel_merge_into_the_single_process_dataset_and_emit_waits_for_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let ledger = fixture("demo-ledger.jsonl");
    let expected = reference(tmp.path(), &ledger);

    // Two of three shards, at once.
    let running: Vec<_> = (0..2).map(|i| shard(&ledger, &work, i, 3)).collect();
    for child in running {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.code().is_some_and(|c| c <= 1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("no dataset written by a shard"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // The third shard's clips are missing: emit refuses, naming them, and writes nothing.
    let missing: Vec<String> = ["v-bunny-yard", "v-car-front", "v-corrupt", "v-living-room"]
        .into_iter()
        .chain(["v-street-bikes"])
        .filter(|id| clearframe_shard_of(id, 3) == 2)
        .map(str::to_owned)
        .collect();
    assert!(!missing.is_empty(), "the demo puts a clip in shard 2 of 3");
    let a = emit(&work, &out).code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("not processed yet"), "{err}");
    for id in &missing {
        assert!(err.contains(id.as_str()), "{id} not named: {err}");
    }
    assert!(err.contains("2 of 3"), "{err}");
    assert!(!out.exists(), "nothing written while a shard is missing");

    let o = shard(&ledger, &work, 2, 3).wait_with_output().unwrap();
    assert!(o.status.code().is_some_and(|c| c <= 1));
    emit(&work, &out).code(1);
    assert_same_files(&expected, &local_files(&out));
    clearframe().arg("verify").arg(&out).assert().success();
}

/// The shard of `video_id` among `count`: the first eight bytes of its blake3, little-endian.
fn clearframe_shard_of(video_id: &str, count: u64) -> u64 {
    let h = blake3::hash(video_id.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % count
}

/// Every file below `root` whose path or bytes name `id`.
fn mentions(root: &Path, id: &str) -> Vec<PathBuf> {
    local_files(root)
        .into_iter()
        .filter(|(k, v)| k.contains(id) || v.windows(id.len()).any(|w| w == id.as_bytes()))
        .map(|(k, _)| root.join(k))
        .collect()
}

/// The demo ledger in `dir` plus `e-99`: acct-1 revokes the grant v-car-front (and the corrupt
/// clip) rest on.
fn revoked_ledger(dir: &Path) -> PathBuf {
    let ledger = dir.join("revoked.jsonl");
    let mut text = std::fs::read_to_string(fixture("demo-ledger.jsonl")).unwrap();
    text.push_str("{\"event_id\":\"e-99\",\"type\":\"consent.revoked\",\"owner_id\":\"acct-1\",\"at\":\"2026-10-30T00:00:00Z\",\"grant_id\":\"e-1\"}\n");
    std::fs::write(&ledger, text).unwrap();
    ledger
}

#[test]
fn a_revocation_erases_the_clip_from_work_and_dataset_without_redoing_vision_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    run(
        &fixture("demo-ledger.jsonl"),
        &["--work", s(&work), "--out", s(&out)],
    )
    .assert()
    .code(1);
    assert!(!mentions(&out, "v-car-front").is_empty());

    let ledger = revoked_ledger(tmp.path());
    // The dataset as it stands: `verify --ledger` lists the clips it no longer allows, with the
    // event, and fails; at an instant before the revocation it allows them all.
    let a = clearframe()
        .arg("verify")
        .arg(&out)
        .args(["--ledger", s(&ledger), "--as-of", AS_OF])
        .assert()
        .code(1);
    let said = stdout(&a);
    assert!(
        said.contains("v-car-front: revoked by consent.revoked \"e-99\"")
            && said.contains("2 of 5 clips"),
        "{said}"
    );
    clearframe()
        .arg("verify")
        .arg(&out)
        .args(["--ledger", s(&ledger), "--as-of", "2026-10-29T00:00:00Z"])
        .assert()
        .success();
    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .success();
    let text = stdout(&a);
    assert!(
        text.contains("2 dropped") && text.contains("models not loaded"),
        "a consent change alone redoes no vision work: {text}"
    );
    // Nothing derived from the revoked clip is left: in the dataset only its change log names
    // it (for the copies downstream to go too); in the work folder only the selection's own
    // decision line does (an exclusion).
    assert_eq!(
        mentions(&out, "v-car-front"),
        vec![
            version_file(&out, "changes.json"),
            version_file(&out, "removed.jsonl")
        ]
    );
    let removed: Vec<serde_json::Value> =
        std::fs::read_to_string(version_file(&out, "removed.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["video_id"], "v-car-front");
    assert_eq!(removed[0]["reason_code"], "revoked");
    assert_eq!(removed[0]["event_id"], "e-99");
    let paths = removed[0]["paths"].as_array().unwrap();
    assert!(
        paths.iter().any(|p| {
            let p = p.as_str().unwrap();
            p.starts_with("versions/") && p.ends_with("/annotations/cvat/v-car-front.xml")
        }),
        "{paths:?}"
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.as_str().unwrap().starts_with("frames/v-car-front/"))
            .count(),
        17
    );
    assert!(!removed[0].to_string().contains("acct-1"), "no owner id");
    let changes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_file(&out, "changes.json")).unwrap())
            .unwrap();
    assert_eq!(changes["removed"], serde_json::json!(["v-car-front"]));
    assert_eq!(changes["kept"].as_array().unwrap().len(), 3);
    assert_eq!(
        mentions(&work, "v-car-front"),
        vec![work.join("selection.jsonl")]
    );
    let line = std::fs::read_to_string(work.join("selection.jsonl"))
        .unwrap()
        .lines()
        .find(|l| l.contains("v-car-front"))
        .unwrap()
        .to_owned();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["decision"], "exclude");
    // And the result is the version a plain run on the new ledger gives.
    assert_same_dataset(&reference_ok(tmp.path(), &ledger), &local_files(&out));
    clearframe().arg("verify").arg(&out).assert().success();
}

/// The plain run's dataset when every included clip goes through (exit 0).
fn reference_ok(dir: &Path, ledger: &Path) -> BTreeMap<String, Vec<u8>> {
    let plain = dir.join("plain-ok");
    run(ledger, &["--out", s(&plain)]).assert().success();
    local_files(&plain)
}

/// What a work folder may hold after a finished `run --work`: the records, and exactly the
/// frames and detections they list.
fn expected_work_files(work: &Path) -> std::collections::BTreeSet<String> {
    let json = |k: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(work.join(k)).unwrap()).unwrap()
    };
    let mut keys: std::collections::BTreeSet<String> = [
        "select.json",
        "selection.jsonl",
        "redact.json",
        "detect.json",
        "emitted.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for r in json("redact.json")["clips"].as_object().unwrap().values() {
        let key = r["key"].as_str().unwrap();
        keys.insert(key.to_owned());
        for f in json(key)["frames"].as_array().unwrap() {
            keys.insert(f["path"].as_str().unwrap().to_owned());
        }
    }
    for r in json("detect.json")["clips"].as_object().unwrap().values() {
        keys.insert(r["key"].as_str().unwrap().to_owned());
    }
    keys
}

/// SplitMix64 from `seed`: the same kill points on every run of a test.
fn seeded(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn runs_killed_at_random_points_leave_the_next_run_the_uninterrupted_dataset_and_no_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, out, scratch) = (
        tmp.path().join("work"),
        tmp.path().join("out"),
        tmp.path().join("tmp"),
    );
    std::fs::create_dir(&scratch).unwrap();
    let ledger = fixture("demo-ledger.jsonl");
    let expected = reference(tmp.path(), &ledger);
    let mut next = seeded(0x5EED);
    let (mut killed, mut finished) = (0, 0);
    for _ in 0..8 {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("clearframe"))
            .args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
            .arg(fixture("demo-catalog.jsonl"))
            .arg("--ledger")
            .arg(&ledger)
            .args(["--work", s(&work), "--out", s(&out)])
            .env("TMPDIR", &scratch)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50 + next() % 4000));
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed += 1;
        }
    }
    println!("SIGKILL rounds: {killed} killed, {finished} finished first");
    assert!(killed >= 4, "only {killed} runs were killed");

    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .env("TMPDIR", &scratch)
        .assert()
        .code(1);
    assert!(stdout(&a).contains("5 clips"), "{}", stdout(&a));
    // Exactly the uninterrupted dataset: the same files (no orphan), the same bytes (but for
    // the change log, which depends on which earlier attempt got as far as a whole version).
    assert_same_dataset(&expected, &local_files(&out));
    clearframe().arg("verify").arg(&out).assert().success();
    // The work folder holds its records and what they list, and nothing else (no frame of an
    // interrupted clip, no temporary file of a killed write).
    let present: std::collections::BTreeSet<String> = local_files(&work).into_keys().collect();
    assert_eq!(present, expected_work_files(&work));
    // No staging folder of a killed run survives the next command.
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// The objects of a dataset location hold one whole version: the one its `dataset.json` names,
/// with its manifest (and Merkle root), every frame the manifest lists and every file the record
/// lists, each with its recorded blake3, whatever else lies beside them. Returns the root.
fn assert_whole(files: &BTreeMap<String, Vec<u8>>, what: &str) -> String {
    let record: clearframe::emit::DatasetRecord =
        serde_json::from_slice(&files["dataset.json"]).unwrap();
    assert_eq!(record.seal, record.compute_seal(), "{what}");
    let manifest = &files
        .get(&record.path("manifest.jsonl"))
        .unwrap_or_else(|| {
            panic!("{what}: the manifest of the version dataset.json names is gone")
        });
    let root = clearframe::emit::merkle::manifest_root(manifest).unwrap();
    assert_eq!(
        blake3::Hash::to_hex(&root).to_string(),
        record.merkle_root,
        "{what}"
    );
    let mut frames = 0;
    for line in String::from_utf8_lossy(manifest).lines() {
        let e: clearframe::emit::ManifestEntry = serde_json::from_str(line).unwrap();
        let bytes = files
            .get(&e.path)
            .unwrap_or_else(|| panic!("{what}: {} is gone", e.path));
        assert_eq!(
            clearframe::hashing::hash_bytes(bytes),
            e.blake3,
            "{what}: {}",
            e.path
        );
        frames += 1;
    }
    assert_eq!(frames, record.frames, "{what}");
    for (key, blake3) in &record.files {
        let bytes = files
            .get(key)
            .unwrap_or_else(|| panic!("{what}: {key} is gone"));
        assert_eq!(
            &clearframe::hashing::hash_bytes(bytes),
            blake3,
            "{what}: {key}"
        );
    }
    record.merkle_root
}

/// Readers never see a half-built version, and the previous one stays whole until the new
/// `dataset.json` replaces it: runs that alternate between two ledgers (two versions) are
/// SIGKILLed at seeded points over the length of a run, into a local folder and into an S3
/// prefix; after each kill the location holds one whole version, the earlier or the new one.
/// (Before, `dataset.json` was deleted first and files were overwritten in place: a kill left
/// no readable version.)
#[test]
fn a_version_stays_whole_while_the_next_is_written_even_when_the_writer_is_killed() {
    use crate::storage::server::{ACCESS_KEY, S3sServer, SECRET_KEY};
    let tmp = tempfile::tempdir().unwrap();
    let first = fixture("demo-ledger.jsonl");
    // Another version: without v-car-front.
    let second = revoked_ledger(tmp.path());
    let expected = reference(tmp.path(), &first);
    let server = S3sServer::start();
    let store = server.store(crate::run_s3::BUCKET, "");
    let prefix = "kill/ds";
    let mut next = seeded(0x0DD);
    for remote in [false, true] {
        let work = tmp.path().join(format!("work-{remote}"));
        let out = tmp.path().join("out");
        let dest = if remote {
            format!("s3://{}/{prefix}", crate::run_s3::BUCKET)
        } else {
            s(&out).to_owned()
        };
        let snapshot = || {
            if remote {
                crate::run_s3::s3_files(&store, prefix)
            } else {
                local_files(&out)
            }
        };
        let command = |ledger: &Path| {
            let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("clearframe"));
            c.args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
                .arg(fixture("demo-catalog.jsonl"))
                .arg("--ledger")
                .arg(ledger)
                .args(["--work", s(&work), "--out", &dest])
                .args(["--s3-endpoint", &server.endpoint])
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_REGION", "us-east-1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c
        };
        // The two versions, and how long a run that replaces one with the other takes each way
        // (back to the first redoes the vision work of the clip the second erased).
        let timed = |ledger: &Path| {
            let started = std::time::Instant::now();
            assert!(matches!(
                command(ledger).status().unwrap().code(),
                Some(0 | 1)
            ));
            started.elapsed().as_millis() as u64
        };
        timed(&first);
        let root_first = assert_whole(&snapshot(), "first version");
        let to_second = timed(&second);
        let root_second = assert_whole(&snapshot(), "second version");
        let to_first = timed(&first);
        assert_ne!(root_first, root_second);
        let (mut killed, mut interrupted) = (0, 0);
        let mut root = root_first.clone();
        for round in 0..8 {
            // Always towards the other version, killed somewhere over such a run's length.
            let (ledger, span) = if root == root_first {
                (&second, to_second)
            } else {
                (&first, to_first)
            };
            let mut child = command(ledger).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(next() % (span + 1)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
            }
            child.wait().unwrap();
            let files = snapshot();
            let what = format!("{} round {round}", if remote { "S3" } else { "local" });
            root = assert_whole(&files, &what);
            assert!(root == root_first || root == root_second, "{what}: {root}");
            interrupted += usize::from(files.contains_key(".clearframe-partial.json"));
            if !remote {
                let report = clearframe::verify::verify(&out).unwrap();
                assert!(report.ok(), "{what}: {report}");
            }
        }
        println!(
            "{}: {killed} of 8 runs killed, {interrupted} mid-replacement; runs take {to_second} and {to_first} ms",
            if remote { "S3" } else { "local" }
        );
        // (The kill points span whole runs, most of which is the replacement: with none
        // inside it, this test would not test what it says.)
        assert!(interrupted >= 1, "no run was killed mid-replacement");
        // The next run finishes the interrupted one: the uninterrupted dataset, no orphan.
        assert!(matches!(command(&first).status().unwrap().code(), Some(1)));
        let files = snapshot();
        assert_same_dataset(&expected, &files);
        assert!(!files.contains_key(".clearframe-partial.json"));
    }
}

#[test]
fn without_a_catalog_hash_an_unchanged_size_and_mtime_spare_the_read_and_rehash_reads_anyway() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let mut line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(fixture("demo-catalog.jsonl"))
            .unwrap()
            .lines()
            .find(|l| l.contains("\"v-car-front\""))
            .unwrap(),
    )
    .unwrap();
    line.as_object_mut().unwrap().remove("blake3");
    let catalog = tmp.path().join("catalog.jsonl");
    std::fs::write(&catalog, format!("{line}\n")).unwrap();
    std::fs::create_dir(tmp.path().join("media")).unwrap();
    let clip = tmp.path().join("media/carphone_pristine.mp4");
    std::fs::copy(fixture("media/carphone_pristine.mp4"), &clip).unwrap();
    let go = |extra: &[&str]| -> String {
        let mut c = clearframe();
        c.args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
            .arg(&catalog)
            .arg("--ledger")
            .arg(fixture("demo-ledger.jsonl"))
            .args(["--work", s(&work), "--out", s(&out)])
            .args(extra);
        let a = c.assert();
        let code = a.get_output().status.code();
        assert!(matches!(code, Some(0 | 1)), "{a:?}");
        stdout(&a)
    };
    assert!(go(&[]).contains("1 redone"));
    assert!(go(&[]).contains("1 up to date"));
    // Other bytes under the same size and mtime: the store's answer is trusted (not read)...
    let mtime = std::fs::metadata(&clip).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&clip).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&clip, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&clip)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let text = go(&[]);
    assert!(
        text.contains("1 up to date") && text.contains("models not loaded"),
        "{text}"
    );
    // ...and --rehash reads every clip, sees the change and redoes it.
    let text = go(&["--rehash"]);
    assert!(text.contains("1 redone"), "{text}");
}

#[test]
fn emit_erases_clips_the_selection_dropped_even_from_shards_that_did_not_run_again() {
    // Found in review: only the shard owning a clip dropped it, so a revoked clip whose shard
    // held no included clip any more (and was not rerun) stayed in the work folder.
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let ledger = fixture("demo-ledger.jsonl");
    let at = |as_of: &str, extra: &[&str]| {
        let mut c = clearframe();
        c.args(["run", "--as-of", as_of, "--fps", "4", "--catalog"])
            .arg(fixture("demo-catalog.jsonl"))
            .arg("--ledger")
            .arg(&ledger)
            .args(["--work", s(&work)])
            .args(extra);
        let code = c.assert().get_output().status.code();
        assert!(matches!(code, Some(0 | 1)), "{code:?}");
    };
    // Before its revocation (2026-10-20) v-revoked is in; its frames go to the work folder.
    at("2026-10-15T00:00:00Z", &["--out", s(&out)]);
    assert!(work.join("redacted/v-revoked/clip.json").exists());
    // After it, the shards with an included clip run again; v-revoked's shard holds none.
    let count = 5;
    let revoked_shard = clearframe_shard_of("v-revoked", count);
    for i in (0..count).filter(|i| *i != revoked_shard) {
        at(AS_OF, &["--shard", &format!("{i}/{count}")]);
    }
    emit(&work, &out).code(1);
    assert_eq!(
        mentions(&work, "v-revoked"),
        vec![work.join("selection.jsonl")]
    );
    assert!(!work.join("detected/v-revoked.json").exists());
}

#[test]
fn a_new_basis_for_the_same_clip_redoes_neither_redaction_nor_detection() {
    // Found in review: detection was keyed on the redaction record's bytes, which hold the
    // consent basis, so a new grant replacing a revoked one re-ran the object detector.
    let tmp = tempfile::tempdir().unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    run(
        &fixture("demo-ledger.jsonl"),
        &["--work", s(&work), "--out", s(&out)],
    )
    .assert()
    .code(1);
    // acct-3 revokes e-4 and grants again (e-50): v-bunny-yard and v-living-room stay in, on
    // the new grant.
    let ledger = tmp.path().join("regranted.jsonl");
    let mut text = std::fs::read_to_string(fixture("demo-ledger.jsonl")).unwrap();
    let e4 = text
        .lines()
        .find(|l| l.contains("\"e-4\""))
        .unwrap()
        .to_owned();
    text.push_str("{\"event_id\":\"r-4\",\"type\":\"consent.revoked\",\"owner_id\":\"acct-3\",\"at\":\"2026-10-01T00:00:00Z\",\"grant_id\":\"e-4\"}\n");
    text.push_str(
        &e4.replace("\"e-4\"", "\"e-50\"")
            .replace("2026-03-10T12:00:00Z", "2026-10-02T00:00:00Z"),
    );
    text.push('\n');
    std::fs::write(&ledger, text).unwrap();
    let a = run(&ledger, &["--work", s(&work), "--out", s(&out)])
        .assert()
        .code(1);
    let said = stdout(&a);
    assert!(
        said.contains("0 redone (0 frames)")
            && said.contains("detections: 0 clips redone")
            && said.contains("models not loaded"),
        "{said}"
    );
    let manifest = std::fs::read_to_string(version_file(&out, "manifest.jsonl")).unwrap();
    assert!(
        manifest.contains("\"event_id\":\"e-50\""),
        "the new basis is recorded"
    );
    assert!(!manifest.contains("\"event_id\":\"e-4\""));
}
