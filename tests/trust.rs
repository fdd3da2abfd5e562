//! Trust boundaries, end to end through the real CLI: hostile clips, hostile catalog lines and
//! hostile files behind a path. Every clip is decoded or reported with its reason code; none
//! hangs, none panics, none vanishes from the counts; no failure record carries clip content.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{clearframe, ffmpeg, fixture};

const AS_OF: &str = "2026-11-01T00:00:00Z";

pub(crate) fn grant_line() -> String {
    json!({"event_id":"g-1","type":"consent.granted","owner_id":"acct-1","at":"2026-01-01T00:00:00Z",
        "scope":["ml_training"],"devices":["*"],"placements":["outdoor","indoor"],
        "document":{"uri":"consent-docs/acct-1.txt","blake3":"11cf89380cb0190f2ec9705aea3fc2f44f2f9982d53584cae92341e2373b88c8"}})
    .to_string()
}

pub(crate) fn clip_line(id: &str, uri: &str) -> Value {
    json!({"video_id": id, "uri": uri, "owner_id": "acct-1", "device_id": "dev-1",
        "placement": "outdoor", "captured_at": "2026-06-01T00:00:00Z"})
}

/// What a clip of the sweep must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Decoded: at least one frame emitted, no failure, at this size.
    Frames(u32, u32),
    /// Failed with one of these codes.
    Fails(&'static [&'static str]),
}

