//! ffmpeg decoding into memory and encoding of redacted output.
//!
//! A clip is opened once as a [`SourceFile`] (a descriptor, hashed; see [`source`]), probed by
//! ffprobe for its geometry ([`probe`]), and decoded by `ffmpeg` (through `ffmpeg-sidecar`) into
//! raw RGB24 frames on a pipe; frames never touch the disk. The output size and pixel format are
//! forced to the probed ones (`scale=W:H,format=rgb24`), so every frame on the pipe has exactly
//! `W*H*3` bytes by construction; the pipe must end on a frame boundary and carry exactly as many
//! frames as ffmpeg's own counter reports, or the clip fails.
//!
//! ffmpeg's log is hostile text: it prints container metadata raw, so a file can forge any line
//! in it. The only log lines trusted are those of this run's own `showinfo` filters, named with
//! a per-run random token the file cannot know (`showinfo@o<token>`); they give each frame's
//! presentation time (so variable frame rate clips keep their real times) and, with sampling,
//! which decoded frame each sample shows (a frame is never emitted twice). Error text kept for a
//! failed clip comes only from ffmpeg's `[error]`-level lines after its header (metadata is
//! printed in the header and also stripped from the output), with run-specific addresses and
//! the descriptor path removed, so failure records are reproducible and carry no clip content.
//!
//! Encoding ([`crate::redact::Encoder`]) takes [`RedactedFrame`]s only — unredacted pixels cannot be written —
//! and feeds them to an `ffmpeg` (libx264, mp4) child from a writer thread over a bounded channel.

mod decode;
mod log;
pub mod probe;
pub mod source;

use std::collections::VecDeque;

pub use decode::Decoder;
#[cfg(test)]
use decode::*;
use log::*;
pub(crate) use log::{Tail, strip_addresses};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use ffmpeg_sidecar::child::FfmpegChild;
use ffmpeg_sidecar::command::FfmpegCommand;
use image::RgbImage;

pub use probe::Probe;
pub use source::{SourceError, SourceFile};

/// How many of ffmpeg's error lines an error keeps.
const ERROR_LINES: usize = 4;
/// Longest error line kept (characters).
const ERROR_LINE_CHARS: usize = 160;

/// Largest frame accepted by default (8K UHD); larger frames are a [`Limit::Pixels`] error.
pub const DEFAULT_MAX_PIXELS: u64 = 7680 * 4320;

/// Which per-clip limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Frame pixels (probed geometry).
    Pixels,
    /// Clip duration (probed, or the time of a decoded frame or sample).
    Duration,
    /// Frames decoded from one clip.
    Frames,
    /// Bytes of the clip.
    Bytes,
}

