//! ffmpeg decoding into memory and encoding of redacted output.
//!
//! Decoding runs `ffmpeg` (found on PATH or next to the executable, through `ffmpeg-sidecar`) as a
//! child process that writes raw RGB24 frames into a pipe; frames never touch the disk. The child's
//! stderr is drained on its own thread: it yields the output geometry, the presentation time of
//! every frame (from the `showinfo` filter, so variable frame rate clips keep their real times) and
//! a tail of ffmpeg's messages that goes into the typed error of a clip that fails to decode.
//! Rotation metadata is honoured by ffmpeg's autorotation. Input is a local path or any
//! `Read + Send` (fed to ffmpeg's stdin from a thread, for streaming from object storage).
//!
//! Encoding takes [`RedactedFrame`]s only — unredacted pixels cannot be written — and feeds them
//! to an `ffmpeg` (libx264, mp4) child from a writer thread over a bounded channel, so memory stays
//! flat with clip length and the child's stderr cannot deadlock the caller. Container and stream
//! metadata are stripped; audio is dropped unless explicitly kept.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use ffmpeg_sidecar::child::FfmpegChild;
use ffmpeg_sidecar::command::FfmpegCommand;
use image::RgbImage;

use crate::redact::RedactedFrame;

/// How many lines of ffmpeg's stderr an error keeps.
const STDERR_TAIL_LINES: usize = 12;

/// Largest frame accepted by default (8K UHD); larger frames are a [`MediaError::Limits`] error.
pub const DEFAULT_MAX_PIXELS: u64 = 7680 * 4320;

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
    /// ffmpeg rejected the input: not a video, unreadable, corrupt or truncated.
    #[error("{name}: cannot decode ({status}); ffmpeg said:\n{stderr_tail}")]
    Decode {
        /// The clip concerned.
        name: String,
        /// ffmpeg's exit status, as text.
        status: String,
        /// The last lines of ffmpeg's stderr.
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
        /// The last lines of ffmpeg's stderr.
        stderr_tail: String,
    },
    /// The input has no video stream (an audio file, a subtitle track).
    #[error("{name}: has no video stream; ffmpeg said:\n{stderr_tail}")]
    NoVideo {
        /// The clip concerned.
        name: String,
        /// The last lines of ffmpeg's stderr.
        stderr_tail: String,
    },
    /// ffmpeg read the input to its end without an error but gave no frame.
    #[error("{name}: no frame decoded ({status}); ffmpeg said:\n{stderr_tail}")]
    NoFrames {
        /// The clip concerned.
        name: String,
        /// ffmpeg's exit status, as text.
        status: String,
        /// The last lines of ffmpeg's stderr.
        stderr_tail: String,
    },
    /// The frame size exceeds the configured limit.
    #[error("{name}: frame {width}x{height} exceeds the limit of {max_pixels} pixels")]
    Limits {
        /// The clip concerned.
        name: String,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
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
    /// A local file.
    Path(PathBuf),
    /// A byte stream (e.g. an object-store body), fed to ffmpeg's stdin from a thread.
    Reader {
        /// A name for messages (object key, URL); never opened.
        name: String,
        /// The bytes of the container.
        reader: Box<dyn Read + Send>,
    },
}

impl Input {
    /// The name used in messages.
    pub fn name(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Reader { name, .. } => name.clone(),
        }
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
    /// with at least one frame gives at least one; frames are repeated when N exceeds the clip's
    /// own rate.
    Fps(f32),
}

/// Settings of [`Decoder::open`].
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Which frames to decode.
    pub sampling: Sampling,
    /// Frames larger than this many pixels are refused.
    pub max_pixels: u64,
    /// The ffmpeg binary; `None`: `ffmpeg-sidecar`'s lookup (next to the executable, then PATH).
    pub ffmpeg: Option<PathBuf>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            sampling: Sampling::All,
            max_pixels: DEFAULT_MAX_PIXELS,
            ffmpeg: None,
        }
    }
}

/// Geometry and timing of the decoded stream, known once ffmpeg has opened the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamInfo {
    /// Frame width after rotation.
    pub width: u32,
    /// Frame height after rotation.
    pub height: u32,
    /// Output frame rate as ffmpeg reports it (average rate for variable frame rate clips).
    pub fps: Option<f64>,
    /// Whether the input has an audio stream.
    pub has_audio: bool,
}