/// `clearframe run` on `lines` with the grant above, `extra` arguments (default `--fps 2`).
fn run_catalog(dir: &Path, lines: &[String], extra: &[&str]) -> (i32, Value, String) {
    std::fs::write(dir.join("catalog.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    let out = dir.join("out");
    let a = clearframe()
        .args(["run", "--as-of", AS_OF, "--catalog"])
        .arg(dir.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .arg("--out")
        .arg(&out)
        .args(if extra.is_empty() {
            &["--fps", "2"][..]
        } else {
            extra
        })
        .timeout(Duration::from_secs(600))
        .assert();
    let o = a.get_output();
    let code = o
        .status
        .code()
        .expect("not killed by a signal (no hang, no crash)");
    let record: Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    (
        code,
        record,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_bad_input_corpus_is_decoded_or_reported_never_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let media = dir.join("media");
    std::fs::create_dir(&media).unwrap();
    let bad = fixture("bad/media");
    let mut expect: BTreeMap<String, Expect> = BTreeMap::new();
    use Expect::*;
    for (file, e) in [
        ("zero-bytes.mp4", Fails(&["not_a_video"])),
        ("random-bytes.mp4", Fails(&["not_a_video"])),
        ("png-named.mp4", Frames(64, 64)),
        ("truncated-10.mp4", Fails(&["truncated", "not_a_video"])),
        ("truncated-50.mp4", Fails(&["truncated"])),
        ("truncated-90.mp4", Fails(&["truncated"])),
        ("huge-header.mp4", Fails(&["limit_pixels", "not_a_video"])),
        ("huge-header-png.mp4", Fails(&["not_a_video"])),
        ("huge-header.y4m", Fails(&["not_a_video"])),
        ("huge-sps-8192x8192.mp4", Fails(&["limit_pixels"])),
        ("container-claims-30000.mp4", Frames(16, 16)),
        ("audio-only.m4a", Fails(&["no_video_stream"])),
        ("zero-frames.mp4", Fails(&["no_frames", "truncated"])),
        ("one-by-one.mkv", Frames(2, 1)),      // 40:17
        ("three-by-five.mkv", Frames(12, 5)),  // 200:51
        ("odd-641x361.mp4", Frames(849, 361)), // pixel aspect 14440:10897
        ("gray.mkv", Frames(64, 48)),
        ("ten-bit.mkv", Frames(320, 136)),
        ("mjpeg.avi", Frames(160, 68)),
        ("mpeg4-part2.avi", Frames(160, 68)),
        ("vfr.mkv", Frames(160, 68)),
        ("gap-one-hour.mkv", Fails(&["limit_duration"])),
        ("rotated-90.mp4", Frames(136, 320)),
        ("forged-geometry.mp4", Frames(640, 272)),
        ("forged-geometry.mkv", Frames(640, 272)),
        ("forged-showinfo.mp4", Frames(640, 272)),
        ("metadata-then-corrupt.mp4", Fails(&["truncated"])),
        ("size-change.ts", Fails(&["stream_inconsistent"])),
        ("sar-change.ts", Fails(&["stream_inconsistent"])),
    ] {
        std::fs::copy(bad.join(file), media.join(file)).unwrap();
        expect.insert(file.to_string(), e);
    }
    // Files behind a path: a FIFO (a reader would block, or get other bytes than were hashed),
    // a symlink out of the catalog's folder, a missing file, a folder.
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("media/carphone_pristine.mp4"),
        outside.path().join("x.mp4"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path().join("x.mp4"), media.join("link-out.mp4")).unwrap();
    std::os::unix::fs::symlink("gray.mkv", media.join("link-in.mkv")).unwrap();
    let fifo = media.join("fifo.mp4");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir(media.join("folder.mp4")).unwrap();
    for (file, e) in [
        ("link-out.mp4", Fails(&["source_outside_folder"])),
        ("link-in.mkv", Frames(64, 48)),
        ("fifo.mp4", Fails(&["source_not_regular"])),
        ("folder.mp4", Fails(&["source_not_regular"])),
        ("missing.mp4", Fails(&["source_missing"])),
    ] {
        expect.insert(file.to_string(), e);
    }
    // Found by review: a playlist or a concat script makes ffmpeg open files that were never
    // hashed, outside the catalog's folder; a rotation that is not a multiple of 90 degrees (or a
    // mirror) made ffprobe and ffmpeg disagree on the picture; pixels 4:1 wide hid a face from
    // both detectors.
    let secret = outside.path().join("x.mp4");
    std::fs::write(
        media.join("playlist.mp4"),
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n",
            secret.display()
        ),
    )
    .unwrap();
    std::fs::write(
        media.join("concat.mp4"),
        format!("ffconcat version 1.0\nfile '{}'\n", secret.display()),
    )
    .unwrap();
    let car = fixture("media/carphone_pristine.mp4");
    let plain = dir.join("plain.mp4");
    ffmpeg(&[
        "-i",
        car.to_str().unwrap(),
        "-t",
        "1",
        "-an",
        "-c:v",
        "libx264",
        plain.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&plain).unwrap();
    std::fs::write(media.join("rot-90.6.mp4"), with_matrix(&bytes, 90.6, false)).unwrap();
    std::fs::write(media.join("mirrored.mp4"), with_matrix(&bytes, 0.0, true)).unwrap();
    std::fs::write(media.join("rot-90.0.mp4"), with_matrix(&bytes, 90.0, false)).unwrap();
    ffmpeg(&[
        "-i",
        car.to_str().unwrap(),
        "-t",
        "1",
        "-an",
        "-vf",
        "scale=88:288,setsar=4",
        "-c:v",
        "libx264",
        media.join("sar-4.mp4").to_str().unwrap(),
    ]);
    // Found by review: a left crop in the SPS (ffprobe: 168 wide) decoded 176 wide, the crop
    // rounded to the decoder's alignment, and failed as a size change.
    ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-c",
        "copy",
        "-bsf:v",
        "h264_metadata=crop_left=8",
        media.join("crop-left-8.mp4").to_str().unwrap(),
    ]);
    for (file, e) in [
        ("crop-left-8.mp4", Frames(184, 144)), // 168 at 128:117
        ("playlist.mp4", Fails(&["not_a_video"])),
        ("concat.mp4", Fails(&["not_a_video"])),
        ("rot-90.6.mp4", Fails(&["unsupported"])),
        ("mirrored.mp4", Fails(&["unsupported"])),
        ("rot-90.0.mp4", Frames(144, 193)),
        ("sar-4.mp4", Frames(352, 288)),
    ] {
        expect.insert(file.to_string(), e);
    }
    let mut lines: Vec<String> = expect
        .keys()
        .enumerate()
        .map(|(i, f)| clip_line(&format!("c{i:02}"), &format!("media/{f}")).to_string())
        .collect();
    // Tampering: a catalog blake3 that does not match the bytes.
    std::fs::copy(fixture("media/bikes.mp4"), media.join("tampered.mp4")).unwrap();
    let mut t = clip_line("c-tampered", "media/tampered.mp4");
    t["blake3"] = json!("0".repeat(64));
    lines.push(t.to_string());
    let ids: BTreeMap<String, String> = expect
        .keys()
        .enumerate()
        .map(|(i, f)| (format!("c{i:02}"), f.clone()))
        .collect();

    let (code, record, stderr) = run_catalog(dir, &lines, &[]);
    assert_eq!(code, 1, "some clips fail, the batch goes on: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let failed: BTreeMap<String, (String, String)> = record["failed_clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["video_id"].as_str().unwrap().to_owned(),
                (
                    f["code"].as_str().unwrap().to_owned(),
                    f["reason"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let manifest = std::fs::read_to_string(crate::common::version_file(
        &dir.join("out"),
        "manifest.jsonl",
    ))
    .unwrap();
    let mut sizes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in manifest.lines() {
        let e: Value = serde_json::from_str(l).unwrap();
        sizes.insert(
            e["video_id"].as_str().unwrap().to_owned(),
            (e["width"].as_u64().unwrap(), e["height"].as_u64().unwrap()),
        );
    }
    let mut problems = Vec::new();
    for (id, file) in &ids {
        let got_fail = failed.get(id);
        match expect[file] {
            Frames(w, h) => {
                if let Some((c, r)) = got_fail {
                    problems.push(format!("{file}: expected frames, failed {c}: {r}"));
                } else if sizes.get(id) != Some(&(u64::from(w), u64::from(h))) {
                    problems.push(format!(
                        "{file}: expected {w}x{h} frames, got {:?}",
                        sizes.get(id)
                    ));
                }
            }
            Fails(codes) => match got_fail {
                Some((c, r)) if codes.contains(&c.as_str()) => {
                    if !r.contains(&format!("media/{file}")) || r.contains("/proc/") {
                        problems.push(format!("{file}: the reason must name the catalog URI: {r}"));
                    }
                }
                other => problems.push(format!("{file}: expected {codes:?}, got {other:?}")),
            },
        }
    }
    match failed.get("c-tampered") {
        Some((c, _)) if c == "tampered" => {}
        other => problems.push(format!("tampered: {other:?}")),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // No failure record carries container metadata (title, comment, GPS location).
    let text = std::fs::read_to_string(dir.join("out/dataset.json")).unwrap()
        + &std::fs::read_to_string(crate::common::version_file(&dir.join("out"), "report.html"))
            .unwrap();
    for secret in ["Secret", "51.5007", "0.1246", "320x544"] {
        assert!(!text.contains(secret), "{secret} leaked into the dataset");
        assert!(!stderr.contains(secret), "{secret} leaked into the log");
    }
    // Regression: frames waiting in the face hold when decoding failed vanished (neither emitted
    // nor withheld). Every frame decoded before the damage is emitted or withheld, with why.
    let withheld: Vec<&Value> = record["withheld"].as_array().unwrap().iter().collect();
    for file in [
        "truncated-50.mp4",
        "truncated-90.mp4",
        "metadata-then-corrupt.mp4",
    ] {
        let id = ids.iter().find(|(_, f)| *f == file).unwrap().0;
        let p = media.join(file);
        let raw = std::process::Command::new("ffmpeg")
            .args(["-v", "quiet", "-i"])
            .arg(&p)
            .args([
                "-vf",
                "fps=2:round=up",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "gray",
                "-",
            ])
            .output()
            .unwrap()
            .stdout;
        let (w, h) = crate::common::video_size(&p);
        let decoded = raw.len() as u64 / u64::from(w * h);
        assert!(decoded > 0, "{file}");
        let emitted = manifest
            .lines()
            .filter(|l| l.contains(&format!("\"video_id\":\"{id}\"")))
            .count() as u64;
        let held = withheld
            .iter()
            .filter(|w| w["video_id"] == id.as_str())
            .count() as u64;
        assert_eq!(
            emitted + held,
            decoded,
            "{file}: {emitted} emitted + {held} withheld of {decoded} decoded"
        );
    }
    // The face in the clip with 4:1 pixels is found and masked at its display aspect.
    let sar = ids.iter().find(|(_, f)| *f == "sar-4.mp4").unwrap().0;
    assert!(
        record["counts"]["clips"][sar.as_str()]["faces_masked"]
            .as_u64()
            .unwrap()
            > 0,
        "{}",
        record["counts"]["clips"][sar.as_str()]
    );
    // Nothing of the file behind the playlist was decoded.
    let secret_hash = clearframe::hashing::hash_file(&secret).unwrap();
    assert!(!manifest.contains(&secret_hash));
    // Every clip accounted for: emitted, or failed.
    let n = ids.len() + 1;
    assert_eq!(sizes.len() + failed.len(), n, "{sizes:?} {failed:?}");
}

#[test]
fn hostile_catalog_lines_are_excluded_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    std::fs::copy(
        fixture("media/carphone_pristine.mp4"),
        dir.join("media/car.mp4"),
    )
    .unwrap();
    let good = clip_line("ok-1", "media/car.mp4").to_string();
    let mut text: Vec<u8> = b"\xEF\xBB\xBF".to_vec(); // a BOM
    text.extend_from_slice(good.as_bytes());
    text.extend_from_slice(b"\r\n"); // CRLF
    text.extend_from_slice(b"{\"video_id\":\"bad\xff\xfeutf8\"}\n"); // invalid UTF-8
    text.extend_from_slice(
        clip_line("caf\u{0065}\u{0301}", "media/car.mp4")
            .to_string()
            .as_bytes(),
    );
    text.push(b'\n'); // a non-NFC (and non-ASCII) id
    let mut huge = clip_line("huge", "media/car.mp4");
    huge["note"] = json!("x".repeat(10 << 20));
    text.extend_from_slice(huge.to_string().as_bytes()); // 10 MB
    text.push(b'\n');
    for uri in [
        "s3://bucket/../other/x.mp4",
        "s3://bucket//x.mp4",
        "s3://Bad_Bucket!/x.mp4",
        "../x.mp4",
        "/etc/passwd",
    ] {
        text.extend_from_slice(
            clip_line(&format!("u{}", uri.len()), uri)
                .to_string()
                .as_bytes(),
        );
        text.push(b'\n');
    }
    std::fs::write(dir.join("catalog.jsonl"), &text).unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    let a = clearframe()
        .args(["select", "--as-of", AS_OF, "--catalog"])
        .arg(dir.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .arg("--out")
        .arg(dir.join("sel"))
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1);
    let _ = a;
    let sel = std::fs::read_to_string(dir.join("sel/selection.jsonl")).unwrap();
    let lines: Vec<Value> = sel
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9, "one decision per catalog line");
    assert_eq!(
        lines[0]["decision"], "include",
        "BOM and CRLF do not spoil a line"
    );
    assert_eq!(lines[0]["video_id"], "ok-1");
    for l in &lines[1..] {
        assert_eq!(l["decision"], "exclude", "{l}");
        assert_eq!(l["reason_codes"][0], "invalid_line", "{l}");
    }
}

#[test]
fn ids_that_differ_by_a_suffix_do_not_collide_in_the_work_folder() {
    // Regression: `redacted/a.json` was both the record of `a` and the frame folder of
    // `a.json`; the second clip aborted `redact` for the whole batch.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    std::fs::copy(
        fixture("media/carphone_pristine.mp4"),
        dir.join("media/car.mp4"),
    )
    .unwrap();
    let lines = [
        clip_line("a", "media/car.mp4").to_string(),
        clip_line("a.json", "media/car.mp4").to_string(),
    ];
    std::fs::write(dir.join("catalog.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    let work = dir.join("work");
    clearframe()
        .args(["select", "--as-of", AS_OF, "--catalog"])
        .arg(dir.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .arg("--out")
        .arg(&work)
        .assert()
        .success();
    for stage in ["redact", "detect"] {
        let mut c = clearframe();
        c.arg(stage).arg("--work").arg(&work);
        if stage == "redact" {
            c.args(["--fps", "1"]);
        }
        c.timeout(Duration::from_secs(300)).assert().success();
    }
    clearframe()
        .arg("emit")
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(dir.join("ds"))
        .assert()
        .success();
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ds/dataset.json")).unwrap()).unwrap();
    assert!(record["counts"]["clips"]["a"]["frames"].as_u64().unwrap() > 0);
    assert!(
        record["counts"]["clips"]["a.json"]["frames"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn a_run_writes_nowhere_but_its_output() {
    // Regression: ONNX Runtime wrote a telemetry database (with a device id) under the user's
    // cache folder on every run, despite `with_telemetry(false)`.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for d in ["home", "tmp", "cwd", "media"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    std::fs::copy(
        fixture("media/carphone_pristine.mp4"),
        dir.join("media/car.mp4"),
    )
    .unwrap();
    std::fs::write(
        dir.join("catalog.jsonl"),
        clip_line("car", "media/car.mp4").to_string() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    clearframe()
        .current_dir(dir.join("cwd"))
        .env(
            "ORT_DYLIB_PATH",
            clearframe::inference::library_path().expect("ONNX Runtime is installed"),
        )
        .env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"))
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("ORT_DISABLE_TELEMETRY")
        .args(["run", "--as-of", AS_OF, "--fps", "1", "--catalog"])
        .arg(dir.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .arg("--out")
        .arg(dir.join("out"))
        .timeout(Duration::from_secs(300))
        .assert()
        .success();
    for d in ["home", "tmp", "cwd", "media"] {
        let left: Vec<_> = walk(&dir.join(d));
        let want = usize::from(d == "media");
        assert_eq!(left.len(), want, "{d} holds {left:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// An mp4 with its video track's display matrix (`tkhd`) set to a rotation of `degrees`
/// counter-clockwise, mirrored when `mirror`.
fn with_matrix(mp4: &[u8], degrees: f64, mirror: bool) -> Vec<u8> {
    let mut b = mp4.to_vec();
    let i = b.windows(4).position(|w| w == b"tkhd").expect("a tkhd box");
    let version = b[i + 4];
    // version+flags, times, track id, reserved, duration, reserved, layer, group, volume, reserved
    let off = i
        + 4
        + 4
        + if version == 0 { 8 } else { 16 }
        + 4
        + 4
        + if version == 0 { 4 } else { 8 }
        + 8
        + 8;
    let t = degrees.to_radians();
    let f = if mirror { -1.0 } else { 1.0 };
    let q = |v: f64| (v * 65536.0).round() as i32;
    let m: [i32; 9] = [
        q(t.cos() * f),
        q(t.sin() * f),
        0,
        q(-t.sin()),
        q(t.cos()),
        0,
        0,
        0,
        1 << 30,
    ];
    for (k, v) in m.iter().enumerate() {
        b[off + 4 * k..off + 4 * k + 4].copy_from_slice(&v.to_be_bytes());
    }
    b
}

#[test]
fn a_size_or_pixel_aspect_change_mid_stream_fails_the_clip() {
    // Found by review: the probe reads a stream's start; a new SPS later on changed the frames'
    // size (704x144, then 176x144) or pixel aspect (1:1, then 1:4), and the forced scale
    // stretched them silently to the probed geometry. Each decoded frame is now checked against
    // the probe, at the clip's own rate and sampled.
    use clearframe::media::{DecodeOptions, Decoder, Input, MediaError, Sampling};
    for (file, changed) in [
        ("size-change.ts", "is 176x144 with pixel aspect 1:1"),
        ("sar-change.ts", "is 176x144 with pixel aspect 1:4"),
    ] {
        for sampling in [Sampling::All, Sampling::Fps(2.0)] {
            let opts = DecodeOptions {
                sampling,
                ..Default::default()
            };
            let mut frames = 0;
            let mut failure = None;
            for f in
                Decoder::open(Input::Path(fixture(&format!("bad/media/{file}"))), &opts).unwrap()
            {
                match f {
                    Ok(_) => frames += 1,
                    Err(e) => failure = Some(e),
                }
            }
            match failure {
                Some(MediaError::Stream { detail, .. }) => {
                    assert!(detail.contains(changed), "{file} {sampling:?}: {detail}");
                }
                other => panic!("{file} {sampling:?}: {other:?} after {frames} frames"),
            }
            assert!(frames <= 6, "{file} {sampling:?}: {frames} frames passed");
        }
    }
}

#[test]
fn a_per_frame_rotation_message_cannot_move_pixels_past_a_zone() {
    // Found by review: ffmpeg's autorotation follows H.264 display-orientation messages frame by
    // frame, so one frame turned half round carried the zone's pixels (red here) to the opposite
    // corner, uncovered. Decoding now ignores them and turns every frame by the container's
    // matrix only.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    let (q1, q2, list) = (dir.join("q1.mp4"), dir.join("q2.mp4"), dir.join("list.txt"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=gray:s=320x240:r=5:d=1",
        "-vf",
        "drawbox=x=0:y=0:w=160:h=120:color=red:t=fill",
        "-c:v",
        "libx264",
        "-crf",
        "5",
        "-pix_fmt",
        "yuv444p",
        "-x264-params",
        "keyint=5",
        q1.to_str().unwrap(),
    ]);
    ffmpeg(&[
        "-i",
        q1.to_str().unwrap(),
        "-c",
        "copy",
        "-bsf:v",
        "h264_metadata=display_orientation=insert:rotate=180",
        q2.to_str().unwrap(),
    ]);
    std::fs::write(
        &list,
        format!("file '{}'\nfile '{}'\n", q1.display(), q2.display()),
    )
    .unwrap();
    let mix = dir.join("media/mix.mp4");
    ffmpeg(&[
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        list.to_str().unwrap(),
        "-c",
        "copy",
        mix.to_str().unwrap(),
    ]);
    let mut line = clip_line("mix", "media/mix.mp4");
    line["privacy_zones"] = json!([[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]]);
    // At the clip's own rate: the turned frame is the first after the change. ffmpeg rebuilds
    // its filters where the side data changes and loses the frames its sampler held: the clip
    // fails rather than silently missing them, and no emitted frame shows the zone's pixels.
    let (code, record, stderr) = run_catalog(dir, &[line.to_string()], &["--fps", "5"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        record["failed_clips"][0]["code"], "stream_inconsistent",
        "{record}"
    );
    let frames = dir.join("out/frames/mix");
    for e in std::fs::read_dir(&frames).into_iter().flatten() {
        let img = image::open(e.unwrap().path()).unwrap().to_rgb8();
        let red = img
            .pixels()
            .filter(|p| p.0[0] > 150 && p.0[1] < 90 && p.0[2] < 90)
            .count();
        assert!(red < 50, "{red} red pixels outside the zone");
    }
}

#[test]
fn each_limit_fails_its_clip_with_its_own_code_and_the_batch_goes_on() {
    // The bounds of `[limits]`, each a clip failure with its own reason code, checked before the
    // work they bound: frames after sampling, duration, probed pixels, bytes, zones and points.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    for (src, dst) in [
        ("media/carphone_pristine.mp4", "carphone.mp4"),
        ("media/bikes.mp4", "bikes.mp4"),
        ("media/bigbuckbunny.mp4", "bunny.mp4"),
        ("bad/media/gap-one-hour.mkv", "gap.mkv"),
        ("bad/media/png-named.mp4", "still.mp4"),
    ] {
        std::fs::copy(fixture(src), dir.join("media").join(dst)).unwrap();
    }
    std::fs::write(
        dir.join("limits.toml"),
        "[limits]\nmax_frames = 3\nmax_duration_s = 100\nmax_pixels = 100000\n\
         max_clip_bytes = 1000000\nmax_zones = 2\nmax_zone_points = 5\n",
    )
    .unwrap();
    let square = json!([[0.1, 0.1], [0.2, 0.1], [0.2, 0.2], [0.1, 0.2]]);
    let mut zones3 = clip_line("zones", "media/still.mp4");
    zones3["privacy_zones"] = json!([square, square, square]);
    let mut points6 = clip_line("points", "media/still.mp4");
    points6["privacy_zones"] = json!([[
        [0.1, 0.1],
        [0.2, 0.1],
        [0.3, 0.2],
        [0.2, 0.3],
        [0.1, 0.3],
        [0.0, 0.2]
    ]]);
    let mut ok = clip_line("ok", "media/still.mp4");
    ok["privacy_zones"] = json!([square, square]);
    let lines = [
        clip_line("frames", "media/carphone.mp4"),
        clip_line("duration", "media/gap.mkv"),
        clip_line("pixels", "media/bikes.mp4"),
        clip_line("bytes", "media/bunny.mp4"),
        zones3,
        points6,
        ok,
    ]
    .map(|l| l.to_string());
    let cfg = dir.join("limits.toml");
    let (code, record, stderr) = run_catalog(
        dir,
        &lines,
        &["--fps", "5", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{stderr}");
    let failed: BTreeMap<String, (String, String)> = record["failed_clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["video_id"].as_str().unwrap().to_owned(),
                (
                    f["code"].as_str().unwrap().to_owned(),
                    f["reason"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    for (id, code, says) in [
        ("frames", "limit_frames", "more than the limit of 3 frames"),
        ("duration", "limit_duration", "over the limit of 100 s"),
        (
            "pixels",
            "limit_pixels",
            "exceeds the limit of 100000 pixels",
        ),
        ("bytes", "limit_bytes", "1000000"),
        (
            "zones",
            "limit_zones",
            "3 privacy zones, over the limit of 2",
        ),
        ("points", "limit_zones", "has 6 points, over the limit of 5"),
    ] {
        let (c, r) = failed
            .get(id)
            .unwrap_or_else(|| panic!("{id} not failed: {record}"));
        assert_eq!(c, code, "{id}: {r}");
        assert!(r.contains(says), "{id}: {r}");
    }
    assert!(!failed.contains_key("ok"), "{record}");
    assert_eq!(record["counts"]["clips"]["ok"]["frames"], 1, "{record}");
}

#[test]
fn a_panic_in_face_detection_fails_the_clip_never_reports_it_done() {
    // Regression: the face-detection thread was joined with `unwrap_or_default()`, so a panic in
    // it ended the clip early and reported it done with its frames cut short, in `run` and in
    // `anonymize`. A real panic (injected at the third frame; debug builds only) now fails the
    // clip, and the batch goes on.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    let car = fixture("media/carphone_pristine.mp4");
    std::fs::copy(&car, dir.join("media/carphone.mp4")).unwrap();
    std::fs::copy(
        fixture("bad/media/png-named.mp4"),
        dir.join("media/still.mp4"),
    )
    .unwrap();
    let lines = [
        clip_line("car", "media/carphone.mp4").to_string(),
        clip_line("still", "media/still.mp4").to_string(),
    ];
    std::fs::write(dir.join("catalog.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    let a = clearframe()
        .env("CLEARFRAME_FAULT", "face_detect=2")
        .args(["run", "--as-of", AS_OF, "--fps", "2", "--catalog"])
        .arg(dir.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .arg("--out")
        .arg(dir.join("out"))
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/dataset.json")).unwrap()).unwrap();
    let failed = record["failed_clips"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{record}");
    assert_eq!(failed[0]["video_id"], "car");
    assert_eq!(failed[0]["code"], "internal", "{record}");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("face detection stopped unexpectedly"),
        "{record} {stderr}"
    );
    // The frame the panic hit is in no count as done; the other clip went on.
    assert_eq!(record["counts"]["clips"]["still"]["frames"], 1, "{record}");

    let out = dir.join("anon");
    let a = clearframe()
        .env("CLEARFRAME_FAULT", "face_detect=2")
        .args(["anonymize"])
        .arg(&car)
        .arg(fixture("media/astronaut.png"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        stderr.contains("face detection stopped unexpectedly"),
        "{stderr}"
    );
    let written: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["astronaut_anonymized.png"], "{stderr}");
}
