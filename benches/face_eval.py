#!/usr/bin/env python3
"""Face-masking evaluation: `clearframe anonymize` against deface 1.5.0 on the same clips.

Runs both tools on each evaluation clip alternately (RUNS times each, medians of wall time), then
judges their outputs with an independent measure:

* ground truth: the faces two detectors find on the *original* frames, each on its own, at full
  resolution: RetinaFace-MobileNet0.25 (`models/retinaface_tiny.onnx`, score >= 0.85, decoded here
  in numpy, not by ClearFrame's code) and CenterFace as deface itself runs it (`deface.centerface`,
  score >= 0.5); boxes of the two that overlap (IoU >= 0.3) are one face; 16 px or taller;
* a face counts as masked when, inside its ground-truth box on the *output* frame, the detail is
  gone (Laplacian energy under 35% of the original's), or the region is flat (grey standard
  deviation under 4), or it changed strongly (mean absolute grey difference over 40);
* pixels changed: the share of pixels whose largest channel difference to the original exceeds 40
  (above what re-encoding does), over all frames.

Usage (with the deface venv's python, which has numpy, opencv, onnxruntime and deface):
    face_eval.py --cf target/release/clearframe --deface VENV/bin/deface --clips DIR [--runs 3]
                 [--cf-args "..."] [--only NAME,...] [--keep DIR]
Prints one line per clip and a pooled line; `--json F` writes the figures too.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import onnxruntime as ort
from deface.centerface import CenterFace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_FACE = 16
HF_RATIO = 0.35
FLAT_STD = 4.0
STRONG_DIFF = 40.0
CHANGED = 40


def probe(path):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", path],
        check=True, capture_output=True, text=True).stdout.strip().split(",")
    return int(out[0]), int(out[1])


def frames(path, size=None):
    """All frames of a video as RGB arrays, brought to `size`: deface pads rows to a multiple of
    16 (cropped off); ClearFrame writes square pixels for a clip with a non-square sample aspect
    ratio (scaled back to the clip's storage size)."""
    w, h = probe(path)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], check=True, capture_output=True).stdout
    n = len(raw) // (w * h * 3)
    arr = np.frombuffer(raw[: n * w * h * 3], np.uint8).reshape(n, h, w, 3)
    if size is not None and (w, h) != size:
        if w == size[0] and size[1] <= h < size[1] + 16:
            arr = arr[:, : size[1]]
        else:
            arr = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in arr])
    return arr