/// Errors of decoding and encoding, each naming the clip (or output) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// ffmpeg could not be started (not installed, not executable).
    #[error("{name}: cannot start ffmpeg: {source}\nhint: install ffmpeg (scripts/setup.sh)")]
    Spawn {
        /// The clip or output concerned.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The clip's bytes could not be opened (not a regular file, outside its folder, changed).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// ffmpeg rejected the input: not a video, unreadable, corrupt or truncated.
    #[error("{name}: cannot decode ({status}); ffmpeg said:\n{stderr_tail}")]
    Decode {
        /// The clip concerned.
        name: String,
        /// ffmpeg's exit status, as text.
        status: String,
        /// ffmpeg's error lines.
        stderr_tail: String,
    },
    /// The input ended in the middle of a frame, or ffmpeg stopped with an error after some frames.
    #[error(
        "{name}: truncated or corrupt after {frames} frames ({status}); ffmpeg said:\n{stderr_tail}"
    )]
    Truncated {
        /// The clip concerned.
        name: String,
        /// Frames decoded before the failure.
        frames: u64,
        /// ffmpeg's exit status, as text.
        status: String,
        /// ffmpeg's error lines.
        stderr_tail: String,
    },
    /// ffmpeg was stopped part-way through the clip from outside (SIGKILL, SIGTERM, SIGINT,
    /// SIGHUP: the out-of-memory killer, an operator) or ran out of memory: not the clip's
    /// fault, so not a truncated clip; the next run tries it again.
    #[error(
        "{name}: ffmpeg was stopped by {cause} after {frames} frames (out of memory, or stopped from outside); the clip is not at fault and the next run tries it again"
    )]
    Killed {
        /// The clip concerned.
        name: String,
        /// Frames decoded before ffmpeg stopped.
        frames: u64,
        /// What stopped it (`SIGKILL`, `an out-of-memory error`).
        cause: &'static str,
    },
    /// The input has no video stream (an audio file, a subtitle track).
    #[error("{name}: has no video stream")]
    NoVideo {
        /// The clip concerned.
        name: String,
        /// ffmpeg's error lines.
        stderr_tail: String,
    },
    /// ffmpeg read the input to its end without an error but gave no frame.
    #[error("{name}: no frame decoded ({status})")]
    NoFrames {
        /// The clip concerned.
        name: String,
        /// ffmpeg's exit status, as text.
        status: String,
        /// ffmpeg's error lines.
        stderr_tail: String,
    },
    /// The raw stream disagrees with ffmpeg's own frame counter, or does not end on a frame
    /// boundary: the frames cannot be trusted.
    #[error("{name}: the decoded stream is inconsistent: {detail}")]
    Stream {
        /// The clip concerned.
        name: String,
        /// What disagreed.
        detail: String,
    },
    /// The clip uses something that ClearFrame does not decode faithfully (a mirrored or
    /// oddly rotated picture).
    #[error("{name}: unsupported: {detail}")]
    Unsupported {
        /// The clip concerned.
        name: String,
        /// What is not supported.
        detail: String,
    },
    /// A per-clip limit was exceeded.
    #[error("{name}: {detail}")]
    Limit {
        /// The clip concerned.
        name: String,
        /// Which limit.
        limit: Limit,
        /// What was found and what the limit is.
        detail: String,
    },
    /// A frame given to the encoder does not match the size it was created with.
    #[error(
        "{name}: frame is {got_width}x{got_height}, the encoder was opened for {width}x{height}"
    )]
    FrameSize {
        /// The output concerned.
        name: String,
        /// Encoder width.
        width: u32,
        /// Encoder height.
        height: u32,
        /// Frame width.
        got_width: u32,
        /// Frame height.
        got_height: u32,
    },
    /// ffmpeg failed to encode or write the output.
    #[error("{name}: cannot encode ({status}); ffmpeg said:\n{stderr_tail}")]
    Encode {
        /// The output concerned.
        name: String,
        /// ffmpeg's exit status or the pipe error, as text.
        status: String,
        /// The last lines of ffmpeg's stderr.
        stderr_tail: String,
    },
    /// Reading ffmpeg's output failed.
    #[error("{name}: I/O error: {source}")]
    Io {
        /// The clip or output concerned.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a clip comes from.
pub enum Input {
    /// A local file given by the user: opened once, a regular file only.
    Path(PathBuf),
    /// A clip already opened (and hashed) by the caller: a catalog clip, or a byte stream (an
    /// object-store body) copied once into a sealed memory file ([`SourceFile::from_reader`]).
    Source {
        /// A name for messages (the catalog URI).
        name: String,
        /// The descriptor ffmpeg reads.
        source: SourceFile,
    },
}

impl Input {
    /// The name used in messages.
    pub fn name(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Source { name, .. } => name.clone(),
        }
    }

    fn open(self, max_bytes: u64) -> Result<(String, SourceFile), MediaError> {
        Ok(match self {
            Input::Path(p) => (
                p.display().to_string(),
                SourceFile::open_path(&p, max_bytes)?,
            ),
            Input::Source { name, source } => (name, source),
        })
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Input::Source { name, source } => f
                .debug_struct("Source")
                .field("name", name)
                .field("blake3", &source.blake3())
                .finish(),
        }
    }
}

/// Which frames to decode.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// Every frame, with its own timestamp (variable frame rate preserved).
    #[default]
    All,
    /// N frames per second of clip time: at each time k/N (k = 0, 1, ...) before the clip's end,
    /// the frame on screen then, stamped k/N (ffmpeg's `fps` filter with `round=up`). A clip
    /// with at least one frame gives at least one. A decoded frame on screen at several sample
    /// times is emitted once, at the first of them.
    Fps(f32),
}

