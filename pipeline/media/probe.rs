//! The trusted geometry of a clip: ffprobe's JSON for the chosen video stream.
//!
//! Nothing that shapes pixels is read from ffmpeg's log: that log carries container metadata
//! raw, and a metadata key with newlines in it prints forged `Stream #…` lines. ffprobe's JSON
//! writer escapes every string, and only numeric fields are asked for here (no tags). The decoder
//! then forces ffmpeg's output to exactly the probed size and format (see [`super::Decoder`]),
//! so the size of every raw frame is known by construction.

use std::path::Path;

use serde::Deserialize;

use super::{Limit, MediaError, error_lines};

/// What ffprobe says about the clip, for the one video stream that is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Absolute index of the decoded stream in the container (`-map 0:<index>`).
    pub stream_index: u32,
    /// Width of a decoded frame after rotation.
    pub width: u32,
    /// Height of a decoded frame after rotation.
    pub height: u32,
    /// Display rotation in degrees, as the container states it.
    pub rotation: f64,
    /// Pixel format of the coded stream (`yuv420p`, `gray`, ...).
    pub pix_fmt: Option<String>,
    /// Average frame rate.
    pub fps: Option<f64>,
    /// Duration in seconds (the stream's, else the container's).
    pub duration: Option<f64>,
    /// Whether the container has an audio stream.
    pub has_audio: bool,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    streams: Vec<Stream>,
    #[serde(default)]
    format: Option<Format>,
}

#[derive(Deserialize)]
struct Stream {
    index: u32,
    #[serde(default)]
    codec_type: Option<String>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    pix_fmt: Option<String>,
    #[serde(default)]
    avg_frame_rate: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    disposition: Option<Disposition>,
    #[serde(default)]
    side_data_list: Vec<SideData>,
}

#[derive(Deserialize)]
struct Disposition {
    #[serde(default)]
    attached_pic: u8,
}

#[derive(Deserialize)]
struct SideData {
    #[serde(default)]
    rotation: Option<f64>,
}

#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    duration: Option<String>,
}

/// The ffprobe next to `ffmpeg` (when one is configured), else `ffmpeg-sidecar`'s lookup.
fn ffprobe_for(ffmpeg: Option<&Path>) -> std::path::PathBuf {
    match ffmpeg.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("ffprobe"),
        _ => ffmpeg_sidecar::ffprobe::ffprobe_path(),
    }
}

/// At most this much JSON is read from ffprobe (a container with thousands of streams).
const MAX_PROBE_JSON: u64 = 4 << 20;

/// Probes `path` (a `/proc/<pid>/fd/<n>` of a [`super::SourceFile`]); `name` names the clip in
/// errors, and replaces the path in what ffprobe says.
pub fn probe(
    path: &Path,
    name: &str,
    ffmpeg: Option<&Path>,
    max_pixels: u64,
) -> Result<Probe, MediaError> {
    use std::io::Read;
    let mut child = std::process::Command::new(ffprobe_for(ffmpeg))
        .args(["-v", "error", "-hide_banner", "-print_format", "json"])
        .args([
            "-show_entries",
            "stream=index,codec_type,width,height,pix_fmt,avg_frame_rate,duration:\
             stream_disposition=attached_pic:stream_side_data=rotation:format=duration",
        ])
        .arg("-i")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| MediaError::Spawn {
            name: name.to_owned(),
            source,
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = (&mut stderr).take(1 << 20).read_to_end(&mut s);
        // Drain the rest so ffprobe never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        s
    });
    let mut json = Vec::new();
    let mut stdout = child.stdout.take().expect("piped");
    let read = (&mut stdout).take(MAX_PROBE_JSON).read_to_end(&mut json);
    let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    let status = child.wait().map_err(|source| MediaError::Io {
        name: name.to_owned(),
        source,
    })?;
    let stderr = err_thread.join().unwrap_or_default();
    let said = error_lines(&String::from_utf8_lossy(&stderr), path, name);
    if !status.success() || read.is_err() {
        return Err(MediaError::Decode {
            name: name.to_owned(),
            status: status.to_string(),
            stderr_tail: said,
        });
    }
    let out: Output = serde_json::from_slice(&json).map_err(|e| MediaError::Decode {
        name: name.to_owned(),
        status: format!("ffprobe's answer is not valid JSON ({e})"),
        stderr_tail: said.clone(),
    })?;
    let has_audio = out
        .streams
        .iter()
        .any(|s| s.codec_type.as_deref() == Some("audio"));
    let video: Vec<&Stream> = out
        .streams
        .iter()
        .filter(|s| s.codec_type.as_deref() == Some("video"))
        .collect();
    // A cover picture is a video stream too: prefer a real one.
    let Some(stream) = video
        .iter()
        .find(|s| s.disposition.as_ref().is_none_or(|d| d.attached_pic == 0))
        .or(video.first())
    else {
        return Err(MediaError::NoVideo {
            name: name.to_owned(),
            stderr_tail: said,
        });
    };
    let (Some(w @ 1..), Some(h @ 1..)) = (stream.width, stream.height) else {
        return Err(MediaError::Decode {
            name: name.to_owned(),
            status: "the video stream has no frame size".into(),
            stderr_tail: said,
        });
    };
    let rotation = stream
        .side_data_list
        .iter()
        .find_map(|s| s.rotation)
        .filter(|r| r.is_finite())
        .unwrap_or(0.0);
    // ffmpeg's autorotation transposes for a quarter turn either way and keeps the size for any
    // other angle.
    let quarter = (rotation.round() as i64).rem_euclid(180) == 90;
    let (width, height) = if quarter { (h, w) } else { (w, h) };
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(MediaError::Limit {
            name: name.to_owned(),
            limit: Limit::Pixels,
            detail: format!("frame {width}x{height} exceeds the limit of {max_pixels} pixels"),
        });
    }
    let seconds = |s: &Option<String>| {
        s.as_deref()
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|d| d.is_finite() && *d >= 0.0)
    };
    Ok(Probe {
        stream_index: stream.index,
        width,
        height,
        rotation,
        pix_fmt: stream.pix_fmt.clone(),
        fps: stream.avg_frame_rate.as_deref().and_then(parse_rate),
        duration: seconds(&stream.duration).or_else(|| seconds(&out.format.as_ref()?.duration)),
        has_audio,
    })
}

/// `"30000/1001"` -> 29.97; `0/0` and garbage -> None.
fn parse_rate(r: &str) -> Option<f64> {
    let (n, d) = r.split_once('/').unwrap_or((r, "1"));
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (d > 0.0 && n > 0.0)
        .then(|| n / d)
        .filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_parse() {
        assert_eq!(super::parse_rate("25/1"), Some(25.0));
        assert!((super::parse_rate("30000/1001").unwrap() - 29.97).abs() < 1e-3);
        assert_eq!(super::parse_rate("0/0"), None);
        assert_eq!(super::parse_rate("x"), None);
    }
}
