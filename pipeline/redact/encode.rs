//! The H.264 encoder of `anonymize`: redacted frames in, an mp4 with no metadata out. It lives
//! with redaction because it takes [`RedactedFrame`]s only; ffmpeg is spawned through `media`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use ffmpeg_sidecar::child::FfmpegChild;
use image::RgbImage;

use super::RedactedFrame;
use crate::media::{self, MediaError, Tail};

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
        let mut cmd = media::ffmpeg_command(opts.ffmpeg.as_deref());
        cmd.args([
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
            media::clip_input_only(&mut cmd)
                .arg("-i")
                .arg(src.as_os_str());
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
        let media::Spawned {
            child,
            mut stdin,
            stdout,
            stderr,
        } = media::spawn_ffmpeg(&mut cmd, &name)?;
        drop(stdout);
        let tail = Tail::default();
        let stderr_thread = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                let reader = BufReader::new(stderr);
                for line in reader.split(b'\n').map_while(Result::ok) {
                    tail.push(crate::media::strip_addresses(
                        String::from_utf8_lossy(&line).trim_end(),
                    ));
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
    pub fn write<S>(&mut self, frame: &RedactedFrame<S>) -> Result<(), MediaError> {
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
            .is_some_and(|tx| tx.send(image.as_raw().clone()).is_ok());
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
        let write_result = self.writer.take().map(std::thread::JoinHandle::join);
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