/// Per-clip bounds on the work one clip may cause; exceeding one is a [`MediaError::Limit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Frames larger than this many pixels are refused (on the probed geometry).
    pub max_pixels: u64,
    /// At most this many frames are decoded from one clip.
    pub max_frames: u64,
    /// Clips longer than this (probed, or by a frame's or sample's time) are refused.
    pub max_duration_s: f64,
    /// Clips larger than this many bytes are refused.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_frames: 20_000,
            max_duration_s: 600.0,
            max_bytes: 4 << 30,
        }
    }
}

/// Settings of [`Decoder::open`].
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Which frames to decode.
    pub sampling: Sampling,
    /// Per-clip bounds.
    pub limits: DecodeLimits,
    /// The ffmpeg binary; `None`: `ffmpeg-sidecar`'s lookup (next to the executable, then PATH).
    /// ffprobe is taken from the same folder.
    pub ffmpeg: Option<PathBuf>,
}

/// Geometry and timing of the decoded stream, from ffprobe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamInfo {
    /// Frame width after rotation.
    pub width: u32,
    /// Frame height after rotation.
    pub height: u32,
    /// Average frame rate of the stream.
    pub fps: Option<f64>,
    /// Whether the input has an audio stream.
    pub has_audio: bool,
}

/// One decoded, **unredacted** frame. Its `Debug` never prints pixels.
pub struct Frame {
    index: u64,
    pts: f64,
    image: RgbImage,
}

impl Frame {
    /// 0-based index among the decoded (sampled) frames.
    pub fn index(&self) -> u64 {
        self.index
    }
    /// Presentation time in seconds from the start of the clip.
    pub fn pts(&self) -> f64 {
        self.pts
    }
    /// The unredacted pixels, RGB, rotation applied: for the face detectors and the indoor
    /// person pass only. Nothing that writes or emits takes a `Frame`.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }
    /// A still image as the one frame of a clip (index 0 at 0 s): the input side, unredacted.
    pub fn still(image: RgbImage) -> Frame {
        Frame {
            index: 0,
            pts: 0.0,
            image,
        }
    }
    #[cfg(test)]
    pub(crate) fn at(index: u64, pts: f64, image: RgbImage) -> Frame {
        Frame { index, pts, image }
    }
    /// The parts, for the redactor, which turns them into a candidate.
    pub(crate) fn into_parts(self) -> (u64, f64, RgbImage) {
        (self.index, self.pts, self.image)
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("index", &self.index)
            .field("pts", &self.pts)
            .field("width", &self.image.width())
            .field("height", &self.image.height())
            .finish_non_exhaustive()
    }
}

/// An ffmpeg child as ClearFrame starts every one (the decoder and the encoder): the binary
/// given, or ffmpeg-sidecar's lookup (beside the executable, then `PATH`); no banner, no progress
/// lines, no interaction on the terminal.
pub(crate) fn ffmpeg_command(ffmpeg: Option<&Path>) -> FfmpegCommand {
    let mut cmd = match ffmpeg {
        Some(p) => FfmpegCommand::new_with_path(p),
        None => FfmpegCommand::new(),
    };
    cmd.hide_banner().arg("-nostats");
    // ffmpeg starts with no signal blocked: this process blocks SIGINT, SIGTERM and SIGHUP in
    // every thread (they are taken on a thread of their own, see `staging`), and a child would
    // inherit that mask and ignore an operator's `kill`.
    // SAFETY: only async-signal-safe calls (sigemptyset, pthread_sigmask) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd.as_inner_mut(), || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(std::io::Error::from_raw_os_error(e)),
            }
        });
    }
    cmd
}

/// Restricts the next input of `cmd` to the containers and protocols a clip may use
/// ([`probe::FORMAT_WHITELIST`], [`probe::PROTOCOL_WHITELIST`]): a playlist or a concat script
/// inside a clip opens no other file.
pub(crate) fn clip_input_only(cmd: &mut FfmpegCommand) -> &mut FfmpegCommand {
    cmd.args(["-format_whitelist", probe::FORMAT_WHITELIST])
        .args(["-protocol_whitelist", probe::PROTOCOL_WHITELIST])
}

