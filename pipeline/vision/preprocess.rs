//! Frame to tensor: bilinear resize, channel order and normalisation in one pass.
//!
//! Every detector wants a float NCHW tensor built from an `RgbImage`, each with its own size,
//! channel order and normalisation. Doing the resize, the HWC to CHW transpose and the
//! normalisation in one loop avoids two intermediate images per frame. The resize samples like
//! OpenCV's `INTER_LINEAR` (pixel centres aligned), which is what the reference Python code of
//! these models uses.

use image::RgbImage;
use ndarray::Array4;

/// Channel order of the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue (as the image is stored).
    Rgb,
    /// Blue, green, red (OpenCV order).
    Bgr,
}

/// How to turn a frame into a `[1, 3, tensor_h, tensor_w]` tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorLayout {
    /// Size `(w, h)` the frame is stretched to, at most the tensor size.
    pub resize: (u32, u32),
    /// Tensor size `(w, h)`; the area outside `resize` is padded with 0 (after normalisation).
    pub tensor: (u32, u32),
    /// Channel order of the tensor.
    pub order: ChannelOrder,
    /// Subtracted from each tensor channel (in tensor channel order).
    pub mean: [f32; 3],
    /// Each tensor channel is divided by this after the mean is subtracted.
    pub std: [f32; 3],
}

/// Source index pair and weight of the second for each destination coordinate (OpenCV-style
/// half-pixel alignment, edges clamped).
fn taps(src: u32, dst: u32) -> Vec<(usize, usize, f32)> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|d| {
            let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(src as usize - 1);
            let i1 = (i0 + 1).min(src as usize - 1);
            let w = if i1 == i0 { 0.0 } else { s - i0 as f32 };
            (i0, i1, w)
        })
        .collect()
}

/// Builds the tensor for `img` as `layout` describes.
///
/// # Panics
/// When the image is empty or `resize` exceeds `tensor`.
pub fn to_tensor(img: &RgbImage, layout: &TensorLayout) -> Array4<f32> {
    let (rw, rh) = layout.resize;
    let (tw, th) = layout.tensor;
    assert!(img.width() > 0 && img.height() > 0, "empty image");
    assert!(
        rw <= tw && rh <= th && rw > 0 && rh > 0,
        "resize {rw}x{rh} exceeds tensor {tw}x{th}"
    );
    let (tw, th, rw, rh) = (tw as usize, th as usize, rw as usize, rh as usize);
    let mut out = Array4::<f32>::zeros((1, 3, th, tw));
    // Source channel feeding each tensor channel.
    let [c0, c1, c2]: [usize; 3] = match layout.order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let inv = layout.std.map(|s| 1.0 / s);
    let mean = layout.mean;
    let raw = img.as_raw();
    let iw = img.width() as usize;
    let plane = th * tw;
    let data = out.as_slice_mut().expect("fresh array is contiguous");
    let (p0, rest) = data.split_at_mut(plane);
    let (p1, p2) = rest.split_at_mut(plane);
    let same = rw == iw && rh == img.height() as usize;
    let xt = taps(img.width(), rw as u32);
    let yt = taps(img.height(), rh as u32);
    for y in 0..rh {
        let o0 = &mut p0[y * tw..y * tw + rw];
        let o1 = &mut p1[y * tw..y * tw + rw];
        let o2 = &mut p2[y * tw..y * tw + rw];
        if same {
            let src = &raw[y * iw * 3..(y + 1) * iw * 3];
            for (((px, a), b), c) in src.chunks_exact(3).zip(o0).zip(o1).zip(o2) {
                *a = (f32::from(px[c0]) - mean[0]) * inv[0];
                *b = (f32::from(px[c1]) - mean[1]) * inv[1];
                *c = (f32::from(px[c2]) - mean[2]) * inv[2];
            }
        } else {
            let (y0, y1, wy) = yt[y];
            let r0 = &raw[y0 * iw * 3..(y0 + 1) * iw * 3];
            let r1 = &raw[y1 * iw * 3..(y1 + 1) * iw * 3];
            for ((((&(x0, x1, wx), a), b), c), _) in xt.iter().zip(o0).zip(o1).zip(o2).zip(0..rw) {
                let sample = |ch: usize| {
                    let top =
                        f32::from(r0[x0 * 3 + ch]) * (1.0 - wx) + f32::from(r0[x1 * 3 + ch]) * wx;
                    let bottom =
                        f32::from(r1[x0 * 3 + ch]) * (1.0 - wx) + f32::from(r1[x1 * 3 + ch]) * wx;
                    top * (1.0 - wy) + bottom * wy
                };
                *a = (sample(c0) - mean[0]) * inv[0];
                *b = (sample(c1) - mean[1]) * inv[1];
                *c = (sample(c2) - mean[2]) * inv[2];
            }
        }
    }
    out
}

/// The smallest multiple of `m` that is at least `v` (and at least `m`).
pub fn round_up(v: u32, m: u32) -> u32 {
    v.div_ceil(m).max(1) * m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_layout_copies_pixels_in_order() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let t = to_tensor(
            &img,
            &TensorLayout {
                resize: (5, 3),
                tensor: (8, 4),
                order: ChannelOrder::Bgr,
                mean: [100.0, 0.0, 0.0],
                std: [2.0, 1.0, 1.0],
            },
        );
        assert_eq!(t.shape(), &[1, 3, 4, 8]);
        assert_eq!(t[[0, 0, 1, 4]], 50.0); // blue 200, minus 100, over 2
        assert_eq!(t[[0, 1, 2, 4]], 2.0); // green = y
        assert_eq!(t[[0, 2, 1, 3]], 3.0); // red = x
        assert_eq!(t[[0, 2, 3, 7]], 0.0); // padding
    }

    #[test]
    fn bilinear_downscale_of_a_ramp_is_a_ramp() {
        let img = RgbImage::from_fn(8, 2, |x, _| image::Rgb([(x * 10) as u8; 3]));
        let t = to_tensor(
            &img,
            &TensorLayout {
                resize: (4, 1),
                tensor: (4, 1),
                order: ChannelOrder::Rgb,
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        );
        // Destination pixel d samples source 2d + 0.5: the mean of two neighbours.
        let row: Vec<f32> = (0..4).map(|x| t[[0, 0, 0, x]]).collect();
        assert_eq!(row, vec![5.0, 25.0, 45.0, 65.0]);
    }

    #[test]
    fn round_up_to_multiples() {
        assert_eq!(round_up(768, 32), 768);
        assert_eq!(round_up(769, 32), 800);
        assert_eq!(round_up(0, 32), 32);
    }
}