# --- RetinaFace-MobileNet0.25, decoded as in the common PyTorch port ---------------------------
class RetinaFace:
    def __init__(self, path):
        so = ort.SessionOptions()
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name

    def __call__(self, rgb, thresh=0.85):
        h, w = rgb.shape[:2]
        x = rgb[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
        x = x.transpose(2, 0, 1)[None]
        outs = self.sess.run(None, {self.inp: x})
        by_last = {o.shape[-1]: o for o in outs}
        loc, conf = by_last[4][0], by_last[2][0]
        priors = []
        for step, sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
            fh, fw = int(np.ceil(h / step)), int(np.ceil(w / step))
            for i in range(fh):
                for j in range(fw):
                    for s in sizes:
                        priors.append(((j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h))
        priors = np.array(priors, np.float32)
        scores = conf[:, 1]
        keep = scores >= thresh
        if not keep.any():
            return np.zeros((0, 5), np.float32)
        p, l, s = priors[keep], loc[keep], scores[keep]
        c = p[:, :2] + l[:, :2] * 0.1 * p[:, 2:]
        wh = p[:, 2:] * np.exp(l[:, 2:] * 0.2)
        boxes = np.concatenate([c - wh / 2, c + wh / 2], 1) * np.array([w, h, w, h], np.float32)
        return nms(np.concatenate([boxes, s[:, None]], 1), 0.4)


def nms(dets, iou_thr):
    order = dets[:, 4].argsort()[::-1]
    kept = []
    while order.size:
        i = order[0]
        kept.append(i)
        ious = iou(dets[i, :4], dets[order[1:], :4])
        order = order[1:][ious < iou_thr]
    return dets[kept]


def iou(a, bs):
    if len(bs) == 0:
        return np.zeros(0)
    x0 = np.maximum(a[0], bs[:, 0]); y0 = np.maximum(a[1], bs[:, 1])
    x1 = np.minimum(a[2], bs[:, 2]); y1 = np.minimum(a[3], bs[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(a) + area(bs) - inter + 1e-9)


def ground_truth(video, retina, centerface):
    """Per frame: list of (x0, y0, x1, y1, source) faces."""
    gt = []
    for f in video:
        h, w = f.shape[:2]
        r = retina(f, 0.85)
        c, _ = centerface(f, threshold=0.5)
        faces = [tuple(b[:4]) + ("retinaface",) for b in r]
        for b in c:
            if len(r) == 0 or iou(b[:4], r[:, :4]).max() < 0.3:
                faces.append(tuple(b[:4]) + ("centerface",))
        clipped = []
        for x0, y0, x1, y1, src in faces:
            x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
            x1, y1 = min(w, int(round(x1))), min(h, int(round(y1)))
            if y1 - y0 >= MIN_FACE and x1 - x0 >= 4:
                clipped.append((x0, y0, x1, y1, src))
        gt.append(clipped)
    return gt


def hf_energy(grey):
    return float(np.mean(cv2.Laplacian(grey, cv2.CV_32F) ** 2))


def judge(orig, out, gt):
    masked = total = 0
    missed = []
    for i, faces in enumerate(gt):
        go = cv2.cvtColor(orig[i], cv2.COLOR_RGB2GRAY).astype(np.float32)
        gu = cv2.cvtColor(out[i], cv2.COLOR_RGB2GRAY).astype(np.float32)
        for (x0, y0, x1, y1, src) in faces:
            total += 1
            ro, ru = go[y0:y1, x0:x1], gu[y0:y1, x0:x1]
            e0 = hf_energy(ro)
            ok = (hf_energy(ru) < HF_RATIO * e0 or float(ru.std()) < FLAT_STD
                  or float(np.abs(ru - ro).mean()) > STRONG_DIFF)
            if ok:
                masked += 1
            else:
                missed.append((i, x0, y0, x1, y1, src))
    return masked, total, missed


def changed_fraction(orig, out):
    n = min(len(orig), len(out))
    changed = 0
    for i in range(n):
        d = np.abs(orig[i].astype(np.int16) - out[i].astype(np.int16)).max(axis=2)
        changed += int((d > CHANGED).sum())
    return changed / float(n * orig.shape[1] * orig.shape[2])


def timed(cmd):
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"face_eval: {shlex.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cf", required=True)
    ap.add_argument("--deface", required=True)
    ap.add_argument("--clips", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cf-args", default="")
    ap.add_argument("--only", default="")
    ap.add_argument("--keep", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    names = sorted(f for f in os.listdir(a.clips) if f.endswith(".mp4"))
    if a.only:
        names = [n for n in names if n[:-4] in a.only.split(",")]
    retina = RetinaFace(os.path.join(ROOT, "models", "retinaface_tiny.onnx"))
    centerface = CenterFace(override_execution_provider="CPUExecutionProvider")
    out_dir = a.keep or tempfile.mkdtemp(prefix="face-eval-")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    print(f"{'clip':<10} {'frames':>6} {'faces':>6} | {'deface fps':>10} {'cf fps':>7} {'speed':>6} |"
          f" {'recall d':>8} {'recall c':>8} | {'chg d':>6} {'chg c':>6} {'c/d':>5}")
    for name in names:
        clip = os.path.join(a.clips, name)
        stem = name[:-4]
        od = os.path.join(out_dir, stem + ".deface.mp4")
        oc = os.path.join(out_dir, stem + ".cf.mp4")
        td, tc = [], []
        for run in range(a.runs):
            order = ("d", "c") if run % 2 == 0 else ("c", "d")
            for who in order:
                if who == "d":
                    td.append(timed([a.deface, clip, "-o", od, "--ep", "CPUExecutionProvider"]))
                else:
                    tc.append(timed([a.cf, "anonymize", clip, "-o", oc, *shlex.split(a.cf_args)]))
        orig = frames(clip)
        n, h, w = orig.shape[:3]
        gt = ground_truth(orig, retina, centerface)
        res = {"clip": stem, "frames": n, "faces": sum(map(len, gt)),
               "deface_s": float(np.median(td)), "cf_s": float(np.median(tc)),
               "deface_s_all": td, "cf_s_all": tc}
        for who, path in (("deface", od), ("cf", oc)):
            out = frames(path, (w, h))
            if len(out) != n:
                sys.exit(f"face_eval: {path} has {len(out)} frames, the clip {n}")
            m, t, missed = judge(orig, out, gt)
            res[who + "_masked"] = m
            res[who + "_changed"] = changed_fraction(orig, out)
            res[who + "_missed"] = missed[:20]
        rows.append(res)
        rd = res["deface_masked"] / max(1, res["faces"])
        rc = res["cf_masked"] / max(1, res["faces"])
        print(f"{stem:<10} {n:>6} {res['faces']:>6} | {n / res['deface_s']:>10.2f} {n / res['cf_s']:>7.2f}"
              f" {res['deface_s'] / res['cf_s']:>5.2f}x | {rd:>8.3f} {rc:>8.3f} |"
              f" {res['deface_changed']:>6.3f} {res['cf_changed']:>6.3f}"
              f" {res['cf_changed'] / max(1e-9, res['deface_changed']):>5.2f}", flush=True)
    faces = sum(r["faces"] for r in rows)
    fr = sum(r["frames"] for r in rows)
    ds, cs = sum(r["deface_s"] for r in rows), sum(r["cf_s"] for r in rows)
    dm, cm = sum(r["deface_masked"] for r in rows), sum(r["cf_masked"] for r in rows)
    dch = sum(r["deface_changed"] * r["frames"] for r in rows) / max(1, fr)
    cch = sum(r["cf_changed"] * r["frames"] for r in rows) / max(1, fr)
    print(f"{'pooled':<10} {fr:>6} {faces:>6} | {fr / ds:>10.2f} {fr / cs:>7.2f} {ds / cs:>5.2f}x |"
          f" {dm / max(1, faces):>8.3f} {cm / max(1, faces):>8.3f} | {dch:>6.3f} {cch:>6.3f}"
          f" {cch / max(1e-9, dch):>5.2f}")
    print(f"runs per tool and clip: {a.runs} (median wall time); clearframe args: {a.cf_args or '(defaults)'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
