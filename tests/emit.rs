//! The emit stage and `verify` on a small dataset built from real media: three frames of
//! `bikes.mp4` decoded by the ffmpeg CLI (a cyclist, cars) with the face area masked as redaction
//! does, and `dog.jpg` (dog, bicycle, truck). Detections are given as data (the detectors are
//! tested in `vision`), placed on the objects in those frames. The outputs must satisfy the real
//! consumers (pycocotools, datumaro, the Label Studio SDK: `scripts/check_annotations.py`; FiftyOne:
//! `scripts/check_fiftyone.py`), verify
//! must pass, and fail naming the file after any single byte anywhere changes; emitting twice, or
//! in another order, gives the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clearframe::emit::{
    self, ClipFailure, ConsentBasis, DatasetInputs, DatasetRecord, EmitOptions, EmittedDetection,
    Emitter, FrameJpeg, ManifestEntry, Provenance, RedactionSummary, VerifierResult, WithheldFrame,
};
use clearframe::hashing::hash_bytes;
use clearframe::verify::{VerifyArgs, run_cli, verify};
use clearframe::vision::{BBox, Detection, coco};

use crate::common::{fixture, frame_key, root, version_file};

const BIKES_FRAMES: [u64; 3] = [30, 35, 40];

/// Decodes the given frames of a clip into memory with the ffmpeg CLI (rgb24 raw video).
fn decode(path: &Path, frames: &[u64]) -> Vec<image::RgbImage> {
    let select = frames
        .iter()
        .map(|n| format!("eq(n\\,{n})"))
        .collect::<Vec<_>>()
        .join("+");
    let out = crate::common::ffmpeg_frames(
        path,
        &format!("select='{select}'"),
        crate::common::video_size(path),
    );
    assert_eq!(out.len(), frames.len());
    out
}

/// Masks a box with its mean colour, as the redact stage's solid mask does.
fn mask(img: &mut image::RgbImage, b: [u32; 4]) {
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    for y in b[1]..b[3] {
        for x in b[0]..b[2] {
            let p = img.get_pixel(x, y);
            for c in 0..3 {
                sum[c] += u64::from(p[c]);
            }
            n += 1;
        }
    }
    let mean = image::Rgb(sum.map(|s| (s / n.max(1)) as u8));
    for y in b[1]..b[3] {
        for x in b[0]..b[2] {
            img.put_pixel(x, y, mean);
        }
    }
}

fn det(class: &str, score: f32, b: [f32; 4]) -> EmittedDetection {
    let d = Detection {
        bbox: BBox {
            x0: b[0],
            y0: b[1],
            x1: b[2],
            y1: b[3],
        },
        score,
        class_id: coco::index_of(class).unwrap() as u16,
    };
    EmittedDetection::from_detection(&d).unwrap()
}

fn basis(kind: &str, event: &str) -> ConsentBasis {
    ConsentBasis {
        kind: kind.into(),
        event_id: event.into(),
        event_blake3: hash_bytes(event.as_bytes()),
    }
}

