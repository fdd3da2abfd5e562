//! Shared helpers for the integration tests: paths to the real fixtures and the built binary.

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The `clearframe` binary built for this test run.
pub fn clearframe() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("clearframe")
        .expect("the clearframe binary is built with the tests")
}

/// Width and height of a clip's first video stream, by ffprobe.
pub fn video_size(path: &std::path::Path) -> (u32, u32) {
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs (scripts/setup.sh installs ffmpeg)");
    let dims = String::from_utf8(probe.stdout).unwrap();
    let mut it = dims.trim().split(',').map(|v| v.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Decodes a clip with the ffmpeg CLI into memory (rgb24 raw video, no files) through the video
/// filter `filter`, whose output frames are `w`x`h`.
pub fn ffmpeg_frames(
    path: &std::path::Path,
    filter: &str,
    (w, h): (u32, u32),
) -> Vec<image::RgbImage> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args([
            "-vf", filter, "-vsync", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ])
        .output()
        .expect("ffmpeg runs (scripts/setup.sh installs ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame = (w * h * 3) as usize;
    assert!(
        !out.stdout.is_empty() && out.stdout.len().is_multiple_of(frame),
        "ffmpeg gave {} bytes",
        out.stdout.len()
    );
    out.stdout
        .chunks_exact(frame)
        .map(|c| image::RgbImage::from_raw(w, h, c.to_vec()).unwrap())
        .collect()
}

/// Runs the ffmpeg CLI quietly (overwriting outputs); fails the test with ffmpeg's message.
pub fn ffmpeg(args: &[&str]) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs (scripts/setup.sh installs ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The name of the version folder the dataset in `dir` is at (`dataset.json`'s `version`).
pub fn version_of(dir: &std::path::Path) -> String {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("dataset.json")).unwrap()).unwrap();
    record["version"].as_str().unwrap().to_owned()
}

/// `versions/<version>/<name>`, the dataset-relative key of a file of the version folder of the
/// dataset in `dir`.
pub fn version_key(dir: &std::path::Path, name: &str) -> String {
    format!("versions/{}/{name}", version_of(dir))
}

/// The path of a file of the version folder of the dataset in `dir`.
pub fn version_file(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(version_key(dir, name))
}

/// The dataset-relative key of frame `frame` of clip `id`, as the dataset's manifest lists it
/// (`frames/<id>/<frame:06>-<blake3:16>.jpg`).
pub fn frame_key(dir: &std::path::Path, id: &str, frame: u64) -> String {
    let manifest = std::fs::read_to_string(version_file(dir, "manifest.jsonl")).unwrap();
    manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["video_id"] == id && e["frame"] == frame)
        .and_then(|e| e["path"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no frame {frame} of {id} in {}", dir.display()))
}
