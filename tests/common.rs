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
