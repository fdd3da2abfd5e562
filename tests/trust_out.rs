//! Trust boundaries on the output side (issue "Trust boundaries"): ClearFrame never destroys what
//! it did not write; settings that make writes fail are found before any damage; a stalled S3
//! server fails a run within a bounded time; raw HTTP answers stay out of what is recorded;
//! private staging folders do not outlive a Ctrl-C or a kill; files and folders get one explicit
//! mode; clips are read only from allowed sources. Each test says which defect it pins. Real
//! parts only: the real binary, real files, a real `s3s-fs`; where a misbehaving server is the
//! point, a real loopback TCP server that stalls or answers errors.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clearframe::emit::{EmitError, EmitOptions, Emitter};
use clearframe::storage::Store;

use crate::common::{clearframe, fixture};
use crate::emit::{build, frames, inputs, snapshot};
use crate::storage::server::{ACCESS_KEY, S3sServer, SECRET_KEY};

const AS_OF: &str = "2026-11-01T00:00:00Z";

/// `clearframe SUB` with S3 credentials in the environment and `--s3-endpoint`.
fn cmd(endpoint: &str, sub: &str) -> assert_cmd::Command {
    let mut c = clearframe();
    c.arg(sub)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("CLEARFRAME_S3_TIMEOUT")
        .args(["--s3-endpoint", endpoint]);
    c
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

/// The demo catalog's line for `v-bunny-yard` (consented by e-4), with `uri` replaced.
fn bunny_line(video_id: &str, uri: &str) -> String {
    let line = std::fs::read_to_string(fixture("demo-catalog.jsonl"))
        .unwrap()
        .lines()
        .find(|l| l.contains("\"v-bunny-yard\""))
        .unwrap()
        .to_owned();
    let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["video_id"] = video_id.into();
    v["uri"] = uri.into();
    if uri.starts_with("s3://") {
        v.as_object_mut().unwrap().remove("blake3");
    }
    v.to_string()
}

/// A one-clip catalog (the Big Buck Bunny negative) beside its clip, in `dir`.
pub(crate) fn mini_catalog(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("media")).unwrap();
    std::fs::copy(
        fixture("media/bigbuckbunny.mp4"),
        dir.join("media/bigbuckbunny.mp4"),
    )
    .unwrap();
    let catalog = dir.join("catalog.jsonl");
    std::fs::write(
        &catalog,
        bunny_line("v-bunny-yard", "media/bigbuckbunny.mp4") + "\n",
    )
    .unwrap();
    catalog
}

/// Every object under `prefix/`, keys relative to it.
fn objects(store: &Arc<dyn Store>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    store
        .list(&format!("{prefix}/"))
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.key[prefix.len() + 1..].to_owned(),
                store.get(&m.key).unwrap().to_vec(),
            )
        })
        .collect()
}

