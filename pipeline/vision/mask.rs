//! Pure pixel functions of redaction: mask shapes and fills, blurs, polygons and coverage. No
//! state and no I/O; the redaction engine ([`crate::redact`]) composes them.

use image::RgbImage;

use crate::vision::BBox;

/// Shape of a face mask.
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
pub enum MaskShape {
    /// An ellipse inscribed in the grown face box (default).
    #[default]
    Ellipse,
    /// The grown face box itself.
    Box,
}

/// How masked pixels are replaced.
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
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Fill {
    /// A strong blur whose radius grows with the face size (default).
    #[default]
    Blur,
    /// Large blocks of the average colour.
    Mosaic,
    /// Solid black.
    Solid,
}

/// Grows a face box for masking as deface does (its `scale_bb`): each side moves out by
/// `scale - 1` times the box's size in that direction, so the mask is `2·scale − 1` times the
/// detector's box (1.5 at ClearFrame's default 1.25, 1.6 at deface's 1.3). With a scale of at least
/// `(1 + √2)/2 ≈ 1.21` the inscribed ellipse contains the whole detector box, corners included: hair line, ears and
/// chin, which a face detector's box only just holds, are inside the mask.
pub fn grow_box(b: &BBox, scale: f32) -> BBox {
    let (dx, dy) = ((b.x1 - b.x0) * (scale - 1.0), (b.y1 - b.y0) * (scale - 1.0));
    BBox {
        x0: b.x0 - dx,
        y0: b.y0 - dy,
        x1: b.x1 + dx,
        y1: b.y1 + dy,
    }
}

/// The integer pixel rectangle `[x0, x1) x [y0, y1)` of the pixels whose centres may lie in `b`,
/// clipped to a `w` x `h` frame; `None` when empty.
pub fn pixel_rect(b: &BBox, w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
    let clampf = |v: f32, hi: u32| v.clamp(0.0, hi as f32);
    let x0 = clampf((b.x0 - 0.5).ceil(), w) as u32;
    let y0 = clampf((b.y0 - 0.5).ceil(), h) as u32;
    let x1 = clampf((b.x1 - 0.5).floor() + 1.0, w) as u32;
    let y1 = clampf((b.y1 - 0.5).floor() + 1.0, h) as u32;
    (x0 < x1 && y0 < y1).then_some((x0, y0, x1, y1))
}

/// Whether the centre of pixel `(x, y)` lies inside the mask of `b`.
pub fn mask_contains(shape: MaskShape, b: &BBox, x: u32, y: u32) -> bool {
    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
    if !(px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1) {
        return false;
    }
    match shape {
        MaskShape::Box => true,
        MaskShape::Ellipse => {
            let (rx, ry) = ((b.x1 - b.x0) / 2.0, (b.y1 - b.y0) / 2.0);
            if rx <= 0.0 || ry <= 0.0 {
                return false;
            }
            let (dx, dy) = ((px - (b.x0 + rx)) / rx, (py - (b.y0 + ry)) / ry);
            dx * dx + dy * dy <= 1.0
        }
    }
}

/// Masks one (already grown) face box in place: only pixels for which [`mask_contains`] holds
/// change. The blur radius is a sixth of the box's longer side (three box passes), so the face
/// is reduced to a few colour blobs; the mosaic uses blocks of a sixth of the longer side.
pub fn mask_face(img: &mut RgbImage, b: &BBox, shape: MaskShape, fill: Fill) {
    let (w, h) = img.dimensions();
    let Some((x0, y0, x1, y1)) = pixel_rect(b, w, h) else {
        return;
    };
    let side = (b.x1 - b.x0).max(b.y1 - b.y0);
    let replacement: Option<RgbImage> = match fill {
        Fill::Solid => None,
        Fill::Blur => {
            let mut region = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
            let radius = ((side / 6.0).round() as u32).max(2);
            box_blur(&mut region, radius, 3);
            Some(region)
        }
        Fill::Mosaic => {
            let mut region = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
            mosaic(&mut region, ((side / 6.0).round() as u32).max(4));
            Some(region)
        }
    };
    for y in y0..y1 {
        for x in x0..x1 {
            if mask_contains(shape, b, x, y) {
                let px = match &replacement {
                    None => image::Rgb([0, 0, 0]),
                    Some(r) => *r.get_pixel(x - x0, y - y0),
                };
                img.put_pixel(x, y, px);
            }
        }
    }
}