/// A started ffmpeg child and its three pipes, taken.
pub(crate) struct Spawned {
    pub child: FfmpegChild,
    pub stdin: std::process::ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Starts `cmd`, naming `name` (the clip or the output) if it cannot start.
pub(crate) fn spawn_ffmpeg(cmd: &mut FfmpegCommand, name: &str) -> Result<Spawned, MediaError> {
    let mut child = cmd.spawn().map_err(|source| MediaError::Spawn {
        name: name.to_owned(),
        source,
    })?;
    let piped = "FfmpegCommand pipes stdin, stdout and stderr";
    Ok(Spawned {
        stdin: child.take_stdin().expect(piped),
        stdout: child.take_stdout().expect(piped),
        stderr: child.take_stderr().expect(piped),
        child,
    })
}

/// `ffmpeg -version`'s version word, for provenance.
pub fn ffmpeg_version() -> String {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_have_no_run_specific_addresses_or_paths() {
        assert_eq!(
            strip_addresses("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55f40c023840] moov atom not found"),
            "[mov,mp4,m4a,3gp,3g2,mj2] moov atom not found"
        );
        assert_eq!(strip_addresses("plain @ line"), "plain @ line");
        let p = Path::new("/proc/77/fd/9");
        assert_eq!(
            clean_error_line(
                "[mov,mp4 @ 0x55f4] [error] /proc/77/fd/9: Invalid data\u{7}",
                p,
                "clips/a.mp4"
            ),
            "[mov,mp4] clips/a.mp4: Invalid data?"
        );
    }

    #[test]
    fn log_levels_are_read_from_the_prefix() {
        assert_eq!(level_of("[h264 @ 0x55] [error] broken"), Some("error"));
        assert_eq!(level_of("[error] broken"), Some("error"));
        assert_eq!(level_of("[info] Output #0"), Some("info"));
        assert_eq!(level_of("Output #0, rawvideo"), None);
    }

    #[test]
    fn frame_geometry_is_read_from_showinfo_and_checked() {
        let body = "n:   5 pts:  15015 pts_time:0.166833 pos:     2632 fmt:yuv420p sar:0/1 \
                    s:704x144 i:P iskey:0 type:P checksum:0";
        let g = parse_frame_geometry(body).unwrap();
        assert_eq!((g.width, g.height, g.sar), (704, 144, (1, 1)));
        let g = parse_frame_geometry("n: 1 pts: 2 sar:256/234 s:176x144").unwrap();
        assert_eq!(g.sar, (128, 117));
        // Unstated or stated twice: no geometry, and the frame is not trusted.
        assert_eq!(parse_frame_geometry("n: 1 pts: 2 sar:1/1"), None);
        assert_eq!(
            parse_frame_geometry("n: 1 pts: 2 sar:1/1 s:2x2 s:4x4"),
            None
        );
        assert_eq!(parse_frame_geometry("n: 1 pts: 2 sar:1/1 s:2x"), None);
        let coded = probe::Coded {
            width: 704,
            height: 144,
            sar: (1, 1),
        };
        let tail = Tail::default();
        check_frame_geometry(body, 5, coded, &tail);
        assert_eq!(tail.inconsistency(), None);
        check_frame_geometry("n: 6 pts: 3 sar:1/4 s:704x144", 6, coded, &tail);
        check_frame_geometry("n: 7 pts: 4 sar:1/1 s:176x144", 7, coded, &tail);
        assert_eq!(
            tail.inconsistency().as_deref(),
            Some(
                "decoded frame 6 is 704x144 with pixel aspect 1:4, the stream was probed as \
                 704x144 with pixel aspect 1:1"
            )
        );
    }

    #[test]
    fn only_this_runs_showinfo_lines_are_read() {
        let tok = "0123456789abcdef0123456789abcdef";
        let ours = format!("[showinfo@o{tok} @ 0x55aa] [info] n:   3 pts:   3003 pts_time:0.1");
        assert_eq!(
            own_line(&ours, "o", tok).and_then(parse_frame_line),
            Some((3, 3003))
        );
        // A forged line (any other token, or none) is not ours.
        let forged = "[showinfo@o0000 @ 0x1] [info] n:   3 pts:   3003 pts_time:0.1";
        assert_eq!(own_line(forged, "o", tok), None);
        let forged = "[Parsed_showinfo_0 @ 0x1] [info] n:   3 pts:   3003 pts_time:0.1";
        assert_eq!(own_line(forged, "o", tok), None);
        let cfg = "config in time_base: 1/12800, frame_rate: 25/1";
        assert_eq!(parse_time_base(cfg), Some((1, 12800)));
        assert_eq!(parse_frame_line("n:   0 pts:NOPTS pts_time:NOPTS"), None);
        assert_ne!(nonce(), nonce());
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/media")
            .join(name)
    }

    #[test]
    fn decodes_every_frame_with_increasing_pts() {
        let mut dec = Decoder::open(
            Input::Path(fixture("carphone_pristine.mp4")),
            &DecodeOptions::default(),
        )
        .unwrap();
        // 176x144 coded at a pixel aspect of 128:117: 193x144 square pixels.
        assert_eq!((dec.info().width, dec.info().height), (193, 144));
        let mut last = -1.0;
        let mut n = 0;
        for f in &mut dec {
            let f = f.unwrap();
            assert!(f.pts > last, "pts must increase: {} after {last}", f.pts);
            last = f.pts;
            n += 1;
        }
        assert_eq!(n, 120);
    }

    /// Runs ffmpeg with `args` and returns what it wrote to stdout.
    fn ffmpeg_out(args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn decode(input: Input, sampling: Sampling) -> Result<Vec<Frame>, MediaError> {
        let opts = DecodeOptions {
            sampling,
            ..Default::default()
        };
        Decoder::open(input, &opts)?.collect()
    }

    #[test]
    fn a_sampled_frame_is_the_frame_on_screen_at_its_time() {
        // bikes.mp4 runs at 25 fps from 0: at k/4 s the frame on screen is number floor(k*25/4).
        let all = decode(Input::Path(fixture("bikes.mp4")), Sampling::All).unwrap();
        let sampled = decode(Input::Path(fixture("bikes.mp4")), Sampling::Fps(4.0)).unwrap();
        assert_eq!(all.len(), 250);
        assert_eq!(sampled.len(), 40, "one per quarter second of a 10 s clip");
        for (k, f) in sampled.iter().enumerate() {
            assert!((f.pts - k as f64 / 4.0).abs() < 1e-6, "{k}: {}", f.pts);
            let shown = &all[k * 25 / 4];
            assert!(
                shown.image == f.image,
                "sample {k} is not frame {}",
                shown.index
            );
        }
    }

    #[test]
    fn tiny_frames_past_a_frame_limit_or_an_early_drop_do_not_hang_the_decoder() {
        // Regression (found in review before it landed): with a bounded channel for this run's
        // showinfo lines, ffmpeg printed more lines than the bound while its pipe still held
        // frames (a 4x4 frame is 48 bytes, 1,365 of them fit in 64 KiB), the stderr thread
        // blocked on the full channel, and stopping the decoder (at a frame limit, or when a
        // clip fails) joined that thread forever.
        let dir = tempfile::tempdir().unwrap();
        let tiny = dir.path().join("tiny.mkv");
        ffmpeg_out(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=4x4:rate=100",
            "-frames:v",
            "5000",
            "-c:v",
            "ffv1",
            tiny.to_str().unwrap(),
        ]);
        let (done_tx, done_rx) = crossbeam_channel::bounded(2);
        let limited = tiny.clone();
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            let opts = DecodeOptions {
                limits: DecodeLimits {
                    max_frames: 100,
                    ..DecodeLimits::default()
                },
                ..DecodeOptions::default()
            };
            let dec = Decoder::open(Input::Path(limited), &opts).unwrap();
            let last = dec.last().unwrap();
            let _ = tx.send(matches!(
                last,
                Err(MediaError::Limit {
                    limit: Limit::Frames,
                    ..
                })
            ));
        });
        std::thread::spawn(move || {
            let mut dec = Decoder::open(Input::Path(tiny), &DecodeOptions::default()).unwrap();
            let first = dec.next().is_some_and(|f| f.is_ok());
            std::thread::sleep(std::time::Duration::from_millis(500));
            drop(dec);
            let _ = done_tx.send(first);
        });
        for _ in 0..2 {
            let ok = done_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the decoder hung");
            assert!(ok);
        }
    }

    #[test]
    fn a_decoded_frame_is_never_emitted_twice() {
        // Regression: sampling faster than the clip's own rate repeated frames (the `fps`
        // filter duplicates), so a two-frame clip with an hour between its frames became
        // thousands of frames.
        let dir = tempfile::tempdir().unwrap();
        let slow = dir.path().join("slow.mkv");
        let bikes = fixture("bikes.mp4");
        ffmpeg_out(&[
            "-i",
            bikes.to_str().unwrap(),
            "-t",
            "2",
            "-vf",
            "fps=2,scale=64:32",
            "-c:v",
            "ffv1",
            "-an",
            slow.to_str().unwrap(),
        ]);
        let all = decode(Input::Path(slow.clone()), Sampling::All).unwrap();
        assert_eq!(all.len(), 4);
        let sampled = decode(Input::Path(slow.clone()), Sampling::Fps(8.0)).unwrap();
        assert_eq!(sampled.len(), 4, "each of 4 frames once, not 16 samples");
        for (a, s) in all.iter().zip(&sampled) {
            assert!(a.image == s.image);
            assert!((a.pts - s.pts).abs() < 1e-6, "{} vs {}", a.pts, s.pts);
        }
        // Two frames an hour apart: either each frame once or a duration limit, never 7,200.
        let gap = dir.path().join("gap.mkv");
        ffmpeg_out(&[
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=64x48:r=1:d=2",
            "-vf",
            "setpts=N*3600/TB",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "ffv1",
            gap.to_str().unwrap(),
        ]);
        let opts = DecodeOptions {
            sampling: Sampling::Fps(2.0),
            limits: DecodeLimits {
                max_duration_s: 7200.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let frames: Vec<_> = Decoder::open(Input::Path(gap.clone()), &opts)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 2);
        let err = match Decoder::open(
            Input::Path(gap),
            &DecodeOptions {
                sampling: Sampling::Fps(2.0),
                ..Default::default()
            },
        ) {
            Err(e) => e,
            Ok(d) => d.last().unwrap().unwrap_err(),
        };
        assert!(
            matches!(
                err,
                MediaError::Limit {
                    limit: Limit::Duration,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn forged_geometry_in_metadata_changes_nothing() {
        // Regression (critical): the frame size was read from ffmpeg's log, where a metadata key
        // with newlines prints forged `Output #`/`Stream #` lines (320x544, the same bytes per
        // frame as the real 640x272); the raw stream was then cut at the forged size and
        // unredacted pixels passed the masks. The fixtures are made by
        // scripts/make-bad-fixtures.sh; forged-showinfo.mp4 also forges showinfo frame lines.
        let dir = tempfile::tempdir().unwrap();
        let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad/media");
        for name in [
            "forged-geometry.mp4",
            "forged-geometry.mkv",
            "forged-showinfo.mp4",
        ] {
            let forged = bad.join(name);
            // The forgery is really in ffmpeg's log.
            let log = std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-i", forged.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&log.stderr).contains("320x544"),
                "{name}: the forged line is not in the log"
            );
            // The same stream without any metadata is the reference.
            let clean = dir.path().join(format!("clean-{name}"));
            ffmpeg_out(&[
                "-i",
                forged.to_str().unwrap(),
                "-map_metadata",
                "-1",
                "-map_metadata:s:v",
                "-1",
                "-c",
                "copy",
                clean.to_str().unwrap(),
            ]);
            for sampling in [Sampling::All, Sampling::Fps(5.0)] {
                let want = decode(Input::Path(clean.clone()), sampling).unwrap();
                let opts = DecodeOptions {
                    sampling,
                    ..Default::default()
                };
                let dec = Decoder::open(Input::Path(forged.clone()), &opts).unwrap();
                assert_eq!((dec.info().width, dec.info().height), (640, 272), "{name}");
                let got: Vec<Frame> = dec.collect::<Result<_, _>>().unwrap();
                assert_eq!(got.len(), want.len(), "{name}");
                assert!(!got.is_empty());
                for (g, w) in got.iter().zip(&want) {
                    assert!(g.image == w.image, "{name}: frame {} differs", g.index);
                    assert_eq!(g.pts, w.pts, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_pixel_limit_holds_on_probed_geometry() {
        let opts = DecodeOptions {
            limits: DecodeLimits {
                max_pixels: 640 * 271,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = Decoder::open(Input::Path(fixture("bikes.mp4")), &opts)
            .err()
            .expect("over the limit");
        assert!(
            matches!(
                err,
                MediaError::Limit {
                    limit: Limit::Pixels,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_clip_shorter_than_half_a_period_still_gives_its_frame() {
        // One frame of 40 ms: ffmpeg's default `fps` rounding drops it at 4 fps.
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.mp4");
        let bikes = fixture("bikes.mp4");
        ffmpeg_out(&[
            "-i",
            bikes.to_str().unwrap(),
            "-frames:v",
            "1",
            "-an",
            one.to_str().unwrap(),
        ]);
        for n in [4.0, 0.5] {
            let frames = decode(Input::Path(one.clone()), Sampling::Fps(n)).unwrap();
            assert_eq!(frames.len(), 1, "at {n} fps");
            assert_eq!(frames[0].pts, 0.0);
        }
        // A still image is a one-frame clip too.
        let photo = fixture("person.jpg");
        assert_eq!(
            decode(Input::Path(photo), Sampling::Fps(4.0))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn audio_without_video_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let audio = dir.path().join("doorbell.m4a");
        ffmpeg_out(&[
            "-f",
            "lavfi",
            "-i",
            "sine=d=1",
            "-c:a",
            "aac",
            audio.to_str().unwrap(),
        ]);
        let err = decode(Input::Path(audio), Sampling::Fps(4.0)).unwrap_err();
        assert!(matches!(err, MediaError::NoVideo { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("doorbell.m4a: has no video stream"),
            "{err}"
        );
    }

    #[test]
    fn samples_fps_from_a_reader() {
        let bikes = fixture("bikes.mp4");
        let ts = ffmpeg_out(&[
            "-i",
            bikes.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "mpegts",
            "pipe:1",
        ]);
        assert!(ts.len() > 100_000);
        let opts = DecodeOptions {
            sampling: Sampling::Fps(2.0),
            ..Default::default()
        };
        let reader = Box::new(std::io::Cursor::new(ts));
        let dec = Decoder::open(stream("bikes.ts", reader), &opts).unwrap();
        assert_eq!((dec.info().width, dec.info().height), (640, 272));
        let frames: Vec<_> = dec.map(|f| f.unwrap()).collect();
        assert!(!frames.is_empty());
        for w in frames.windows(2) {
            assert!(
                (w[1].pts - w[0].pts - 0.5).abs() < 1e-3,
                "{} -> {}",
                w[0].pts,
                w[1].pts
            );
        }
    }

    /// A byte stream as the S3 path opens one: copied once into a sealed memory file.
    fn stream(name: &str, reader: Box<dyn Read + Send>) -> Input {
        Input::Source {
            name: name.into(),
            source: SourceFile::from_reader(reader, name, u64::MAX).unwrap(),
        }
    }

    #[test]
    fn an_mp4_indexed_at_the_end_decodes_from_a_stream() {
        // A stream is held in a sealed memory file, so ffmpeg can seek to the index.
        let file = std::fs::File::open(fixture("bikes.mp4")).unwrap();
        let dec = Decoder::open(
            stream("s3://b/bikes.mp4", Box::new(file)),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            dec.source_blake3(),
            crate::hashing::hash_file(&fixture("bikes.mp4")).unwrap()
        );
        assert_eq!(dec.count(), 250);
    }

    #[test]
    fn a_text_file_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("not-a-video.mp4");
        std::fs::write(&p, "hello, I am not a video\n").unwrap();
        let err = Decoder::open(Input::Path(p), &DecodeOptions::default())
            .err()
            .expect("must fail");
        let msg = err.to_string();
        assert!(matches!(err, MediaError::Decode { .. }), "{msg}");
        assert!(
            msg.contains("not-a-video.mp4")
                && msg.contains("Invalid data")
                && !msg.contains("/proc/"),
            "{msg}"
        );
    }
}
