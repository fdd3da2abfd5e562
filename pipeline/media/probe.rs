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

/// How the decoder turns the coded picture upright (ffmpeg's own autorotation is off: it also
/// follows per-frame rotation messages, which a file can change mid-stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    /// As coded.
    Upright,
    /// A quarter turn clockwise (`transpose=clock`).
    Clockwise,
    /// A half turn (`hflip,vflip`).
    HalfTurn,
    /// A quarter turn counter-clockwise (`transpose=cclock`).
    CounterClockwise,
}

impl Orientation {
    /// The filters that apply it, each followed by a comma; empty when upright.
    pub fn filters(self) -> &'static str {
        match self {
            Orientation::Upright => "",
            Orientation::Clockwise => "transpose=clock,",
            Orientation::HalfTurn => "hflip,vflip,",
            Orientation::CounterClockwise => "transpose=cclock,",
        }
    }

    fn swaps(self) -> bool {
        matches!(self, Orientation::Clockwise | Orientation::CounterClockwise)
    }
}

/// What ffprobe says about the clip, for the one video stream that is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Absolute index of the decoded stream in the container (`-map 0:<index>`).
    pub stream_index: u32,
    /// Width of a decoded frame: upright, at square pixels (the display size).
    pub width: u32,
    /// Height of a decoded frame: upright, at square pixels.
    pub height: u32,
    /// How the coded picture is turned upright.
    pub orientation: Orientation,
    /// Pixel format of the coded stream (`yuv420p`, `gray`, ...).
    pub pix_fmt: Option<String>,
    /// Average frame rate.
    pub fps: Option<f64>,
    /// Duration in seconds (the stream's, else the container's).
    pub duration: Option<f64>,
    /// Whether the container has an audio stream.
    pub has_audio: bool,
    /// Size and pixel aspect of a frame as the decoder gives it (before turning and
    /// rescaling): every decoded frame must have exactly these.
    pub coded: Coded,
}

/// A decoded picture's size and pixel aspect, as coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coded {
    pub width: u32,
    pub height: u32,
    /// Sample (pixel) aspect ratio, reduced; 1:1 when the stream states none.
    pub sar: (u64, u64),
}

impl Coded {
    /// A stated aspect `n/d` in lowest terms; unknown (`0/1`, `0/0`) is square.
    pub fn aspect(n: u64, d: u64) -> (u64, u64) {
        if n == 0 || d == 0 {
            return (1, 1);
        }
        let (mut a, mut b) = (n, d);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        (n / a, d / a)
    }
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, d) = self.sar;
        write!(
            f,
            "{}x{} with pixel aspect {n}:{d}",
            self.width, self.height
        )
    }
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
    sample_aspect_ratio: Option<String>,
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
    displaymatrix: Option<String>,
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

/// ffprobe gets this long to read a clip's header.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The demuxers a clip may be read with: video containers and single images. Playlists and
/// scripts (`hls`, `concat`, `image2` sequences, ...) are not among them: they open other files,
/// which were never hashed and need not be inside the catalog's folder.
pub const FORMAT_WHITELIST: &str = "mov,matroska,avi,mpegts,flv,asf,ogg,ivf,mpeg,mxf,nut,\
     h264,hevc,m4v,mjpeg,yuv4mpegpipe,gif,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,gif_pipe";

/// The only protocol a clip is read through: the descriptor's `/proc` path is a file.
pub const PROTOCOL_WHITELIST: &str = "file";

/// ffmpeg 5.1's autorotation angle for a display matrix (clockwise degrees, 0..360, rounded
/// to a whole degree as ffmpeg does), and whether the matrix mirrors the picture.
fn rotation_of(m: &[f64; 9]) -> Option<(i64, bool)> {
    let conv = |v: f64| v / 65536.0;
    let s0 = conv(m[0]).hypot(conv(m[3]));
    let s1 = conv(m[1]).hypot(conv(m[4]));
    if s0 == 0.0 || s1 == 0.0 {
        return None;
    }
    let ccw = -(conv(m[1]) / s1).atan2(conv(m[0]) / s0).to_degrees();
    let mut theta = -ccw.round();
    theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
    let mirrored = m[0] * m[4] - m[1] * m[3] < 0.0;
    Some((theta as i64, mirrored))
}