fn manifest_paths(manifest: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(manifest)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `verify` of the dataset in `ds` names exactly the files of `theirs` (nobody's record lists
/// them), and nothing else.
fn verify_names_only(
    ds: &Path,
    theirs: &BTreeMap<&str, &[u8]>,
) -> clearframe::verify::VerifyReport {
    let report = clearframe::verify::verify(ds).unwrap();
    let mut named: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    named.dedup();
    assert_eq!(
        named,
        theirs.keys().copied().collect::<Vec<_>>(),
        "{report}"
    );
    report
}

/// Regression: `Emitter::create` wiped any folder holding `frames/`, `annotations/` or
/// `report.html`, with no check that it ever held a dataset, and replaced an earlier dataset by
/// deleting everything under those names.
#[test]
fn emit_refuses_a_folder_it_did_not_write_and_replaces_only_what_its_record_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    for (rel, bytes) in [
        ("frames/cam/000001.jpg", &b"my photo"[..]),
        ("annotations/notes.json", b"{}"),
        ("report.html", b"<p>my report</p>"),
    ] {
        std::fs::create_dir_all(foreign.join(rel).parent().unwrap()).unwrap();
        std::fs::write(foreign.join(rel), bytes).unwrap();
    }
    let before = snapshot(&foreign);
    let err = Emitter::create(&foreign, inputs(), EmitOptions::default()).unwrap_err();
    assert!(matches!(err, EmitError::NotOurs { .. }), "{err:?}");
    let text = err.to_string();
    for want in [
        "holds 3 objects",
        "`report.html`",
        "no dataset.json written by ClearFrame",
        "nothing was deleted",
        "\nhint: ",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert_eq!(snapshot(&foreign), before, "a foreign folder was changed");

    // A dataset ClearFrame wrote, with someone's files beside it.
    let ds = tmp.path().join("ds");
    build(&ds, frames());
    let theirs: BTreeMap<&str, &[u8]> = [
        ("frames/zz/notes.txt", &b"not a frame"[..]),
        ("frames/street-bikes/readme.txt", b"mine"),
        ("annotations/mine.json", b"[1]"),
    ]
    .into_iter()
    .collect();
    for (rel, bytes) in &theirs {
        std::fs::create_dir_all(ds.join(rel).parent().unwrap()).unwrap();
        std::fs::write(ds.join(rel), bytes).unwrap();
    }
    let mut fewer = frames();
    fewer.truncate(1);
    let check_replaced = |ds: &Path| {
        let after = snapshot(ds);
        for (rel, bytes) in &theirs {
            assert_eq!(after.get(*rel).map(Vec::as_slice), Some(*bytes), "{rel}");
        }
        let listed = manifest_paths(crate::run_s3::version_bytes(&after, "manifest.jsonl"));
        assert_eq!(listed.len(), 1);
        assert_only_listed_frames(&after, &listed);
        assert!(!after.contains_key(".clearframe-partial.json"));
        // verify names exactly the files nobody's record lists.
        verify_names_only(ds, &theirs);
    };
    build(&ds, fewer.clone());
    check_replaced(&ds);

    // A dataset changed after ClearFrame wrote it: its record no longer vouches for its files.
    let manifest = crate::common::version_file(&ds, "manifest.jsonl");
    let original = std::fs::read(&manifest).unwrap();
    let mut edited = original.clone();
    edited[10] ^= 1;
    std::fs::write(&manifest, &edited).unwrap();
    let before = snapshot(&ds);
    let text = Emitter::create(&ds, inputs(), EmitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("Merkle root") && text.contains("hint:"),
        "{text}"
    );
    assert_eq!(snapshot(&ds), before);
    std::fs::write(&manifest, &original).unwrap();

    // Replacements interrupted half-way (twice in a row): the marker vouches for what they were
    // writing, so the next one replaces it, still leaving the others' files alone.
    for _ in 0..2 {
        let mut half = Emitter::create(&ds, inputs(), EmitOptions::default()).unwrap();
        for (entry, jpeg) in frames() {
            half.add_frame(entry, &jpeg).unwrap();
        }
        drop(half);
        // The earlier version stays whole and readable meanwhile: verify passes but for the
        // others' files, and names the interrupted run's objects as pending.
        let report = verify_names_only(&ds, &theirs);
        assert!(
            report
                .pending
                .contains(&".clearframe-partial.json".to_owned())
                && report.pending.iter().any(|p| p.starts_with("frames/")),
            "{report}"
        );
    }
    assert!(ds.join("dataset.json").exists());
    assert!(ds.join(".clearframe-partial.json").exists());
    build(&ds, fewer);
    check_replaced(&ds);
}

/// Regression: `RemoteOut` deleted every object under `frames/` or `annotations/` of the prefix
/// that the new dataset lacked, in a prefix that never held a dataset, and the source clip it had
/// just read when it lived there; `--require-sse` on an endpoint that does not confirm SSE deleted
/// the previous `dataset.json` (and `redact.json`), computed the whole batch, then refused every
/// upload; `redact` deleted anything under `redacted/<revoked id>/`.
#[test]
fn s3_outputs_replace_only_what_clearframe_wrote_and_refuse_before_any_damage() {
    let server = S3sServer::start();
    let store = server.store("trust", "");
    let ep = server.endpoint.as_str();
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(tmp.path());
    store
        .put(
            "in/catalog.jsonl",
            Bytes::from(std::fs::read(&catalog).unwrap()),
        )
        .unwrap();
    store
        .put(
            "in/media/bigbuckbunny.mp4",
            Bytes::from(std::fs::read(fixture("media/bigbuckbunny.mp4")).unwrap()),
        )
        .unwrap();
    let ledger = fixture("demo-ledger.jsonl");
    let run = |catalog: &str, out: &str, fps: &str, extra: &[&str]| {
        let mut c = cmd(ep, "run");
        c.args(["--as-of", AS_OF, "--fps", fps, "--catalog", catalog])
            .arg("--ledger")
            .arg(&ledger)
            .args(["--out", out])
            .args(extra);
        c.assert()
    };

    // A prefix that holds no dataset ClearFrame wrote: refused, untouched.
    store
        .put("foreign/frames/a.jpg", Bytes::from_static(b"theirs"))
        .unwrap();
    store
        .put("foreign/annotations/x.json", Bytes::from_static(b"{}"))
        .unwrap();
    let before = objects(&store, "foreign");
    let a = run(
        "s3://trust/in/catalog.jsonl",
        "s3://trust/foreign",
        "1",
        &[],
    )
    .code(2);
    let text = stderr(&a);
    assert!(
        text.contains("s3://trust/foreign holds 2 objects")
            && text.contains("no dataset.json written by ClearFrame")
            && text.contains("hint:"),
        "{text}"
    );
    // The same prefix as a work folder for `select`.
    let a = cmd(ep, "select")
        .args(["--as-of", AS_OF, "--catalog", "s3://trust/in/catalog.jsonl"])
        .arg("--ledger")
        .arg(&ledger)
        .args(["--out", "s3://trust/foreign"])
        .assert()
        .code(2);
    assert!(stderr(&a).contains("no select.json"), "{}", stderr(&a));
    assert_eq!(
        objects(&store, "foreign"),
        before,
        "a foreign prefix was changed"
    );

    // A dataset ClearFrame wrote.
    run("s3://trust/in/catalog.jsonl", "s3://trust/ds", "1", &[]).success();
    let first = objects(&store, "ds");
    assert!(first.contains_key("dataset.json"));

    // Settings that make writes fail are found before anything is deleted: the previous dataset
    // stays byte for byte (s3s-fs does not confirm SSE).
    let a = run(
        "s3://trust/in/catalog.jsonl",
        "s3://trust/ds",
        "1",
        &["--sse", "aes256", "--require-sse"],
    )
    .code(2);
    assert!(stderr(&a).contains("did not confirm"), "{}", stderr(&a));
    let a = run(
        "s3://trust/in/catalog.jsonl",
        "s3://trust/ds",
        "1",
        &["--require-sse"],
    )
    .code(2);
    assert!(stderr(&a).contains("--sse"), "{}", stderr(&a));
    assert_eq!(
        objects(&store, "ds"),
        first,
        "a refused run changed the dataset"
    );

    // Replacing it, with someone's objects under the prefix, among them the very catalog and clip
    // this run reads: only what the previous dataset.json lists is deleted.
    let theirs: BTreeMap<String, Vec<u8>> = [
        ("frames/src/catalog.jsonl", std::fs::read(&catalog).unwrap()),
        (
            "frames/src/media/bigbuckbunny.mp4",
            std::fs::read(fixture("media/bigbuckbunny.mp4")).unwrap(),
        ),
        ("frames/v-bunny-yard/notes.txt", b"notes".to_vec()),
        ("annotations/notes.json", b"{}".to_vec()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in &theirs {
        store
            .put(&format!("ds/{k}"), Bytes::from(v.clone()))
            .unwrap();
    }
    let a = run(
        "s3://trust/ds/frames/src/catalog.jsonl",
        "s3://trust/ds",
        "0.5",
        &[],
    )
    .success();
    assert!(
        stderr(&a).contains("left alone") && stderr(&a).contains("frames/src/catalog.jsonl"),
        "{}",
        stderr(&a)
    );
    let after = objects(&store, "ds");
    for (k, v) in &theirs {
        assert_eq!(after.get(k), Some(v), "{k} was changed or deleted");
    }
    let listed = manifest_paths(crate::run_s3::version_bytes(&after, "manifest.jsonl"));
    let old = manifest_paths(crate::run_s3::version_bytes(&first, "manifest.jsonl"));
    assert!(
        listed.len() < old.len(),
        "{} vs {}",
        listed.len(),
        old.len()
    );
    assert_only_listed_frames(&after, &listed);
    assert!(!after.contains_key(".clearframe-partial.json"));

    // The stage commands' work folder: a refused redact keeps redact.json and the frames...
    cmd(ep, "select")
        .args(["--as-of", AS_OF, "--catalog", "s3://trust/in/catalog.jsonl"])
        .arg("--ledger")
        .arg(&ledger)
        .args(["--out", "s3://trust/work"])
        .assert()
        .success();
    cmd(ep, "redact")
        .args(["--fps", "1", "--work", "s3://trust/work"])
        .assert()
        .success();
    let work = objects(&store, "work");
    assert!(work.contains_key("redact.json"));
    let a = cmd(ep, "redact")
        .args(["--fps", "1", "--work", "s3://trust/work"])
        .args(["--sse", "aes256", "--require-sse"])
        .assert()
        .code(2);
    assert!(stderr(&a).contains("did not confirm"), "{}", stderr(&a));
    assert_eq!(
        objects(&store, "work"),
        work,
        "a refused redact changed the work folder"
    );
    // ...and dropping a clip the selection no longer includes deletes ClearFrame's keys only.
    for (k, v) in [
        ("work/redacted/v-gone/000000.png", &b"png"[..]),
        ("work/redacted/v-gone/clip.json", b"{}"),
        ("work/redacted/v-gone.json", b"not ClearFrame's key"),
        ("work/redacted/v-gone/notes.txt", b"mine"),
    ] {
        store.put(k, Bytes::copy_from_slice(v)).unwrap();
    }
    cmd(ep, "redact")
        .args(["--fps", "1", "--work", "s3://trust/work"])
        .assert()
        .success();
    let work = objects(&store, "work");
    assert!(!work.contains_key("redacted/v-gone/000000.png"));
    assert!(!work.contains_key("redacted/v-gone/clip.json"));
    assert_eq!(
        work.get("redacted/v-gone.json").map(Vec::as_slice),
        Some(&b"not ClearFrame's key"[..])
    );
    assert_eq!(
        work.get("redacted/v-gone/notes.txt").map(Vec::as_slice),
        Some(&b"mine"[..])
    );
}

/// A loopback TCP server that misbehaves: it either accepts connections and never answers
/// (`stall`), or answers every request with a 503 whose `Date` and request id change each time.
fn misbehaving_server(stall: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if stall {
                held.push(conn); // keep it open, say nothing
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        seen.clear();
                        let n = N.fetch_add(1, Ordering::Relaxed);
                        let nanos = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos();
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>req-{n}-{nanos}</RequestId></Error>"
                        );
                        let answer = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nDate: Wed, 02 Dec 2026 06:{:02}:{:02} GMT ({nanos})\r\nx-amz-request-id: req-{n}-{nanos}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            (nanos / 60_000_000_000) % 60,
                            (nanos / 1_000_000_000) % 60,
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    endpoint
}

/// Regression: a server that accepts TCP connections and answers nothing hung `run` silently
/// for minutes (no operation or attempt timeout, an unbounded frame queue).
#[test]
fn a_stalled_s3_server_fails_the_run_within_a_bounded_time_naming_the_object() {
    let endpoint = misbehaving_server(true);
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(tmp.path());

    // The output in S3.
    let started = Instant::now();
    let a = cmd(&endpoint, "run")
        .args(["--as-of", AS_OF, "--fps", "1", "--s3-timeout", "1"])
        .arg("--catalog")
        .arg(&catalog)
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .args(["--out", "s3://stalled/ds"])
        .timeout(Duration::from_secs(120))
        .assert()
        .code(2);
    let took = started.elapsed();
    let text = stderr(&a);
    assert!(took < Duration::from_secs(60), "took {took:?}: {text}");
    assert!(
        text.contains("s3://stalled/ds") && text.contains("timed out"),
        "{text}"
    );

    // A clip in S3 (allowed with --sources): the clip fails, naming it, and the run goes on.
    let catalog = tmp.path().join("remote.jsonl");
    std::fs::write(
        &catalog,
        bunny_line("v-remote", "s3://stalled/clips/bunny.mp4") + "\n",
    )
    .unwrap();
    let out = tmp.path().join("ds");
    let started = Instant::now();
    cmd(&endpoint, "run")
        .env("CLEARFRAME_S3_TIMEOUT", "1")
        .args([
            "--as-of",
            AS_OF,
            "--fps",
            "1",
            "--sources",
            "s3://stalled/clips",
        ])
        .arg("--catalog")
        .arg(&catalog)
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .arg("--out")
        .arg(&out)
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1);
    assert!(started.elapsed() < Duration::from_secs(60));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    let failed = &record["failed_clips"][0];
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("s3://stalled/clips/bunny.mp4"), "{reason}");
    assert_eq!(failed["code"], "source_unreadable", "{failed}");
}

/// Regression: StorageError's messages carried the SDK's whole error chain, with the raw HTTP
/// response (its `date` header, request ids) into the failure reasons that dataset.json and the
/// report record, so two runs of the same failure gave different datasets.
#[test]
fn a_recorded_storage_failure_holds_no_raw_response_and_is_stable() {
    let endpoint = misbehaving_server(false);
    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("remote.jsonl");
    std::fs::write(
        &catalog,
        bunny_line("v-remote", "s3://busy/clips/bunny.mp4") + "\n",
    )
    .unwrap();
    let record = |out: &Path| -> Vec<u8> {
        cmd(&endpoint, "run")
            .args([
                "--as-of",
                AS_OF,
                "--fps",
                "1",
                "--sources",
                "s3://busy/clips/",
            ])
            .arg("--catalog")
            .arg(&catalog)
            .arg("--ledger")
            .arg(fixture("demo-ledger.jsonl"))
            .arg("--out")
            .arg(out)
            .timeout(Duration::from_secs(120))
            .assert()
            .code(1);
        std::fs::read(out.join("dataset.json")).unwrap()
    };
    let (a, b) = (record(&tmp.path().join("a")), record(&tmp.path().join("b")));
    let parsed: serde_json::Value = serde_json::from_slice(&a).unwrap();
    let reason = parsed["failed_clips"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("s3://busy/clips/bunny.mp4"), "{reason}");
    for leak in [
        "date", "Date", "GMT", "req-", "Response", "headers", "<Error>",
    ] {
        assert!(!reason.contains(leak), "{leak:?} in {reason:?}");
    }
    assert_eq!(
        a, b,
        "dataset.json differs between two runs of the same failure"
    );
}

/// Regression: staging folders (`clearframe-out-*`, run's scratch selection) were left behind by
/// Ctrl-C and SIGKILL, world-listable, holding frames and `selection.jsonl`.
#[test]
fn sigint_and_sigkill_leave_no_staging_folder_behind() {
    let server = S3sServer::start();
    server.store("staged", "");
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let staging = |tmpdir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(tmpdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("clearframe-")
            })
            .collect();
        v.sort();
        v
    };
    let start = |out: &str| -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_clearframe"))
            .arg("run")
            .env("TMPDIR", &tmpdir)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .args(["--s3-endpoint", &server.endpoint])
            .args(["--as-of", AS_OF, "--fps", "4", "--catalog"])
            .arg(fixture("demo-catalog.jsonl"))
            .arg("--ledger")
            .arg(fixture("demo-ledger.jsonl"))
            .args(["--out", out])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Mid-run: the staging folder holds frames.
    let wait_for_frames = |child: &mut std::process::Child| -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it staged a frame"
            );
            for dir in staging(&tmpdir) {
                let frames = dir.join("frames");
                let staged = std::fs::read_dir(&frames)
                    .into_iter()
                    .flatten()
                    .any(|clip| {
                        std::fs::read_dir(clip.unwrap().path())
                            .into_iter()
                            .flatten()
                            .any(|f| {
                                f.is_ok_and(|f| f.path().extension().is_some_and(|e| e == "jpg"))
                            })
                    });
                if staged {
                    return dir;
                }
            }
            assert!(Instant::now() < deadline, "no frame was staged");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let wait = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the run did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut child = start("s3://staged/a");
    let dir = wait_for_frames(&mut child);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait(&mut child);
    assert!(!status.success());
    assert_eq!(staging(&tmpdir), Vec::<PathBuf>::new(), "left after SIGINT");

    let mut child = start("s3://staged/b");
    let dir = wait_for_frames(&mut child);
    child.kill().unwrap(); // SIGKILL
    wait(&mut child);
    assert!(dir.exists(), "a SIGKILL cannot be handled");
    // The next command removes what the killed one left.
    let out = tmp.path().join("sel");
    clearframe()
        .env("TMPDIR", &tmpdir)
        .args(["select", "--as-of", AS_OF, "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        staging(&tmpdir),
        Vec::<PathBuf>::new(),
        "left after SIGKILL"
    );
}

