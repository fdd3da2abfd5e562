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

pub mod probe;
pub mod source;

use std::collections::VecDeque;
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
    /// A byte stream (e.g. an object-store body), copied once into a sealed memory file.
    Reader {
        /// A name for messages (object key, URL); never opened.
        name: String,
        /// The bytes of the container.
        reader: Box<dyn Read + Send>,
    },
    /// A clip already opened (and hashed) by the caller.
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
            Input::Reader { name, .. } | Input::Source { name, .. } => name.clone(),
        }
    }

    fn open(self, max_bytes: u64) -> Result<(String, SourceFile), MediaError> {
        Ok(match self {
            Input::Path(p) => (
                p.display().to_string(),
                SourceFile::open_path(&p, max_bytes)?,
            ),
            Input::Reader { name, reader } => {
                let s = SourceFile::from_reader(reader, &name, max_bytes)?;
                (name, s)
            }
            Input::Source { name, source } => (name, source),
        })
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Input::Reader { name, .. } => f
                .debug_struct("Reader")
                .field("name", name)
                .finish_non_exhaustive(),
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

/// What the thread that drains ffmpeg's stderr shares with the decoder: ffmpeg's error lines,
/// whether it logged one, and the first sign that the frames are not the stream that was probed.
#[derive(Clone, Default)]
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    error: Arc<std::sync::atomic::AtomicBool>,
    inconsistent: Arc<Mutex<Option<String>>>,
}