/// `selection.jsonl` in the select stage's line format (see `records::SelectionLine`).
fn selection() -> Vec<u8> {
    let b1 = basis("consent", "ev-0001");
    let b2 = basis("neighbors", "ev-0007");
    let b3 = basis("consent", "ev-0009");
    let lines = [
        serde_json::json!({"line": 1, "video_id": "street-bikes", "decision": "include", "basis": {"kind": b1.kind, "event_id": b1.event_id, "event_blake3": b1.event_blake3, "event_line": 1}, "reasons": [], "reason_codes": []}),
        serde_json::json!({"line": 2, "video_id": "kitchen-cam", "decision": "exclude", "basis": null, "reasons": ["consent was revoked by the owner (event ev-0004)"], "reason_codes": ["no_basis"]}),
        serde_json::json!({"line": 3, "video_id": "porch-dog", "decision": "include", "basis": {"kind": b2.kind, "event_id": b2.event_id, "event_blake3": b2.event_blake3, "event_line": 7}, "reasons": [], "reason_codes": []}),
        serde_json::json!({"line": 4, "video_id": null, "decision": "exclude", "basis": null, "reasons": ["catalog line 4 is not valid JSON"], "reason_codes": ["invalid_line"]}),
        serde_json::json!({"line": 5, "video_id": "garage-corrupt", "decision": "include", "basis": {"kind": b3.kind, "event_id": b3.event_id, "event_blake3": b3.event_blake3, "event_line": 9}, "reasons": [], "reason_codes": []}),
    ];
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(serde_json::to_string(&l).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

fn provenance(source: &Path, consent: ConsentBasis) -> Provenance {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/manifest.json")).unwrap())
            .unwrap();
    // The face and object models the pipeline runs, pinned by the model manifest.
    let models = ["centerface", "nanodet_coco"]
        .iter()
        .map(|m| {
            let h = manifest["models"][m]["blake3"].as_str();
            let h = h.unwrap_or_else(|| panic!("models/manifest.json has no blake3 for {m}"));
            ((*m).to_string(), h.to_string())
        })
        .collect::<BTreeMap<_, _>>();
    Provenance {
        source_blake3: clearframe::hashing::hash_file(source).unwrap(),
        consent,
        models,
        config_blake3: hash_bytes(b"[sampling]\nfps = 5\n"),
        clearframe_version: env!("CARGO_PKG_VERSION").into(),
        ffmpeg_version: "5.1.9".into(),
        onnxruntime_version: "1.32.0".into(),
    }
}

fn redaction(faces: u32, zones: &[&str]) -> RedactionSummary {
    RedactionSummary {
        faces_masked: faces,
        zones: zones.iter().map(std::string::ToString::to_string).collect(),
        indoor_policy: "none".into(),
        verifier: VerifierResult {
            passed: true,
            faces_found: 0,
        },
    }
}

/// The frames of the test dataset with their entries, in a fixed order.
pub(crate) fn frames() -> Vec<(ManifestEntry, FrameJpeg)> {
    let bikes = fixture("media/bikes.mp4");
    let mut out = Vec::new();
    // Cyclist riding left to right, cars on both sides; the face is masked.
    let faces = [[245, 0, 325, 95], [325, 0, 405, 95], [440, 0, 535, 100]];
    let person = [
        [165., 0., 385., 272.],
        [240., 0., 465., 272.],
        [320., 0., 590., 272.],
    ];
    let car_right = [
        [380., 15., 640., 272.],
        [410., 10., 640., 272.],
        [560., 0., 640., 272.],
    ];
    let car_left = [[0., 112., 125., 272.], [0., 105., 110., 272.]];
    for (i, mut img) in decode(&bikes, &BIKES_FRAMES).into_iter().enumerate() {
        mask(&mut img, faces[i]);
        let mut detections = vec![
            det("person", 0.91 - i as f32 * 0.02, person[i]),
            det("car", 0.87, car_right[i]),
        ];
        if let Some(b) = car_left.get(i) {
            detections.push(det("car", 0.64, *b));
        }
        let entry = ManifestEntry {
            video_id: "street-bikes".into(),
            frame: BIKES_FRAMES[i],
            timestamp_s: BIKES_FRAMES[i] as f64 / 25.0,
            width: img.width(),
            height: img.height(),
            path: String::new(),
            blake3: String::new(),
            detections,
            redaction: redaction(1, &[]),
            provenance: provenance(&bikes, basis("consent", "ev-0001")),
        };
        out.push((entry, jpeg(&img)));
    }
    let dog_path = fixture("media/dog.jpg");
    let mut dog = image::open(&dog_path).unwrap().to_rgb8();
    // A privacy zone over the street behind the porch.
    mask(&mut dog, [560, 0, 768, 60]);
    let entry = ManifestEntry {
        video_id: "porch-dog".into(),
        frame: 0,
        timestamp_s: 0.0,
        width: dog.width(),
        height: dog.height(),
        path: String::new(),
        blake3: String::new(),
        detections: vec![
            det("bicycle", 0.92, [99., 124., 574., 451.]),
            det("dog", 0.9, [128., 224., 314., 537.]),
            det("truck", 0.78, [462., 82., 694., 168.]),
        ],
        redaction: redaction(0, &["street"]),
        provenance: provenance(&dog_path, basis("neighbors", "ev-0007")),
    };
    out.push((entry, jpeg(&dog)));
    out
}

pub(crate) fn inputs() -> DatasetInputs {
    DatasetInputs {
        catalog_blake3: hash_bytes(b"catalog"),
        ledger_blake3: hash_bytes(b"ledger"),
        as_of: "2026-11-01T00:00:00Z".into(),
        selection_jsonl: selection(),
    }
}

pub(crate) fn build(dir: &Path, frames: Vec<(ManifestEntry, FrameJpeg)>) -> DatasetRecord {
    let mut emitter = Emitter::create(dir, inputs(), EmitOptions::default()).unwrap();
    for (entry, jpeg) in frames {
        emitter.add_frame(entry, &jpeg).unwrap();
    }
    emitter.withhold(WithheldFrame {
        video_id: "street-bikes".into(),
        frame: 45,
        reason: "verifier found 1 face after redaction".into(),
    });
    emitter.clip_failed(ClipFailure {
        video_id: "garage-corrupt".into(),
        code: clearframe::records::FailureCode::NotAVideo,
        reason: "ffmpeg could not decode the clip: moov atom not found".into(),
    });
    emitter.finish().unwrap()
}

/// Every file under `dir`, relative, sorted, with its bytes.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The Python of a consumers venv: `$ENV` (set by scripts/test.sh), else where
/// `scripts/setup-consumers.sh` puts venv `venv`.
pub(crate) fn venv_python(env: &str, venv: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("CLEARFRAME_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/clearframe"),
        PathBuf::from,
    );
    cache.join(venv).join("bin/python")
}

/// Runs a check script with `python` on `dataset`; returns its stdout and stderr, asserting success.
fn run_check(python: &Path, script: &str, dataset: &Path, hint: &str) -> String {
    assert!(
        python.exists(),
        "{} is missing\nhint: {hint}",
        python.display()
    );
    let out = Command::new(python)
        .arg(root().join("scripts").join(script))
        .arg(dataset)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// Runs every real consumer on `dataset` and asserts that each check passed: pycocotools,
/// datumaro (COCO and CVAT) and the Label Studio SDK (`scripts/check_annotations.py`), and
/// FiftyOne's COCO detection and CVAT video importers on its own MongoDB
/// (`scripts/check_fiftyone.py`).
pub(crate) fn assert_consumers_accept(dataset: &Path) {
    let text = run_check(
        &venv_python("CLEARFRAME_CONSUMERS_PYTHON", "consumers-venv"),
        "check_annotations.py",
        dataset,
        "run scripts/setup-consumers.sh (it installs pycocotools, datumaro and label-studio-sdk)",
    );
    assert_checks_ok(
        &text,
        &["coco", "datumaro-coco", "datumaro-cvat", "labelstudio"],
    );
    let text = run_check(
        &venv_python("CLEARFRAME_FIFTYONE_PYTHON", "fiftyone-venv"),
        "check_fiftyone.py",
        dataset,
        "run scripts/setup-consumers.sh fiftyone",
    );
    assert_checks_ok(&text, &["fiftyone-coco", "fiftyone-cvat"]);
}

/// Each of `checks` printed its "<check>: ok" line.
fn assert_checks_ok(text: &str, checks: &[&str]) {
    for check in checks {
        let ok = format!("{check}: ok");
        assert!(
            text.lines().any(|l| l.starts_with(&ok)),
            "no {ok:?}:\n{text}"
        );
    }
}

#[test]
fn emitted_dataset_verifies_and_real_consumers_accept_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dataset");
    let record = build(&dir, frames());

    let files = snapshot(&dir);
    // Frames are named by frame number and content; everything but dataset.json is in the
    // version folder it names, whose name is the blake3 of its files.
    let frame_files: Vec<&str> = files
        .keys()
        .filter(|k| k.starts_with("frames/"))
        .map(String::as_str)
        .collect();
    let expected_frames: Vec<String> = [
        ("porch-dog", 0),
        ("street-bikes", 30),
        ("street-bikes", 35),
        ("street-bikes", 40),
    ]
    .iter()
    .map(|(id, n)| frame_key(&dir, id, *n))
    .collect();
    assert_eq!(frame_files, expected_frames);
    for (key, (id, n)) in expected_frames.iter().zip([
        ("porch-dog", 0),
        ("street-bikes", 30),
        ("street-bikes", 35),
        ("street-bikes", 40),
    ]) {
        let short = &hash_bytes(&files[key])[..16];
        assert_eq!(*key, format!("frames/{id}/{n:06}-{short}.jpg"));
    }
    assert_eq!(record.version.len(), 16);
    let mut version_files = BTreeMap::new();
    for f in [
        "manifest.jsonl",
        "selection.jsonl",
        "report.html",
        "annotations/coco.json",
        "annotations/labelstudio.json",
        "annotations/labelstudio.xml",
        "annotations/cvat/street-bikes.xml",
        "annotations/cvat/porch-dog.xml",
        "changes.json",
        "removed.jsonl",
    ] {
        let key = record.path(f);
        assert!(
            files.contains_key(&key),
            "{key} missing; have {:?}",
            files.keys()
        );
        version_files.insert(f.to_owned(), hash_bytes(&files[&key]));
    }
    assert_eq!(record.version, emit::version_id(&version_files));
    assert!(files.contains_key("dataset.json"));
    assert_eq!(
        files.len(),
        expected_frames.len() + 11,
        "{:?}",
        files.keys()
    );

    // The record: counts, withheld, failures, the root of the manifest as documented.
    assert_eq!(record.frames, 4);
    assert_eq!(
        record.counts.decisions,
        BTreeMap::from([("exclude".into(), 2), ("include".into(), 3)])
    );
    assert_eq!(record.counts.classes.get("car"), Some(&5));
    assert_eq!(record.counts.classes.get("person"), Some(&3));
    assert_eq!(record.counts.clips["street-bikes"].frames, 3);
    assert_eq!(record.counts.clips["street-bikes"].withheld, 1);
    assert_eq!(record.counts.clips["street-bikes"].faces_masked, 3);
    assert_eq!(record.failed_clips[0].video_id, "garage-corrupt");
    let manifest = &files[&record.path("manifest.jsonl")];
    let leaves: Vec<blake3::Hash> = manifest
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(blake3::hash)
        .collect();
    assert_eq!(leaves.len(), 4);
    let node = |l: &blake3::Hash, r: &blake3::Hash| {
        let mut h = blake3::Hasher::new();
        h.update(&[1]);
        h.update(l.as_bytes());
        h.update(r.as_bytes());
        h.finalize()
    };
    let expected_root = node(&node(&leaves[0], &leaves[1]), &node(&leaves[2], &leaves[3]));
    assert_eq!(record.merkle_root, expected_root.to_hex().to_string());
    assert_eq!(
        std::fs::read(dir.join("dataset.json")).unwrap(),
        record.to_bytes()
    );
    // The dataset ships the included lines only, reduced to id, line and basis: no owner or
    // device id and no excluded clip (regression: the whole selection travelled with every
    // copy of the dataset); exclusions are counted by reason code.
    let shipped = String::from_utf8(files[&record.path("selection.jsonl")].clone()).unwrap();
    let input = String::from_utf8(selection()).unwrap();
    let included: Vec<serde_json::Value> = input
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["decision"] == "include")
        .collect();
    assert_eq!(shipped.lines().count(), included.len());
    for (line, want) in shipped.lines().zip(&included) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["video_id"], want["video_id"]);
        for k in ["kind", "event_id", "event_blake3"] {
            assert_eq!(v["basis"][k], want["basis"][k], "{k}");
        }
        for k in ["clip", "owner_id", "device_id", "reasons"] {
            assert!(v.get(k).is_none(), "{k} in {line}");
        }
    }
    for v in input
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    {
        if v["decision"] == "exclude"
            && let Some(id) = v["video_id"].as_str()
        {
            assert!(!shipped.contains(id), "excluded {id} named in the dataset");
        }
    }
    assert!(!record.counts.excluded_by_reason.is_empty());

    // Manifest lines: sorted by clip, paths and hashes set by the emitter.
    let first: ManifestEntry =
        serde_json::from_slice(manifest.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first.path, expected_frames[0]);
    assert_eq!(first.blake3, hash_bytes(&files[&first.path]));
    assert_eq!(
        first.detections[1].category_id, 18,
        "dog is COCO category 18"
    );

    // COCO: ids from 1, [x, y, w, h] in pixels, official category ids.
    let coco: serde_json::Value =
        serde_json::from_slice(&files[&record.path("annotations/coco.json")]).unwrap();
    assert_eq!(coco["images"][0]["id"], 1);
    assert_eq!(
        coco["images"][0]["file_name"],
        expected_frames[0].strip_prefix("frames/").unwrap()
    );
    assert_eq!(coco["annotations"][0]["id"], 1);
    assert_eq!(
        coco["annotations"][0]["bbox"],
        serde_json::json!([99.0, 124.0, 475.0, 327.0])
    );
    assert_eq!(coco["annotations"][0]["category_id"], 2);
    assert_eq!(coco["categories"].as_array().unwrap().len(), 80);
    // Label Studio: percent coordinates.
    let ls: serde_json::Value =
        serde_json::from_slice(&files[&record.path("annotations/labelstudio.json")]).unwrap();
    let r = &ls[0]["predictions"][0]["result"][0];
    assert_eq!(r["type"], "rectanglelabels");
    assert_eq!(r["value"]["x"], serde_json::json!(12.8906));
    assert_eq!(r["value"]["width"], serde_json::json!(61.849));
    // CVAT: the cyclist is one track over the three frames.
    let cvat = String::from_utf8(files[&record.path("annotations/cvat/street-bikes.xml")].clone())
        .unwrap();
    assert_eq!(cvat.matches("<track ").count(), 3, "{cvat}");
    assert!(
        cvat.contains("<track id=\"0\" label=\"person\" source=\"auto\">\n    <box frame=\"0\"")
    );
    // The report shows only redacted frames, by relative path, and names the decisions.
    let html = String::from_utf8(files[&record.path("report.html")].clone()).unwrap();
    assert!(html.contains(&format!("src=\"../../{}\"", expected_frames[1])));
    // Exclusions by reason code only: the excluded clip and its reason are not named.
    assert!(html.contains("<code>no_basis</code>") && html.contains("<code>invalid_line</code>"));
    assert!(!html.contains("consent was revoked by the owner") && !html.contains("kitchen-cam"));
    assert!(html.contains("moov atom not found") && html.contains("<code>not_a_video</code>"));
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));

    if let Some(keep) = std::env::var_os("CLEARFRAME_KEEP_TEST_DATASET") {
        // For looking at the outputs by hand (scripts/check_report.sh, an annotation tool).
        let status = Command::new("cp")
            .arg("-rT")
            .arg(&dir)
            .arg(&keep)
            .status()
            .unwrap();
        assert!(status.success());
    }

    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.frames, 4);
    assert_eq!(
        report.merkle_root.as_deref(),
        Some(record.merkle_root.as_str())
    );
    assert_eq!(
        run_cli(&VerifyArgs {
            dir: dir.clone(),
            json: false,
            ledger: None,
            as_of: None,
        })
        .unwrap(),
        std::process::ExitCode::SUCCESS
    );

    // Real consumers: pycocotools, datumaro (COCO and CVAT), the Label Studio SDK, FiftyOne.
    assert_consumers_accept(&dir);
}

