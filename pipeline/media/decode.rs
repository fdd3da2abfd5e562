//! The streaming decoder: one ffmpeg child per clip reading the sealed source, raw RGB frames
//! of the probed size on stdout, and this run's own `showinfo` lines on stderr for timing,
//! sampling and the per-frame geometry check.

use super::*;

/// A random token per decoder, so that the names of this run's `showinfo` filters cannot be
/// guessed by whoever made the file.
pub(super) fn nonce() -> String {
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
pub(super) struct OutFrame {
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
    /// What stopped ffmpeg from outside ([`stopped_from_outside`]), once it has exited.
    stopped_by: Option<&'static str>,
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
        let mut cmd = ffmpeg_command(opts.ffmpeg.as_deref());
        // No autorotation (it follows per-frame rotation messages a file can change), and no
        // filter rebuild on a size change (the forced scale absorbs it).
        cmd.args([
            "-nostdin",
            "-noautorotate",
            "-reinit_filter",
            "0",
            // Crop exactly as the stream says (ffprobe's size): by default a decoder rounds a
            // left crop down to its alignment and gives wider frames.
            "-flags",
            "unaligned",
        ]);
        clip_input_only(&mut cmd)
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
        let Spawned {
            child,
            stdin,
            stdout,
            stderr,
        } = spawn_ffmpeg(&mut cmd, &name)?;
        drop(stdin);
        let tail = Tail::default();
        // One line per output frame, unbounded on purpose: ffmpeg prints it before writing the
        // frame to a pipe it blocks on, so the lines waiting are at most the frames that fit in
        // the pipe (16 bytes each; a 4x4 clip fits 1,365 frames in 64 KiB). A bounded channel
        // can block this thread while `stop` joins it: a hang, at a frame limit, on tiny frames.
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
                drain_decoder_stderr(stderr, &own, frames_tx, tail, &path, &name);
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
            stopped_by: None,
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
            Ok(s) => {
                self.stopped_by = stopped_from_outside(&s);
                s.to_string()
            }
            Err(e) => format!("wait failed: {e}"),
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        status
    }

    /// Once ffmpeg's log has ended: what stopped it from outside, if anything did (waits up to a
    /// second for the exit to be reaped; an ffmpeg still running was not stopped).
    fn outside_stop_once_exited(&mut self) -> Option<&'static str> {
        for _ in 0..100 {
            match self.child.as_inner_mut().try_wait() {
                Ok(Some(status)) => return stopped_from_outside(&status),
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
        None
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
            let pid = self.child.as_inner().id();
            crate::fault::signal_point("ffmpeg_kill", self.read, pid, libc::SIGKILL);
            crate::fault::signal_point("ffmpeg_term", self.read, pid, libc::SIGTERM);
            let Ok(out) = self.frames_rx.recv() else {
                if let Some(cause) = self.outside_stop_once_exited() {
                    self.stop();
                    return Err(MediaError::Killed {
                        name: self.name.clone(),
                        frames: self.next_index,
                        cause,
                    });
                }
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
        // Out of memory is the machine's state, not the clip's: tried again next time.
        let cause = self.stopped_by.or_else(|| {
            stderr_tail
                .contains("Cannot allocate memory")
                .then_some("an out-of-memory error (Cannot allocate memory)")
        });
        if let Some(cause) = cause {
            return Err(MediaError::Killed {
                name,
                frames: self.next_index,
                cause,
            });
        }
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

/// What stopped ffmpeg, when it was stopped the way the out-of-memory killer or an operator
/// stops a process, or could not start. A crash (SIGSEGV, SIGABRT, SIGFPE, SIGBUS, SIGILL) is not
/// in it: hostile bytes can cause one, and then the clip is at fault.
fn stopped_from_outside(status: &std::process::ExitStatus) -> Option<&'static str> {
    use std::os::unix::process::ExitStatusExt;
    // ffmpeg catches SIGTERM, SIGINT and SIGHUP itself and exits 255 ("received signal"); no
    // other failure of its exits 255. 126 and 127 are not ffmpeg's at all: the program or its
    // libraries could not be loaded (gone, or no memory to map them).
    match status.code() {
        Some(255) => return Some("SIGTERM, SIGINT or SIGHUP (ffmpeg exited 255)"),
        Some(126 | 127) => {
            return Some(
                "a failed start (exit 126 or 127: ffmpeg or its libraries could not be loaded)",
            );
        }
        _ => {}
    }
    match status.signal()? {
        libc::SIGKILL => Some("SIGKILL"),
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => None,
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
pub(super) fn parse_time_base(body: &str) -> Option<(i128, i128)> {
    let rest = body.strip_prefix("config in time_base: ")?;
    let tb = rest.split(',').next()?;
    let (n, d) = tb.split_once('/')?;
    let (n, d): (i128, i128) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
    (n > 0 && d > 0).then_some((n, d))
}

/// `(n, pts)` of a showinfo frame line (`n:   3 pts:   3003 pts_time:0.1001 ...`); `None` for
/// other lines and for a frame without a timestamp.
pub(super) fn parse_frame_line(body: &str) -> Option<(u64, i128)> {
    let rest = body.strip_prefix("n:")?.trim_start();
    let (n, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start().strip_prefix("pts:")?.trim_start();
    let pts = rest.split_whitespace().next()?;
    Some((n.parse().ok()?, pts.parse().ok()?))
}

/// The size and pixel aspect of the frame a showinfo frame line describes
/// (`... fmt:yuv420p sar:1/1 s:704x144 i:P ...`); `None` when the line states them not or
/// twice.
pub(super) fn parse_frame_geometry(body: &str) -> Option<probe::Coded> {
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
pub(super) fn check_frame_geometry(body: &str, n: u64, coded: probe::Coded, tail: &Tail) {
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
pub(super) fn own_line<'a>(line: &'a str, tag: &str, token: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("[showinfo@")?;
    let rest = rest.strip_prefix(tag)?.strip_prefix(token)?;
    let rest = rest.strip_prefix(" @ 0x")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_hexdigit());
    rest.strip_prefix("] [info] ")
}

pub(super) const REBUILT: &str =
    "ffmpeg rebuilt its filters mid-stream (the frames' side data changed), which loses frames";

/// What the decoder's stderr thread knows of this run's own filters.
pub(super) struct OwnFilters {
    /// The random part of their names.
    token: String,
    /// Whether `showinfo@s` reports the decoded frames before an `fps` filter.
    sampled: bool,
    /// The geometry every decoded frame must have.
    coded: probe::Coded,
}

pub(super) fn drain_decoder_stderr(
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