impl Tail {
    /// Records that ffmpeg logged an error (it may still exit 0, e.g. on a truncated mp4).
    fn mark_error(&self) {
        self.error.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn had_error(&self) -> bool {
        self.error.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Records why the frames cannot be trusted to be the probed stream (the first reason
    /// stays): ffmpeg configured this run's filters a second time (it does so when a frame's
    /// side data, a display matrix, changes, and drops the frames its `fps` filter held), or a
    /// decoded frame has another size or pixel aspect than the probe found.
    fn mark_inconsistent(&self, detail: String) {
        let mut slot = self.inconsistent.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(detail);
    }
    fn inconsistency(&self) -> Option<String> {
        self.inconsistent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(crate) fn push(&self, line: String) {
        let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if q.back() == Some(&line) {
            return;
        }
        if q.len() == ERROR_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    pub(crate) fn text(&self) -> String {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return "  (no error message)".to_owned();
        }
        q.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The level of an ffmpeg log line printed with `-loglevel level+…`: `[ctx @ 0x..] [error] msg`
/// or `[error] msg`.
fn level_of(line: &str) -> Option<&str> {
    let rest = if line.starts_with("[") && !line.starts_with("[info]") {
        // `[ctx @ 0x..] [level] ...`, or a bare `[level] ...`.
        match line.find("] [") {
            Some(i) if line[..i].contains(" @ ") => &line[i + 2..],
            _ => line,
        }
    } else {
        line
    };
    let end = rest.strip_prefix('[')?.find(']')?;
    Some(&rest[1..=end])
}

/// An error-level message of ffmpeg or ffprobe, made fit for a record: without the level,
/// without run-specific context addresses, with `path` (the descriptor) replaced by `name`,
/// bounded in length, printable ASCII only.
fn clean_error_line(line: &str, path: &Path, name: &str) -> String {
    let mut s = strip_addresses(line);
    for lvl in ["[error] ", "[fatal] ", "[panic] "] {
        s = s.replacen(lvl, "", 1);
    }
    let p = path.display().to_string();
    if !p.is_empty() {
        s = s.replace(&p, name);
    }
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(ERROR_LINE_CHARS)
        .collect();
    if s.chars().count() > ERROR_LINE_CHARS {
        out.push('…');
    }
    out.trim().to_owned()
}

/// The error-level lines of a whole stderr text (ffprobe's at `-v error`), cleaned.
fn error_lines(stderr: &str, path: &Path, name: &str) -> String {
    let tail = Tail::default();
    for line in stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        tail.push(clean_error_line(line, path, name));
    }
    tail.text()
}

/// A random token per decoder, so that the names of this run's `showinfo` filters cannot be
/// guessed by whoever made the file.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// One output frame as this run's `showinfo@o…` reported it.
#[derive(Debug, Clone, Copy)]
struct OutFrame {
    /// Presentation time in seconds.
    pts: f64,
    /// Ordinal of the decoded frame it shows (with sampling), or its own ordinal.
    source: u64,
}

/// Streaming decoder: an iterator of frames, one clip, one ffmpeg child.
///
/// Dropping it early kills the child. A failure mid-clip is yielded as the last item.
pub struct Decoder {
    name: String,
    source: SourceFile,
    child: FfmpegChild,
    stdout: BufReader<ChildStdout>,
    info: StreamInfo,
    sampling: Sampling,
    limits: DecodeLimits,
    frames_rx: Receiver<OutFrame>,
    tail: Tail,
    stderr_thread: Option<JoinHandle<()>>,
    next_index: u64,
    /// Frames read from the pipe (samples included that repeat a frame).
    read: u64,
    last_source: Option<u64>,
    done: bool,
}

impl Decoder {
    /// Opens `input` once, probes it, and starts ffmpeg on exactly those bytes.
    pub fn open(input: Input, opts: &DecodeOptions) -> Result<Self, MediaError> {
        let (name, source) = input.open(opts.limits.max_bytes)?;
        let path = source.proc_path();
        let probe = probe::probe(&path, &name, opts.ffmpeg.as_deref(), opts.limits.max_pixels)?;
        if let Some(d) = probe.duration
            && d > opts.limits.max_duration_s
        {
            return Err(MediaError::Limit {
                name,
                limit: Limit::Duration,
                detail: format!(
                    "clip lasts {d:.1} s, over the limit of {} s",
                    opts.limits.max_duration_s
                ),
            });
        }
        let (w, h) = (probe.width, probe.height);
        let token = nonce();
        // Sampling and timing come from this run's own showinfo filters; the size and format of
        // every raw frame are forced to the probed geometry.
        let force = format!(
            "{}scale=w={w}:h={h},setsar=1,format=rgb24",
            probe.orientation.filters()
        );
        let filter = match opts.sampling {
            Sampling::All => format!("showinfo@o{token},{force}"),
            // `round=up` maps a frame at t to the first slot at or after t, so slot k shows the
            // last frame at or before k/N. The default (`near`) takes frames up to half a period
            // late and drops a last slot, or the only one of a clip shorter than half a period.
            Sampling::Fps(n) => {
                format!("showinfo@s{token},fps={n}:round=up,showinfo@o{token},{force}")
            }
        };
        let mut cmd = match &opts.ffmpeg {
            Some(p) => FfmpegCommand::new_with_path(p),
            None => FfmpegCommand::new(),
        };
        cmd.hide_banner()
            // No autorotation (it follows per-frame rotation messages a file can change), and no
            // filter rebuild on a size change (the forced scale absorbs it).
            .args([
                "-nostats",
                "-nostdin",
                "-noautorotate",
                "-reinit_filter",
                "0",
                // Crop exactly as the stream says (ffprobe's size): by default a decoder
                // rounds a left crop down to its alignment and gives wider frames.
                "-flags",
                "unaligned",
            ])
            .args(["-format_whitelist", probe::FORMAT_WHITELIST])
            .args(["-protocol_whitelist", probe::PROTOCOL_WHITELIST])
            .arg("-i")
            .arg(path.as_os_str())
            .arg("-map")
            .arg(format!("0:{}", probe.stream_index))
            .args([
                "-an",
                "-sn",
                "-dn",
                "-map_metadata",
                "-1",
                "-map_chapters",
                "-1",
                "-vf",
            ])
            .arg(filter)
            .args([
                "-fps_mode",
                "passthrough",
                "-pix_fmt",
                "rgb24",
                "-f",
                "rawvideo",
                "pipe:1",
            ]);
        let mut child = cmd.spawn().map_err(|source| MediaError::Spawn {
            name: name.clone(),
            source,
        })?;
        let stdout = child
            .take_stdout()
            .expect("stdout is piped by FfmpegCommand");
        let stderr = child
            .take_stderr()
            .expect("stderr is piped by FfmpegCommand");
        drop(child.take_stdin());
        let tail = Tail::default();
        let (frames_tx, frames_rx) = unbounded::<OutFrame>();
        let stderr_thread = {
            let tail = tail.clone();
            let (path, name) = (path.clone(), name.clone());
            let own = OwnFilters {
                token,
                sampled: matches!(opts.sampling, Sampling::Fps(_)),
                coded: probe.coded,
            };
            std::thread::spawn(move || {
                drain_decoder_stderr(stderr, &own, frames_tx, tail, &path, &name)
            })
        };
        Ok(Decoder {
            name,
            source,
            child,
            stdout: BufReader::with_capacity(1 << 20, stdout),
            info: StreamInfo {
                width: w,
                height: h,
                fps: probe.fps,
                has_audio: probe.has_audio,
            },
            sampling: opts.sampling,
            limits: opts.limits,
            frames_rx,
            tail,
            stderr_thread: Some(stderr_thread),
            next_index: 0,
            read: 0,
            last_source: None,
            done: false,
        })
    }

    /// Geometry and rate of the decoded frames.
    pub fn info(&self) -> StreamInfo {
        self.info
    }

    /// The name of the clip, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// blake3 (hex) of the bytes decoded.
    pub fn source_blake3(&self) -> &str {
        self.source.blake3()
    }

    /// Waits for the child and the stderr thread; returns the exit status as text.
    fn finish_child(&mut self) -> String {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        status
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.finish_child();
    }

    fn limit(&mut self, limit: Limit, detail: String) -> MediaError {
        self.stop();
        MediaError::Limit {
            name: self.name.clone(),
            limit,
            detail,
        }
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, MediaError> {
        loop {
            let len = self.info.width as usize * self.info.height as usize * 3;
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match self.stdout.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        self.stop();
                        return Err(MediaError::Io {
                            name: self.name.clone(),
                            source,
                        });
                    }
                }
            }
            if filled < len {
                return self.end_of_stream(filled);
            }
            self.read += 1;
            let Ok(out) = self.frames_rx.recv() else {
                self.stop();
                return Err(MediaError::Stream {
                    name: self.name.clone(),
                    detail: format!("ffmpeg wrote frame {} but did not report it", self.read),
                });
            };
            if let Some(detail) = self.tail.inconsistency() {
                self.stop();
                return Err(MediaError::Stream {
                    name: self.name.clone(),
                    detail,
                });
            }
            if out.pts > self.limits.max_duration_s {
                let max = self.limits.max_duration_s;
                return Err(self.limit(
                    Limit::Duration,
                    format!("a frame at {:.1} s is past the limit of {max} s", out.pts),
                ));
            }
            if matches!(self.sampling, Sampling::Fps(_)) && self.last_source == Some(out.source) {
                // The same decoded frame, on screen at a later sample time: emitted once.
                continue;
            }
            self.last_source = Some(out.source);
            if self.next_index >= self.limits.max_frames {
                let max = self.limits.max_frames;
                return Err(self.limit(
                    Limit::Frames,
                    format!("more than the limit of {max} frames"),
                ));
            }
            let index = self.next_index;
            self.next_index += 1;
            let image = RgbImage::from_raw(self.info.width, self.info.height, buf)
                .expect("buffer has the frame size");
            return Ok(Some(Frame {
                index,
                pts: out.pts,
                image,
            }));
        }
    }

    /// The pipe ended (`filled` bytes into a frame): a clean end only on a frame boundary, with
    /// every frame ffmpeg reported read, an exit status of 0 and no error logged.
    fn end_of_stream(&mut self, filled: usize) -> Result<Option<Frame>, MediaError> {
        let status = self.finish_child();
        let reported = self.read + self.frames_rx.try_iter().count() as u64;
        self.source.check_unchanged(&self.name)?;
        // ffmpeg exits 0 on a truncated mp4 after logging "partial file": an error logged
        // during decoding makes the clip corrupt.
        let ok = status.ends_with(": 0") && !self.tail.had_error();
        let stderr_tail = self.tail.text();
        let name = self.name.clone();
        if let Some(detail) = self.tail.inconsistency() {
            return Err(MediaError::Stream { name, detail });
        }
        if ok && filled != 0 {
            return Err(MediaError::Stream {
                name,
                detail: format!("the raw stream ends {filled} bytes into a frame"),
            });
        }
        if ok && reported != self.read {
            return Err(MediaError::Stream {
                name,
                detail: format!(
                    "ffmpeg reported {reported} frames, the raw stream carried {}",
                    self.read
                ),
            });
        }
        if ok {
            if self.next_index == 0 {
                return Err(MediaError::NoFrames {
                    name,
                    status,
                    stderr_tail,
                });
            }
            return Ok(None);
        }
        // The clip probed as a video: whatever fails now, even before a first frame, is a
        // damaged stream.
        Err(MediaError::Truncated {
            name,
            frames: self.next_index,
            status,
            stderr_tail,
        })
    }
}

impl Iterator for Decoder {
    type Item = Result<Frame, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        if self.stderr_thread.is_some() {
            self.stop();
        }
    }
}

/// A rational time base `num/den` from showinfo's `config in time_base: 1/12800, ...`.
fn parse_time_base(body: &str) -> Option<(i128, i128)> {
    let rest = body.strip_prefix("config in time_base: ")?;
    let tb = rest.split(',').next()?;
    let (n, d) = tb.split_once('/')?;
    let (n, d): (i128, i128) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
    (n > 0 && d > 0).then_some((n, d))
}

/// `(n, pts)` of a showinfo frame line (`n:   3 pts:   3003 pts_time:0.1001 ...`); `None` for
/// other lines and for a frame without a timestamp.
fn parse_frame_line(body: &str) -> Option<(u64, i128)> {
    let rest = body.strip_prefix("n:")?.trim_start();
    let (n, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start().strip_prefix("pts:")?.trim_start();
    let pts = rest.split_whitespace().next()?;
    Some((n.parse().ok()?, pts.parse().ok()?))
}

/// The size and pixel aspect of the frame a showinfo frame line describes
/// (`... fmt:yuv420p sar:1/1 s:704x144 i:P ...`); `None` when the line states them not or
/// twice.
fn parse_frame_geometry(body: &str) -> Option<probe::Coded> {
    let (mut sar, mut size) = (None, None);
    for tok in body.split_whitespace() {
        if let Some(v) = tok.strip_prefix("sar:") {
            let (n, d) = v.split_once('/')?;
            let aspect = probe::Coded::aspect(n.parse().ok()?, d.parse().ok()?);
            if sar.replace(aspect).is_some() {
                return None;
            }
        } else if let Some(v) = tok.strip_prefix("s:") {
            let (w, h) = v.split_once('x')?;
            if size.replace((w.parse().ok()?, h.parse().ok()?)).is_some() {
                return None;
            }
        }
    }
    let (width, height) = size?;
    Some(probe::Coded {
        width,
        height,
        sar: sar?,
    })
}

/// Checks a frame line of this run's showinfo against the probed geometry: a stream can change
/// size or pixel aspect mid-way (a new SPS), which the probe, reading its start, cannot see.
fn check_frame_geometry(body: &str, n: u64, coded: probe::Coded, tail: &Tail) {
    match parse_frame_geometry(body) {
        Some(g) if g == coded => {}
        Some(g) => tail.mark_inconsistent(format!(
            "decoded frame {n} is {g}, the stream was probed as {coded}"
        )),
        None => tail.mark_inconsistent(format!(
            "ffmpeg reported decoded frame {n} without its size and pixel aspect"
        )),
    }
}

/// The body of a line that this run's filter `showinfo@<tag><token>` printed, if it is one.
fn own_line<'a>(line: &'a str, tag: &str, token: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("[showinfo@")?;
    let rest = rest.strip_prefix(tag)?.strip_prefix(token)?;
    let rest = rest.strip_prefix(" @ 0x")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_hexdigit());
    rest.strip_prefix("] [info] ")
}

const REBUILT: &str =
    "ffmpeg rebuilt its filters mid-stream (the frames' side data changed), which loses frames";

/// What the decoder's stderr thread knows of this run's own filters.
struct OwnFilters {
    /// The random part of their names.
    token: String,
    /// Whether `showinfo@s` reports the decoded frames before an `fps` filter.
    sampled: bool,
    /// The geometry every decoded frame must have.
    coded: probe::Coded,
}

fn drain_decoder_stderr(
    stderr: ChildStderr,
    own: &OwnFilters,
    frames_tx: Sender<OutFrame>,
    tail: Tail,
    path: &Path,
    name: &str,
) {
    let OwnFilters {
        token,
        sampled,
        coded,
    } = own;
    let (sampled, coded) = (*sampled, *coded);
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    // Decoded frames seen by `showinfo@s` (ordinal, pts) not yet passed by the samples.
    let mut decoded: VecDeque<(u64, i128)> = VecDeque::new();
    let (mut src_tb, mut out_tb) = (None, None);
    let mut src_count = 0u64;
    let mut current_source = None;
    let mut past_header = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let raw = text.trim_end();
        if let Some(body) = own_line(raw, "o", token) {
            past_header = true;
            if let Some(tb) = parse_time_base(body) {
                if out_tb.is_some() {
                    tail.mark_inconsistent(REBUILT.into());
                }
                out_tb = Some(tb);
            } else if let (Some((n, pts)), Some((tn, td))) = (parse_frame_line(body), out_tb) {
                if !sampled {
                    check_frame_geometry(body, n, coded, &tail);
                }
                let source = if sampled {
                    // The sample at pts*tn/td shows the last decoded frame at or before it.
                    while let Some(&(ord, spts)) = decoded.front() {
                        let Some((sn, sd)) = src_tb else { break };
                        if spts * sn * td <= pts * tn * sd {
                            current_source = Some(ord);
                            decoded.pop_front();
                        } else {
                            break;
                        }
                    }
                    current_source.unwrap_or(u64::MAX)
                } else {
                    n
                };
                let secs = pts as f64 * tn as f64 / td as f64;
                let _ = frames_tx.send(OutFrame { pts: secs, source });
            }
            continue;
        }
        if sampled && let Some(body) = own_line(raw, "s", token) {
            past_header = true;
            if let Some(tb) = parse_time_base(body) {
                if src_tb.is_some() {
                    tail.mark_inconsistent(REBUILT.into());
                }
                src_tb = Some(tb);
            } else if let Some((n, pts)) = parse_frame_line(body) {
                check_frame_geometry(body, n, coded, &tail);
                decoded.push_back((src_count, pts));
                src_count += 1;
            }
            continue;
        }
        if matches!(level_of(raw), Some("error" | "fatal" | "panic")) {
            tail.mark_error();
            // Before this run's filters speak, the log holds the input's header, metadata
            // included, which a file can make look like anything: nothing of it is kept.
            if past_header {
                tail.push(clean_error_line(raw, path, name));
            }
        }
    }
}

/// A log line without the `@ 0x55d0c0ffee00` context addresses ffmpeg prints (`[mov,mp4 @ 0x..]`):
/// they differ from run to run and would make error messages, and records holding them,
/// irreproducible.
pub(crate) fn strip_addresses(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(" @ 0x") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " @ 0x".len()..];
        let hex = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        rest = &after[hex..];
    }
    out.push_str(rest);
    out
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
        let dec = Decoder::open(
            Input::Reader {
                name: "bikes.ts".into(),
                reader,
            },
            &opts,
        )
        .unwrap();
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

    #[test]
    fn an_mp4_indexed_at_the_end_decodes_from_a_stream() {
        // A stream is held in a sealed memory file, so ffmpeg can seek to the index.
        let file = std::fs::File::open(fixture("bikes.mp4")).unwrap();
        let dec = Decoder::open(
            Input::Reader {
                name: "s3://b/bikes.mp4".into(),
                reader: Box::new(file),
            },
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