#[test]
fn any_changed_byte_fails_verify_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dataset");
    build(&dir, frames());
    assert!(verify(&dir).unwrap().ok());
    let files = snapshot(&dir);
    for (rel, bytes) in &files {
        if bytes.is_empty() {
            continue; // removed.jsonl of a first version: no byte to change
        }
        let positions = [0, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1];
        for pos in positions {
            let mut changed = bytes.clone();
            changed[pos] ^= 0x01;
            std::fs::write(dir.join(rel), &changed).unwrap();
            let report = verify(&dir).unwrap();
            assert!(!report.ok(), "flipping byte {pos} of {rel} went unnoticed");
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.path == *rel || p.path.starts_with(&format!("{rel}:"))),
                "flipping byte {pos} of {rel}: problems do not name it: {report}"
            );
            std::fs::write(dir.join(rel), bytes).unwrap();
        }
    }
    assert!(verify(&dir).unwrap().ok());

    // A temporary file a killed writer left beside the frames (`.cf-tmp.<name>.<owner>.<n>`) is
    // no part of any version: listed as pending, not a problem (the rebuild test's kills found
    // one, and verify failed the whole dataset on it).
    let leftover = "frames/street-bikes/.cf-tmp.000035-0123456789abcdef.jpg.1-4026531836-0.1";
    std::fs::write(dir.join(leftover), b"half a frame").unwrap();
    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.pending, [leftover], "{report}");
    std::fs::remove_file(dir.join(leftover)).unwrap();

    // A removed frame, an extra file.
    let gone = frame_key(&dir, "street-bikes", 35);
    std::fs::remove_file(dir.join(&gone)).unwrap();
    let extra = format!("frames/street-bikes/000036-{}.jpg", &hash_bytes(b"x")[..16]);
    std::fs::write(dir.join(&extra), b"x").unwrap();
    let report = verify(&dir).unwrap();
    let named: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(named.contains(&gone.as_str()), "{report}");
    assert!(named.contains(&extra.as_str()), "{report}");
    assert_eq!(
        run_cli(&VerifyArgs {
            dir,
            json: true,
            ledger: None,
            as_of: None,
        })
        .unwrap(),
        std::process::ExitCode::from(1)
    );
}