/// Separable box blur of the whole image, `passes` times (three passes approximate a Gaussian of
/// sigma about `radius`); edges are clamped, so only the image's own pixels contribute.
pub fn box_blur(img: &mut RgbImage, radius: u32, passes: u32) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 || radius == 0 {
        return;
    }
    let r = radius as usize;
    let buf: &mut [u8] = img;
    let mut line: Vec<u8> = Vec::new();
    for _ in 0..passes {
        // rows
        for y in 0..h {
            line.clear();
            line.extend_from_slice(&buf[y * w * 3..(y + 1) * w * 3]);
            blur_line(&line, &mut buf[y * w * 3..(y + 1) * w * 3], w, 3, r);
        }
        // columns
        for x in 0..w {
            line.clear();
            line.extend((0..h).flat_map(|y| {
                let o = (y * w + x) * 3;
                [buf[o], buf[o + 1], buf[o + 2]]
            }));
            let mut out = vec![0u8; h * 3];
            blur_line(&line, &mut out, h, 3, r);
            for y in 0..h {
                let o = (y * w + x) * 3;
                buf[o..o + 3].copy_from_slice(&out[y * 3..y * 3 + 3]);
            }
        }
    }
}

/// One box-filter pass over `n` pixels of `c` channels, clamped at the ends.
fn blur_line(src: &[u8], dst: &mut [u8], n: usize, c: usize, r: usize) {
    let win = (2 * r + 1) as u32;
    let at = |i: isize, ch: usize| u32::from(src[(i.clamp(0, n as isize - 1) as usize) * c + ch]);
    for ch in 0..c {
        let mut sum: u32 = (-(r as isize)..=r as isize).map(|i| at(i, ch)).sum();
        for i in 0..n {
            dst[i * c + ch] = ((sum + win / 2) / win) as u8;
            sum += at(i as isize + r as isize + 1, ch);
            sum -= at(i as isize - r as isize, ch);
        }
    }
}

/// Replaces each `block` x `block` cell by its mean colour.
fn mosaic(img: &mut RgbImage, block: u32) {
    let (w, h) = img.dimensions();
    for by in (0..h).step_by(block as usize) {
        for bx in (0..w).step_by(block as usize) {
            let (ex, ey) = ((bx + block).min(w), (by + block).min(h));
            let mut sum = [0u64; 3];
            let n = u64::from((ex - bx) * (ey - by));
            for y in by..ey {
                for x in bx..ex {
                    let p = img.get_pixel(x, y);
                    for c in 0..3 {
                        sum[c] += u64::from(p[c]);
                    }
                }
            }
            let mean = image::Rgb([(sum[0] / n) as u8, (sum[1] / n) as u8, (sum[2] / n) as u8]);
            for y in by..ey {
                for x in bx..ex {
                    img.put_pixel(x, y, mean);
                }
            }
        }
    }
}

/// Blurs everything outside `keep` (person boxes) strongly: radius a twentieth of the shorter
/// side, three passes.
pub fn blur_outside(img: &mut RgbImage, keep: &[BBox]) {
    let (w, h) = img.dimensions();
    let mut blurred = img.clone();
    box_blur(&mut blurred, (w.min(h) / 20).max(4), 3);
    let rects: Vec<_> = keep.iter().filter_map(|b| pixel_rect(b, w, h)).collect();
    for y in 0..h {
        for x in 0..w {
            if !rects
                .iter()
                .any(|&(x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1)
            {
                img.put_pixel(x, y, *blurred.get_pixel(x, y));
            }
        }
    }
}

/// Whether the normalized point `(x, y)` is inside `poly` (even-odd rule).
pub fn point_in_polygon(x: f32, y: f32, poly: &[[f32; 2]]) -> bool {
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let [xi, yi] = poly[i];
        let [xj, yj] = poly[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// Fills the pixels whose centres lie inside the normalized polygon with `color` (even-odd rule),
/// one scanline at a time.
pub fn fill_polygon(img: &mut RgbImage, poly: &[[f32; 2]], color: [u8; 3]) {
    let (w, h) = img.dimensions();
    let n = poly.len();
    if n < 3 {
        return;
    }
    let mut xs: Vec<f32> = Vec::with_capacity(n);
    for y in 0..h {
        let yc = (y as f32 + 0.5) / h as f32;
        xs.clear();
        for i in 0..n {
            let [xi, yi] = poly[i];
            let [xj, yj] = poly[(i + n - 1) % n];
            if (yi > yc) != (yj > yc) {
                xs.push((xj - xi) * (yc - yi) / (yj - yi) + xi);
            }
        }
        xs.sort_by(f32::total_cmp);
        for pair in xs.chunks_exact(2) {
            for x in 0..w {
                let xc = (x as f32 + 0.5) / w as f32;
                // Same strict test as `point_in_polygon`: a centre counts when left of a crossing.
                if xc >= pair[0] && xc < pair[1] {
                    img.put_pixel(x, y, image::Rgb(color));
                }
            }
        }
    }
}