/// One decoded, **unredacted** frame. Its `Debug` never prints pixels.
pub struct Frame {
    /// 0-based index among the decoded (sampled) frames.
    pub index: u64,
    /// Presentation time in seconds from the start of the clip.
    pub pts: f64,
    /// The pixels, RGB, rotation applied.
    pub image: RgbImage,
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

/// The last lines of a child's stderr, shared with the thread that drains it.
#[derive(Clone, Default)]
struct Tail(
    Arc<Mutex<VecDeque<String>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Tail {
    /// Records that ffmpeg logged an error (it may still exit 0, e.g. on a truncated mp4).
    fn mark_error(&self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn had_error(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn push(&self, line: String) {
        let line = strip_addresses(&line);
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == STDERR_TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return "(nothing)".to_owned();
        }
        q.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Streaming decoder: an iterator of frames, one clip, one ffmpeg child.
///
/// Dropping it early kills the child. A failure mid-clip is yielded as the last item.
pub struct Decoder {
    name: String,
    child: FfmpegChild,
    stdout: BufReader<ChildStdout>,
    info: StreamInfo,
    pts_rx: Receiver<f64>,
    tail: Tail,
    stderr_thread: Option<JoinHandle<()>>,
    feeder: Option<JoinHandle<std::io::Result<()>>>,
    next_index: u64,
    done: bool,
}

/// What the stderr thread reports before any frame.
enum Header {
    Info(StreamInfo),
}

impl Decoder {
    /// Starts ffmpeg on `input` and waits until the output geometry is known.
    pub fn open(input: Input, opts: &DecodeOptions) -> Result<Self, MediaError> {
        let name = input.name();
        let mut cmd = match &opts.ffmpeg {
            Some(p) => FfmpegCommand::new_with_path(p),
            None => FfmpegCommand::new(),
        };
        cmd.hide_banner().arg("-nostats");
        match &input {
            Input::Path(p) => {
                // No interaction on stdin; a piped input (below) needs stdin for the container.
                cmd.arg("-nostdin").arg("-i").arg(p.as_os_str());
            }
            Input::Reader { .. } => {
                cmd.args(["-i", "pipe:0"]);
            }
        }
        let filter = match opts.sampling {
            Sampling::All => "showinfo".to_owned(),
            // `round=up` maps a frame at t to the first slot at or after t, so slot k shows the
            // last frame at or before k/N. The default (`near`) takes frames up to half a period
            // late and drops a last slot, or the only one of a clip shorter than half a period.
            Sampling::Fps(n) => format!("fps={n}:round=up,showinfo"),
        };
        cmd.args(["-map", "0:v:0", "-an", "-sn", "-dn", "-vf"])
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
        let stdin = child.take_stdin();
        let feeder = match input {
            Input::Reader { mut reader, .. } => {
                let mut stdin = stdin.expect("stdin is piped by FfmpegCommand");
                Some(std::thread::spawn(move || {
                    let r = std::io::copy(&mut reader, &mut stdin).map(|_| ());
                    drop(stdin);
                    // A closed pipe means ffmpeg stopped reading (error or early drop): reported by
                    // ffmpeg's own status.
                    match r {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                        other => other,
                    }
                }))
            }
            Input::Path(_) => {
                drop(stdin);
                None
            }
        };
        let tail = Tail::default();
        let (hdr_tx, hdr_rx) = bounded::<Header>(1);
        let (pts_tx, pts_rx) = unbounded::<f64>();
        let stderr_thread = {
            let tail = tail.clone();
            std::thread::spawn(move || drain_decoder_stderr(stderr, hdr_tx, pts_tx, tail))
        };
        let mut dec = Decoder {
            name: name.clone(),
            child,
            stdout: BufReader::with_capacity(1 << 20, stdout),
            info: StreamInfo {
                width: 0,
                height: 0,
                fps: None,
                has_audio: false,
            },
            pts_rx,
            tail,
            stderr_thread: Some(stderr_thread),
            feeder,
            next_index: 0,
            done: false,
        };
        match hdr_rx.recv() {
            Ok(Header::Info(info)) => dec.info = info,
            Err(_) => {
                // stderr ended without an output stream: ffmpeg refused the input.
                let status = dec.finish_child();
                let stderr_tail = dec.tail.text();
                if stderr_tail.contains("matches no streams") {
                    return Err(MediaError::NoVideo { name, stderr_tail });
                }
                return Err(MediaError::Decode {
                    name,
                    status,
                    stderr_tail,
                });
            }
        }
        let pixels = u64::from(dec.info.width) * u64::from(dec.info.height);
        if pixels > opts.max_pixels || pixels == 0 {
            return Err(MediaError::Limits {
                name,
                width: dec.info.width,
                height: dec.info.height,
                max_pixels: opts.max_pixels,
            });
        }
        Ok(dec)
    }

    /// Geometry and rate of the decoded frames.
    pub fn info(&self) -> StreamInfo {
        self.info
    }

    /// The name of the clip, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the child and the helper threads; returns the exit status as text and whether it
    /// was a success (`"exit status: 0"`).
    fn finish_child(&mut self) -> String {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.feeder.take() {
            match t.join() {
                Ok(Err(e)) => self
                    .tail
                    .push(format!("(reading the input stream failed: {e})")),
                Err(_) => self
                    .tail
                    .push("(the input stream thread panicked)".to_owned()),
                Ok(Ok(())) => {}
            }
        }
        status
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, MediaError> {
        let len = self.info.width as usize * self.info.height as usize * 3;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MediaError::Io {
                        name: self.name.clone(),
                        source,
                    });
                }
            }
        }
        if filled < len {
            drop(buf);
            let status = self.finish_child();
            // ffmpeg exits 0 on a truncated mp4 after logging "partial file": an error logged
            // during decoding makes the clip corrupt.
            let ok = status.ends_with(": 0") && !self.tail.had_error();
            if filled == 0 && ok {
                if self.next_index == 0 {
                    return Err(MediaError::NoFrames {
                        name: self.name.clone(),
                        status,
                        stderr_tail: self.tail.text(),
                    });
                }
                return Ok(None);
            }
            if filled == 0 && self.next_index == 0 {
                return Err(MediaError::Decode {
                    name: self.name.clone(),
                    status,
                    stderr_tail: self.tail.text(),
                });
            }
            return Err(MediaError::Truncated {
                name: self.name.clone(),
                frames: self.next_index,
                status,
                stderr_tail: self.tail.text(),
            });
        }
        let index = self.next_index;
        self.next_index += 1;
        let pts = match self.pts_rx.recv() {
            Ok(p) => p,
            Err(_) => index as f64 / self.info.fps.unwrap_or(25.0),
        };
        let image = RgbImage::from_raw(self.info.width, self.info.height, buf)
            .expect("buffer has the frame size");
        Ok(Some(Frame { index, pts, image }))
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
        if self.stderr_thread.is_some() || self.feeder.is_some() {
            let _ = self.child.kill();
            let _ = self.finish_child();
        }
    }
}

/// Decodes every frame of `input` (or the sampled ones) and calls `f` on each, streaming.
pub fn for_each_frame(
    input: Input,
    opts: &DecodeOptions,
    mut f: impl FnMut(Frame),
) -> Result<StreamInfo, MediaError> {
    let mut dec = Decoder::open(input, opts)?;
    let info = dec.info();
    for frame in &mut dec {
        f(frame?);
    }
    Ok(info)
}

fn drain_decoder_stderr(
    stderr: ChildStderr,
    hdr_tx: Sender<Header>,
    pts_tx: Sender<f64>,
    tail: Tail,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut in_output = false;
    let mut has_audio = false;
    let mut hdr_tx = Some(hdr_tx);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let raw = text.trim_end();
        if ["[error] ", "[fatal] ", "[panic] "]
            .iter()
            .any(|l| raw.starts_with(l) || raw.contains(&format!("] {l}")))
        {
            tail.mark_error();
        }
        let text = strip_level(raw);
        if text.contains("Parsed_showinfo") {
            if let Some(pts) = parse_showinfo_pts(text) {
                let _ = pts_tx.send(pts);
            }
            continue;
        }
        if text.starts_with("Output #") {
            in_output = true;
        } else if text.trim_start().starts_with("Stream #") {
            if !in_output && text.contains("Audio:") {
                has_audio = true;
            }
            if in_output
                && text.contains("Video:")
                && let (Some((width, height)), Some(tx)) = (parse_dimensions(text), hdr_tx.take())
            {
                let fps = parse_fps(text);
                let _ = tx.send(Header::Info(StreamInfo {
                    width,
                    height,
                    fps,
                    has_audio,
                }));
            }
        }
        tail.push(text.to_owned());
    }
}

/// A log line without the `@ 0x55d0c0ffee00` context addresses ffmpeg prints (`[mov,mp4 @ 0x..]`):
/// they differ from run to run and would make error messages, and records holding them,
/// irreproducible.
fn strip_addresses(line: &str) -> String {
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

/// A line without the `[info] ` prefix that `-loglevel level+info` (set by `ffmpeg-sidecar`) adds.
fn strip_level(line: &str) -> &str {
    const LEVELS: [&str; 8] = [
        "[info] ",
        "[error] ",
        "[warning] ",
        "[fatal] ",
        "[verbose] ",
        "[debug] ",
        "[panic] ",
        "[trace] ",
    ];
    LEVELS
        .iter()
        .find_map(|l| line.strip_prefix(l))
        .unwrap_or(line)
}

/// `pts_time:` of a `showinfo` frame line (`n:   3 pts:  3003 pts_time:0.1001 ...`).
fn parse_showinfo_pts(line: &str) -> Option<f64> {
    if !line.contains(" n:") {
        return None;
    }
    let rest = &line[line.find("pts_time:")? + "pts_time:".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The first `WxH` token with both sides non-zero in a `Stream #` line.
fn parse_dimensions(line: &str) -> Option<(u32, u32)> {
    line.split([' ', ',', '(', ')', '[', ']']).find_map(|tok| {
        let (w, h) = tok.split_once('x')?;
        let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
        (w > 0 && h > 0).then_some((w, h))
    })
}

/// The `N fps` figure in a `Stream #` line.
fn parse_fps(line: &str) -> Option<f64> {
    let idx = line.find(" fps")?;
    line[..idx]
        .rsplit([' ', ','])
        .next()?
        .parse()
        .ok()
        .filter(|f: &f64| *f > 0.0)
}

/// Settings of [`Encoder::create`].
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Output frame rate (frames are written at a constant rate).
    pub fps: f64,
    /// libx264 constant rate factor (lower: better quality).
    pub crf: u32,
    /// libx264 preset.
    pub preset: String,
    /// Copy the audio of this file into the output (re-encoded to AAC); `None` drops audio.
    pub keep_audio_from: Option<PathBuf>,
    /// The ffmpeg binary; `None`: `ffmpeg-sidecar`'s lookup.
    pub ffmpeg: Option<PathBuf>,
    /// Frames buffered between the caller and the writer thread.
    pub queue: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            fps: 25.0,
            crf: 23,
            preset: "veryfast".to_owned(),
            keep_audio_from: None,
            ffmpeg: None,
            queue: 4,
        }
    }
}

/// H.264 mp4 encoder fed with redacted frames; container metadata stripped.
pub struct Encoder {
    name: String,
    width: u32,
    height: u32,
    tx: Option<Sender<Vec<u8>>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
    stderr_thread: Option<JoinHandle<()>>,
    child: FfmpegChild,
    tail: Tail,
    frames: u64,
}

impl Encoder {
    /// Starts ffmpeg writing `dest` (overwritten) for frames of `width` x `height`.
    pub fn create(
        dest: &Path,
        width: u32,
        height: u32,
        opts: &EncodeOptions,
    ) -> Result<Self, MediaError> {
        let name = dest.display().to_string();
        let mut cmd = match &opts.ffmpeg {
            Some(p) => FfmpegCommand::new_with_path(p),
            None => FfmpegCommand::new(),
        };
        cmd.hide_banner()
            .args([
                "-nostats",
                "-loglevel",
                "error",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
            ])
            .arg(format!("{width}x{height}"))
            .arg("-r")
            .arg(format!("{}", opts.fps))
            .args(["-i", "pipe:0"]);
        if let Some(src) = &opts.keep_audio_from {
            cmd.arg("-i").arg(src.as_os_str());
        }
        cmd.args(["-map", "0:v:0"]);
        if opts.keep_audio_from.is_some() {
            cmd.args(["-map", "1:a?", "-c:a", "aac"]);
        } else {
            cmd.arg("-an");
        }
        cmd.args([
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
            "-fflags",
            "+bitexact",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-preset",
        ])
        .arg(&opts.preset)
        .arg("-crf")
        .arg(opts.crf.to_string())
        .args([
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            "-y",
        ])
        .arg(dest.as_os_str());
        let mut child = cmd.spawn().map_err(|source| MediaError::Spawn {
            name: name.clone(),
            source,
        })?;
        let mut stdin = child.take_stdin().expect("stdin is piped by FfmpegCommand");
        let stderr = child
            .take_stderr()
            .expect("stderr is piped by FfmpegCommand");
        drop(child.take_stdout());
        let tail = Tail::default();
        let stderr_thread = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                let reader = BufReader::new(stderr);
                for line in reader.split(b'\n').map_while(Result::ok) {
                    tail.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                }
            })
        };
        let (tx, rx) = bounded::<Vec<u8>>(opts.queue.max(1));
        let writer = std::thread::spawn(move || {
            for buf in rx {
                stdin.write_all(&buf)?;
            }
            stdin.flush()
        });
        Ok(Self {
            name,
            width,
            height,
            tx: Some(tx),
            writer: Some(writer),
            stderr_thread: Some(stderr_thread),
            child,
            tail,
            frames: 0,
        })
    }

    /// Queues one frame (blocks while the queue is full).
    pub fn write(&mut self, frame: &RedactedFrame) -> Result<(), MediaError> {
        self.write_image(frame.image())
    }

    fn write_image(&mut self, image: &RgbImage) -> Result<(), MediaError> {
        if image.dimensions() != (self.width, self.height) {
            return Err(MediaError::FrameSize {
                name: self.name.clone(),
                width: self.width,
                height: self.height,
                got_width: image.width(),
                got_height: image.height(),
            });
        }
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(image.as_raw().clone()).is_ok())
            .unwrap_or(false);
        if !sent {
            // The writer stopped: ffmpeg exited. Collect its reason.
            return Err(self.fail("the encoder stopped accepting frames"));
        }
        self.frames += 1;
        Ok(())
    }

    fn fail(&mut self, what: &str) -> MediaError {
        self.tx.take();
        let mut status = what.to_owned();
        if let Some(w) = self.writer.take()
            && let Ok(Err(e)) = w.join()
        {
            status = format!("{what}: {e}");
        }
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            status = format!("{status}; {s}");
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        MediaError::Encode {
            name: self.name.clone(),
            status,
            stderr_tail: self.tail.text(),
        }
    }

    /// Closes the input, waits for ffmpeg and returns the number of frames written.
    pub fn finish(mut self) -> Result<u64, MediaError> {
        self.tx.take();
        let write_result = self.writer.take().map(|w| w.join());
        let status = self.child.wait().map_err(|source| MediaError::Io {
            name: self.name.clone(),
            source,
        })?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let write_err = match write_result {
            Some(Ok(Err(e))) => Some(e.to_string()),
            Some(Err(_)) => Some("writer thread panicked".to_owned()),
            _ => None,
        };
        if !status.success() || write_err.is_some() {
            let status = match write_err {
                Some(e) => format!("{status}; {e}"),
                None => status.to_string(),
            };
            return Err(MediaError::Encode {
                name: self.name.clone(),
                status,
                stderr_tail: self.tail.text(),
            });
        }
        Ok(self.frames)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.tx.take();
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            if let Some(t) = self.stderr_thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_tails_have_no_run_specific_addresses() {
        assert_eq!(
            strip_addresses("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55f40c023840] moov atom not found"),
            "[mov,mp4,m4a,3gp,3g2,mj2] moov atom not found"
        );
        assert_eq!(strip_addresses("plain @ line"), "plain @ line");
    }

    #[test]
    fn parses_showinfo_pts() {
        let l = "[Parsed_showinfo_0 @ 0x55] n:   3 pts:   3003 pts_time:0.1001  duration:1001";
        assert_eq!(parse_showinfo_pts(l), Some(0.1001));
        assert_eq!(
            parse_showinfo_pts("[Parsed_showinfo_0 @ 0x55] config in time_base: 1/30000"),
            None
        );
    }

    #[test]
    fn parses_output_stream_line() {
        let l = "  Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, gbr/unknown/unknown, \
                 progressive), 176x144 [SAR 1:1 DAR 11:9], q=2-31, 18247 kb/s, 29.97 fps, 29.97 tbn";
        assert_eq!(parse_dimensions(l), Some((176, 144)));
        assert_eq!(parse_fps(l), Some(29.97));
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
        assert_eq!((dec.info().width, dec.info().height), (176, 144));
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
        // An mp4 with its index at the end cannot be read from a pipe; MPEG-TS can.
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
    fn an_mp4_indexed_at_the_end_is_a_clear_error_from_a_stream() {
        let file = std::fs::File::open(fixture("bikes.mp4")).unwrap();
        let err = Decoder::open(
            Input::Reader {
                name: "s3://b/bikes.mp4".into(),
                reader: Box::new(file),
            },
            &Default::default(),
        )
        .err()
        .expect("must fail");
        assert!(
            err.to_string().contains("s3://b/bikes.mp4")
                && err.to_string().contains("partial file"),
            "{err}"
        );
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
            msg.contains("not-a-video.mp4") && msg.contains("Invalid data"),
            "{msg}"
        );
    }
}