#[test]
fn verify_checks_each_basis_against_the_recorded_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dataset");
    build(&dir, frames());
    // Rewrite the selection as if porch-dog had been excluded, and re-seal dataset.json so that
    // only the basis check can notice.
    let selection = version_file(&dir, "selection.jsonl");
    let text = String::from_utf8(std::fs::read(&selection).unwrap()).unwrap();
    let edited: String = text
        .lines()
        .map(|l| {
            if l.contains("porch-dog") {
                l.replace("\"include\"", "\"exclude\"") + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(edited, text);
    std::fs::write(&selection, &edited).unwrap();
    let mut record: DatasetRecord =
        serde_json::from_slice(&std::fs::read(dir.join("dataset.json")).unwrap()).unwrap();
    record.files.insert(
        record.path("selection.jsonl"),
        hash_bytes(edited.as_bytes()),
    );
    record.seal = record.compute_seal();
    std::fs::write(dir.join("dataset.json"), record.to_bytes()).unwrap();

    let report = verify(&dir).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(
        report.problems[0].path,
        format!("{}:1", record.path("manifest.jsonl"))
    );
    assert!(
        report.problems[0]
            .what
            .contains("porch-dog is not included"),
        "{report}"
    );
}

#[test]
fn emitter_refuses_frames_the_selection_does_not_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let mut emitter =
        Emitter::create(&tmp.path().join("d"), inputs(), EmitOptions::default()).unwrap();
    let (entry, jpeg) = frames().pop().unwrap();

    let mut wrong_basis = entry.clone();
    wrong_basis.provenance.consent = basis("consent", "ev-0001");
    let err = emitter
        .add_frame(wrong_basis, &jpeg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("porch-dog frame 0") && err.contains("basis"),
        "{err}"
    );

    let mut excluded = entry.clone();
    excluded.video_id = "kitchen-cam".into();
    let err = emitter.add_frame(excluded, &jpeg).unwrap_err().to_string();
    assert!(err.contains("does not include"), "{err}");

    let mut wrong_size = entry.clone();
    wrong_size.width += 1;
    assert!(
        emitter
            .add_frame(wrong_size, &jpeg)
            .unwrap_err()
            .to_string()
            .contains("769x576")
    );

    let mut escape = entry.clone();
    escape.video_id = "../porch-dog".into();
    assert!(emitter.add_frame(escape, &jpeg).is_err());

    emitter.add_frame(entry.clone(), &jpeg).unwrap();
    assert!(
        emitter
            .add_frame(entry, &jpeg)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );

    // A folder with someone else's file is not cleared.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    assert!(Emitter::create(&other, inputs(), EmitOptions::default()).is_err());
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn same_inputs_give_the_same_bytes_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let ra = build(&a, frames());
    let mut reversed = frames();
    reversed.reverse();
    let rb = build(&b, reversed);
    assert_eq!(ra.merkle_root, rb.merkle_root);
    assert_eq!(snapshot(&a), snapshot(&b));
    // Re-emitting into an existing dataset folder replaces it exactly; its change log says every
    // clip was kept.
    let rc = build(&c, frames());
    assert_eq!(snapshot(&a), snapshot(&c));
    let rc2 = build(&c, frames());
    assert_eq!(rc.merkle_root, rc2.merkle_root);
    crate::run_s3::assert_same_dataset(&snapshot(&a), &snapshot(&c));
    let changes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_file(&c, "changes.json")).unwrap()).unwrap();
    assert_eq!(changes["previous_merkle_root"], rc.merkle_root.as_str());
    assert_eq!(
        changes["kept"],
        serde_json::json!(["porch-dog", "street-bikes"])
    );
    assert_eq!(changes["added"], serde_json::json!([]));
    assert_eq!(
        std::fs::read(version_file(&c, "removed.jsonl")).unwrap(),
        b""
    );
    // A different frame changes the root.
    let mut changed = frames();
    changed[0].0.detections[0].score = 0.5;
    let rd = build(&tmp.path().join("d"), changed);
    assert_ne!(ra.merkle_root, rd.merkle_root);
}