/// Regression: dataset files were 0600 (tempfile's default), work-folder files 0644 and folders
/// 0755 (the umask's). Every path a run and the four stages create is stat-ed, under a umask
/// that would give other modes.
#[test]
fn every_file_and_folder_clearframe_creates_has_one_explicit_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(&tmp.path().join("in"));
    let ledger = fixture("demo-ledger.jsonl");
    let (ran, work, staged) = (
        tmp.path().join("out/ran"),
        tmp.path().join("out/work"),
        tmp.path().join("out/staged"),
    );
    // umask 077 would make 0600 files; umask 002, 0664 ones: the modes do not depend on it.
    let with_umask = |umask: &str, args: &[&std::ffi::OsStr]| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_clearframe"))
            .args(args);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    with_umask(
        "077",
        &[
            &os("run"),
            &os("--as-of"),
            &os(AS_OF),
            &os("--fps"),
            &os("1"),
            &os("--catalog"),
            catalog.as_os_str(),
            &os("--ledger"),
            ledger.as_os_str(),
            &os("--out"),
            ran.as_os_str(),
        ],
    );
    with_umask(
        "002",
        &[
            &os("select"),
            &os("--as-of"),
            &os(AS_OF),
            &os("--catalog"),
            catalog.as_os_str(),
            &os("--ledger"),
            ledger.as_os_str(),
            &os("--out"),
            work.as_os_str(),
        ],
    );
    with_umask(
        "077",
        &[
            &os("redact"),
            &os("--fps"),
            &os("1"),
            &os("--work"),
            work.as_os_str(),
        ],
    );
    with_umask("002", &[&os("detect"), &os("--work"), work.as_os_str()]);
    with_umask(
        "077",
        &[
            &os("emit"),
            &os("--work"),
            work.as_os_str(),
            &os("--out"),
            staged.as_os_str(),
        ],
    );
    assert!(ran.join("dataset.json").exists() && staged.join("dataset.json").exists());
    assert!(work.join("detect.json").exists());
    assert_modes(&tmp.path().join("out"));
}