/// The nine numbers of ffprobe's `displaymatrix` text (`00000000: a b u` per row).
fn parse_matrix(text: &str) -> Option<[f64; 9]> {
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter(|t| !t.ends_with(':'))
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    nums.try_into().ok()
}

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
            "stream=index,codec_type,width,height,pix_fmt,sample_aspect_ratio,avg_frame_rate,\
             duration:stream_disposition=attached_pic:stream_side_data=displaymatrix:\
             format=duration",
        ])
        .args(["-format_whitelist", FORMAT_WHITELIST])
        .args(["-protocol_whitelist", PROTOCOL_WHITELIST])
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
    let mut stdout = child.stdout.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut json = Vec::new();
        let read = (&mut stdout).take(MAX_PROBE_JSON).read_to_end(&mut json);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        (json, read.is_ok())
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MediaError::Decode {
                    name: name.to_owned(),
                    status: format!(
                        "ffprobe did not finish within {} s",
                        PROBE_TIMEOUT.as_secs()
                    ),
                    stderr_tail: "  (no error message)".into(),
                });
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(source) => {
                return Err(MediaError::Io {
                    name: name.to_owned(),
                    source,
                });
            }
        }
    };
    let (json, read_ok) = out_thread.join().unwrap_or_default();
    let read: Result<(), ()> = if read_ok { Ok(()) } else { Err(()) };
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
    let unsupported = |detail: String| MediaError::Unsupported {
        name: name.to_owned(),
        detail,
    };
    let orientation = match stream
        .side_data_list
        .iter()
        .find_map(|s| s.displaymatrix.as_deref())
    {
        None => Orientation::Upright,
        Some(text) => {
            let m = parse_matrix(text)
                .ok_or_else(|| unsupported("the display matrix cannot be read".into()))?;
            match rotation_of(&m) {
                Some((_, true)) => {
                    return Err(unsupported("the display matrix mirrors the picture".into()));
                }
                Some((0 | 360, false)) => Orientation::Upright,
                Some((90, false)) => Orientation::Clockwise,
                Some((180, false)) => Orientation::HalfTurn,
                Some((270, false)) => Orientation::CounterClockwise,
                Some((theta, false)) => {
                    return Err(unsupported(format!(
                        "a rotation of {theta} degrees is not a multiple of 90"
                    )));
                }
                None => return Err(unsupported("the display matrix is degenerate".into())),
            }
        }
    };
    // Non-square pixels are decoded at the display aspect: a face squeezed 4:1 in coded pixels
    // is found by neither detector.
    let sar = stream
        .sample_aspect_ratio
        .as_deref()
        .and_then(|r| r.split_once(':'))
        .and_then(|(n, d)| Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok()?)))
        .map_or((1, 1), |(n, d)| Coded::aspect(n, d));
    let display_w = match sar {
        (n, d) if n != d => {
            let wide = (u128::from(w) * u128::from(n) + u128::from(d) / 2) / u128::from(d);
            u32::try_from(wide.max(1)).unwrap_or(u32::MAX)
        }
        _ => w,
    };
    let (width, height) = if orientation.swaps() {
        (h, display_w)
    } else {
        (display_w, h)
    };
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
        orientation,
        pix_fmt: stream.pix_fmt.clone(),
        fps: stream.avg_frame_rate.as_deref().and_then(parse_rate),
        duration: seconds(&stream.duration).or_else(|| seconds(&out.format.as_ref()?.duration)),
        has_audio,
        coded: Coded {
            width: w,
            height: h,
            sar,
        },
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
    fn rotation_follows_ffmpeg() {
        let q = 65536.0;
        let w = 1073741824.0;
        // ffprobe's matrix for `-metadata:s:v rotate=90` (a quarter turn clockwise).
        let cw = [0.0, -q, 0.0, q, 0.0, 0.0, 0.0, 0.0, w];
        assert_eq!(super::rotation_of(&cw), Some((270, false)));
        let id = [q, 0.0, 0.0, 0.0, q, 0.0, 0.0, 0.0, w];
        assert_eq!(super::rotation_of(&id), Some((0, false)));
        let mirror = [-q, 0.0, 0.0, 0.0, q, 0.0, 0.0, 0.0, w];
        assert_eq!(super::rotation_of(&mirror).map(|r| r.1), Some(true));
        // 90.6 degrees rounds to 91, which ffmpeg would rotate by an arbitrary angle.
        let a = 90.6f64.to_radians();
        let odd = [
            a.cos() * q,
            -a.sin() * q,
            0.0,
            a.sin() * q,
            a.cos() * q,
            0.0,
            0.0,
            0.0,
            w,
        ];
        assert!(!matches!(
            super::rotation_of(&odd),
            Some((0 | 90 | 180 | 270, _))
        ));
        let text = "\n00000000:            0      -65536           0\n00000001:        65536           0           0\n00000002:            0           0  1073741824\n";
        assert_eq!(super::parse_matrix(text), Some(cw));
    }

    #[test]
    fn rates_parse() {
        assert_eq!(super::parse_rate("25/1"), Some(25.0));
        assert!((super::parse_rate("30000/1001").unwrap() - 29.97).abs() < 1e-3);
        assert_eq!(super::parse_rate("0/0"), None);
        assert_eq!(super::parse_rate("x"), None);
    }
}