#[test]
fn report_renders_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dataset");
    build(&dir, frames());
    let png = tmp.path().join("report.png");
    let out = Command::new("bash")
        .arg(root().join("scripts/check_report.sh"))
        .arg(&dir)
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/check_report.sh failed (hint: it needs Debian `chromium`; scripts/test.sh installs it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = image::open(&png).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (1280, 2400));
    // The page is not blank: many distinct colours (frames, badges, bars).
    let colours: std::collections::BTreeSet<[u8; 3]> = shot
        .pixels()
        .step_by(97)
        .map(|p| [p[0] & 0xF0, p[1] & 0xF0, p[2] & 0xF0])
        .collect();
    assert!(
        colours.len() > 200,
        "only {} colours: the report looks blank",
        colours.len()
    );
}

#[test]
fn a_dataset_with_no_frames_still_verifies() {
    // Every clip excluded or failed: the folder is still a complete, checkable dataset.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    let mut emitter = Emitter::create(&dir, inputs(), EmitOptions::default()).unwrap();
    emitter.clip_failed(ClipFailure {
        video_id: "garage-corrupt".into(),
        code: clearframe::records::FailureCode::Truncated,
        reason: "corrupt".into(),
    });
    let record = emitter.finish().unwrap();
    assert_eq!(record.frames, 0);
    assert_eq!(record.merkle_root, blake3::hash(b"").to_hex().to_string());
    assert_eq!(
        std::fs::read(version_file(&dir, "manifest.jsonl")).unwrap(),
        b""
    );
    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    let html = std::fs::read_to_string(version_file(&dir, "report.html")).unwrap();
    assert!(html.contains("No frames were emitted"));
}

/// A test frame as JPEG with the emitter's settings (the frames here are test material, not the
/// output of redaction, which is all `emit::encode_jpeg` takes: hence the `test-material`
/// constructor, which only this crate's tests enable).
fn jpeg(img: &image::RgbImage) -> FrameJpeg {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, emit::JPEG_QUALITY);
    img.write_with_encoder(enc).unwrap();
    FrameJpeg::test_material(out)
}