/// Every file and folder under `root` (and `root` itself) has ClearFrame's modes: files 0640,
/// folders 0750.
pub(crate) fn assert_modes(root: &Path) {
    fn walk(p: &Path, bad: &mut Vec<String>) {
        let meta = std::fs::symlink_metadata(p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o750 } else { 0o640 };
        if mode != want {
            bad.push(format!("{} is {mode:o}, not {want:o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), bad);
            }
        }
    }
    let mut bad = Vec::new();
    walk(root, &mut bad);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A clip the catalog marks end-to-end encrypted is never decoded, though its owner's grant
/// covers it: `select` excludes it with its own reason code and no stage opens it (the same
/// line without the mark is included and decoded).
#[test]
fn an_end_to_end_encrypted_clip_never_reaches_a_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = mini_catalog(tmp.path());
    let mut sealed: serde_json::Value =
        serde_json::from_str(&bunny_line("v-sealed", "media/bigbuckbunny.mp4")).unwrap();
    sealed["e2ee"] = true.into();
    let mut text = std::fs::read_to_string(&catalog).unwrap();
    text.push_str(&format!("{sealed}\n"));
    std::fs::write(&catalog, text).unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let a = clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "1", "--catalog"])
        .arg(&catalog)
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    let selection = std::fs::read_to_string(work.join("selection.jsonl")).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(selection.lines().find(|l| l.contains("v-sealed")).unwrap()).unwrap();
    assert_eq!(line["decision"], "exclude", "{line}");
    assert_eq!(
        line["reason_codes"],
        serde_json::json!(["end_to_end_encrypted"])
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(
        record["counts"]["excluded_by_reason"]["end_to_end_encrypted"],
        1
    );
    assert!(
        record["counts"]["clips"].get("v-bunny-yard").is_some(),
        "the control clip"
    );
    assert!(record["counts"]["clips"].get("v-sealed").is_none());
    assert!(!work.join("redacted/v-sealed").exists() && !out.join("frames/v-sealed").exists());
    assert!(!stdout.contains("v-sealed"), "{stdout}");
}

/// Regression: `select` let through `s3://` clip URIs with `..`, `.` or empty segments or an
/// invalid bucket, and a catalog could point a clip at any object the credentials can read.
#[test]
fn select_excludes_clips_outside_the_allowed_sources_and_malformed_s3_uris() {
    let tmp = tempfile::tempdir().unwrap();
    mini_catalog(tmp.path());
    let catalog = tmp.path().join("mixed.jsonl");
    let lines = [
        bunny_line("v-here", "media/bigbuckbunny.mp4"),
        bunny_line("v-elsewhere", "s3://other-bucket/clips/a.mp4"),
        bunny_line("v-dotdot", "s3://other-bucket/clips/../secret/b.mp4"),
        bunny_line("v-empty", "s3://other-bucket/clips//c.mp4"),
        bunny_line("v-dot", "s3://other-bucket/./d.mp4"),
        bunny_line("v-bucket", "s3://Other_Bucket/e.mp4"),
    ];
    std::fs::write(&catalog, lines.join("\n") + "\n").unwrap();
    let select = |out: &Path, extra: &[&str]| -> BTreeMap<String, serde_json::Value> {
        clearframe()
            .args(["select", "--as-of", AS_OF, "--catalog"])
            .arg(&catalog)
            .arg("--ledger")
            .arg(fixture("demo-ledger.jsonl"))
            .arg("--out")
            .arg(out)
            .args(extra)
            .assert()
            .code(1);
        std::fs::read_to_string(out.join("selection.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["video_id"].as_str().unwrap().to_owned(), v)
            })
            .collect()
    };
    let codes = |v: &serde_json::Value| v["reason_codes"].to_string();
    let sel = select(&tmp.path().join("a"), &[]);
    assert_eq!(sel["v-here"]["decision"], "include");
    assert_eq!(sel["v-elsewhere"]["decision"], "exclude");
    assert_eq!(codes(&sel["v-elsewhere"]), "[\"source_not_allowed\"]");
    assert!(
        sel["v-elsewhere"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("--sources"),
        "{}",
        sel["v-elsewhere"]
    );
    for id in ["v-dotdot", "v-empty", "v-dot", "v-bucket"] {
        assert_eq!(sel[id]["decision"], "exclude", "{id}");
        assert_eq!(codes(&sel[id]), "[\"invalid_line\"]", "{id}");
    }
    crate::schemas::assert_lines_valid("selection-line", &tmp.path().join("a/selection.jsonl"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("a/select.json")).unwrap()).unwrap();
    assert!(crate::schemas::validator("select-record").is_valid(&record));
    // --sources widens the allowlist.
    let sel = select(
        &tmp.path().join("b"),
        &["--sources", "s3://other-bucket/clips"],
    );
    assert_eq!(sel["v-elsewhere"]["decision"], "include");
    assert_eq!(sel["v-dotdot"]["decision"], "exclude");
    // Where the clip is opened, the allowlist holds again: `redact` without the same --sources
    // refuses it before reading anything (the object does not even exist).
    let work = tmp.path().join("b");
    clearframe()
        .args(["redact", "--fps", "1", "--work"])
        .arg(&work)
        .assert()
        .code(1);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.join("redacted/v-elsewhere/clip.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["code"], "source_not_allowed", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("outside the allowed sources"),
        "{record}"
    );
}

/// Regression: a link inside an output or work folder redirected ClearFrame's writes and
/// deletes: `frames/<id> -> ../victim` put the new frames (and the replacement's deletes) into
/// `victim`, `annotations/cvat -> ..` wrote annotations beside the folder, `redacted/<id>` in a
/// work folder did the same with lossless PNGs; listings skipped links silently. Now nothing
/// below the root is reached through a link: a link (or FIFO, device, socket) there is an error
/// that names it, before anything is written or deleted.
#[test]
fn links_inside_output_and_work_folders_are_refused_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), b"theirs").unwrap();
    let untouched = |what: &str| {
        let names: Vec<_> = std::fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep.txt"], "{what}: files appeared in the victim");
        assert_eq!(std::fs::read(victim.join("keep.txt")).unwrap(), b"theirs");
    };

    // A dataset ClearFrame wrote, then one of its frame folders swapped for a link.
    let ds = tmp.path().join("ds");
    build(&ds, frames());
    let clip = frames()[0].0.video_id.clone();
    let real = ds.join(format!("frames/{clip}"));
    std::fs::rename(&real, tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&victim, &real).unwrap();
    let err = Emitter::create(&ds, inputs(), EmitOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("is a symbolic link") && text.contains(&format!("frames/{clip}")),
        "{text}"
    );
    untouched("emit over frames/<id> -> victim");
    std::fs::remove_file(&real).unwrap();
    std::fs::rename(tmp.path().join("moved"), &real).unwrap();
    // `versions/<version>/annotations/cvat -> ..`: the folder's parent.
    let cvat = crate::common::version_file(&ds, "annotations/cvat");
    if cvat.exists() {
        std::fs::remove_dir_all(&cvat).unwrap();
    }
    std::os::unix::fs::symlink("..", &cvat).unwrap();
    let text = Emitter::create(&ds, inputs(), EmitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("annotations/cvat is a symbolic link"),
        "{text}"
    );
    assert!(!cvat.parent().unwrap().join("annotations.xml").exists());
    // A folder that holds only a link is not empty, and not ours.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::os::unix::fs::symlink(&victim, fresh.join("frames")).unwrap();
    let text = Emitter::create(&fresh, inputs(), EmitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("fresh/frames is a symbolic link"), "{text}");
    untouched("emit into a folder holding frames -> victim");

    // A work folder: every store operation refuses the link and follows nothing.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("redacted")).unwrap();
    std::os::unix::fs::symlink(&victim, work.join("redacted/a")).unwrap();
    let store: Arc<dyn Store> = Arc::new(clearframe::storage::LocalStore::new(&work));
    let png = Bytes::from_static(b"\x89PNG unredacted");
    let refused = |r: Result<(), clearframe::storage::StorageError>, op: &str| {
        let e = r.expect_err(op).to_string();
        assert!(e.contains("redacted/a is a symbolic link"), "{op}: {e}");
    };
    refused(store.put("redacted/a/000000.png", png.clone()), "put");
    refused(
        store.put_record("redacted/a/x.json", png.clone()),
        "put_record",
    );
    refused(store.list("redacted/").map(drop), "list");
    refused(store.get("redacted/a/keep.txt").map(drop), "get");
    refused(store.head("redacted/a/keep.txt").map(drop), "head");
    refused(store.delete("redacted/a/keep.txt"), "delete");
    untouched("work folder redacted/a -> victim");
    // Elsewhere in the work folder, the store works as ever.
    store.put("redacted/b/000000.png", png).unwrap();
    assert_eq!(store.list("redacted/b/").unwrap().len(), 1);

    // End to end: a second run over a dataset whose frame folder became a link fails, names
    // the link, and writes nothing through it.
    let dir = tmp.path().join("e2e");
    let catalog = mini_catalog(&dir);
    let out = dir.join("out");
    let run = || {
        clearframe()
            .args(["run", "--as-of", AS_OF, "--fps", "1", "--catalog"])
            .arg(&catalog)
            .arg("--ledger")
            .arg(fixture("demo-ledger.jsonl"))
            .arg("--out")
            .arg(&out)
            .assert()
    };
    run().success();
    let frames_dir = out.join("frames/v-bunny-yard");
    assert!(frames_dir.is_dir());
    std::fs::remove_dir_all(&frames_dir).unwrap();
    std::os::unix::fs::symlink(&victim, &frames_dir).unwrap();
    let a = run().failure();
    let err = stderr(&a);
    assert!(
        err.contains("frames/v-bunny-yard is a symbolic link"),
        "{err}"
    );
    untouched("run over frames/v-bunny-yard -> victim");

    // Found by review: `anonymize -o DIR` wrote through a link at the output's name, and
    // `emit --out` inside the work folder (directly or through a link) was accepted.
    let anon = tmp.path().join("anon");
    std::fs::create_dir(&anon).unwrap();
    std::os::unix::fs::symlink(
        victim.join("keep.txt"),
        anon.join("astronaut_anonymized.png"),
    )
    .unwrap();
    let a = clearframe()
        .arg("anonymize")
        .arg(fixture("media/astronaut.png"))
        .arg(fixture("media/dog.jpg"))
        .arg("-o")
        .arg(&anon)
        .assert()
        .code(1);
    let err = stderr(&a);
    assert!(
        err.contains("astronaut_anonymized.png is a symbolic link"),
        "{err}"
    );
    assert!(
        anon.join("dog_anonymized.jpg").is_file(),
        "the batch goes on"
    );
    untouched("anonymize -o over a link");
    let work = tmp.path().join("w");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::symlink(&work, tmp.path().join("w-link")).unwrap();
    for out in [
        work.join("ds"),
        tmp.path().join("w-link/ds"),
        work.clone(),
        tmp.path().to_path_buf(),
    ] {
        let a = clearframe()
            .args(["emit", "--work"])
            .arg(&work)
            .arg("--out")
            .arg(&out)
            .assert()
            .failure();
        let err = stderr(&a);
        assert!(err.contains("overlap"), "{}: {err}", out.display());
        assert!(!work.join("ds").exists());
    }
}

/// The dataset's JPEGs are exactly the frames its manifest lists: no stale frame left.
fn assert_only_listed_frames(files: &BTreeMap<String, Vec<u8>>, listed: &[String]) {
    let jpgs: Vec<&String> = files
        .keys()
        .filter(|k| {
            Path::new(k.as_str())
                .extension()
                .is_some_and(|e| e == "jpg")
        })
        .collect();
    assert_eq!(jpgs, listed.iter().collect::<Vec<_>>(), "stale frames left");
}
