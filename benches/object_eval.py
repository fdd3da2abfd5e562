#!/usr/bin/env python3
"""Object-detection quality of ClearFrame's detector settings on a labelled COCO set.

    benches/object_eval.py [--set fixtures/eval/objects/annotations.json] [--bin BIN]
                           [--json OUT] [--sweep] SETTING...

SETTING is a config file (TOML; only [detect] matters), or `default` for the built-in settings.
For each, `clearframe evaluate` detects on every image of the set and this script scores the
results against the labels, for the eight classes the set labels (person, bicycle, car,
motorcycle, bus, truck, cat, dog):

  - per class: labelled objects, true and false positives at IoU >= 0.5, recall, precision
    (greedy by score, as COCO matches; a detection that matches no object but lies on an
    `iscrowd` region is ignored, as COCO ignores it);
  - person recall and precision per subset of the set (e.g. `large`);
  - pycocotools COCOeval (bbox) over the eight classes: mAP@[.5:.95] and mAP@0.5, and AP@0.5
    per class. These are the AP of the detections each setting *emits*, thresholds included:
    what an annotator gets as pre-annotations.
  - milliseconds per image (the `evaluate` command's own timing; compare settings within one run).

--sweep also runs each setting with every threshold at 0.05 and prints, per class, recall and
precision at thresholds 0.1 to 0.6: the table the per-class thresholds were chosen from.

Needs pycocotools (scripts/setup-consumers.sh makes a venv with it). Exit status 0.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
IMAGES = []  # --images DIR, when the images are not in images/ beside the set


def iou(a, b):
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def ioa(det, crowd):
    """Intersection over the detection's area (COCO's IoU with a crowd region)."""
    x1, y1 = det[0] + det[2], det[1] + det[3]
    iw = max(0.0, min(x1, crowd[0] + crowd[2]) - max(det[0], crowd[0]))
    ih = max(0.0, min(y1, crowd[1] + crowd[3]) - max(det[1], crowd[1]))
    a = det[2] * det[3]
    return iw * ih / a if a > 0 else 0.0


def match(gt, dets, thr=0.5):
    """Per class id: [labelled, tp, fp]; and per (subset, class): the same. gt: COCO dict."""
    subset = {im["id"]: im.get("subset", "all") for im in gt["images"]}
    objs = defaultdict(list)
    for a in gt["annotations"]:
        objs[(a["image_id"], a["category_id"])].append(a)
    by = defaultdict(list)
    for d in dets:
        by[(d["image_id"], d["category_id"])].append(d)
    counts = defaultdict(lambda: [0, 0, 0])
    keys = set(objs) | set(by)
    for key in keys:
        img, cat = key
        real = [a for a in objs.get(key, []) if not a.get("iscrowd")]
        crowd = [a for a in objs.get(key, []) if a.get("iscrowd")]
        taken = [False] * len(real)
        tp = fp = 0
        for d in sorted(by.get(key, []), key=lambda d: -d["score"]):
            best, bi = thr, -1
            for i, a in enumerate(real):
                if not taken[i]:
                    v = iou(d["bbox"], a["bbox"])
                    if v >= best:
                        best, bi = v, i
            if bi >= 0:
                taken[bi] = True
                tp += 1
            elif any(ioa(d["bbox"], c["bbox"]) >= thr for c in crowd):
                continue
            else:
                fp += 1
        for k in (cat, (subset[img], cat)):
            counts[k][0] += len(real)
            counts[k][1] += tp
            counts[k][2] += fp
    return counts


def coco_map(gt_path, dets, cats):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        if not dets:
            return 0.0, 0.0, {c: 0.0 for c in cats}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = cats
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per = {}
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    for k, c in enumerate(cats):
        p = prec[0, :, k, 0, -1]
        p = p[p > -1]
        per[c] = float(p.mean()) if p.size else float("nan")
    return float(ev.stats[0]), float(ev.stats[1]), per


def run_setting(binary, gt_path, config):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.json")
        cmd = [binary, "evaluate", "--coco", gt_path, "--out", out] + IMAGES
        if config != "default":
            cmd += ["--config", config]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
        m = re.search(r"([0-9.]+) ms per image", p.stderr)
        with open(out) as f:
            return json.load(f), float(m.group(1)) if m else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def report(name, gt, gt_path, dets, ms, cats, names):
    other = defaultdict(int)
    for d in dets:
        if d["category_id"] not in cats:
            other[d["category_id"]] += 1
    dets = [d for d in dets if d["category_id"] in cats]
    counts = match(gt, dets)
    mall, m50, per = coco_map(gt_path, dets, cats)
    row = {"setting": name, "ms_per_image": ms, "mAP": mall, "mAP50": m50, "classes": {}, "subsets": {}}
    print(f"\n## {name}: mAP@[.5:.95] {mall:.3f}, mAP@0.5 {m50:.3f}, {ms:.1f} ms/image")
    print("| class | labelled | found | false | recall | precision | AP@0.5 |")
    print("|---|---|---|---|---|---|---|")
    for c in cats:
        n, tp, fp = counts[c]
        r, p = ratio(tp, n), ratio(tp, tp + fp)
        row["classes"][names[c]] = {"labelled": n, "tp": tp, "fp": fp, "recall": r, "precision": p, "ap50": per[c]}
        print(f"| {names[c]} | {n} | {tp} | {fp} | {r:.3f} | {p:.3f} | {per[c]:.3f} |")
    print(f"\nboxes of classes the set does not label (not scored; COCO category id: count): "
          f"{dict(sorted(other.items())) or 'none'}")
    row["unlabelled_classes"] = {str(k): v for k, v in sorted(other.items())}
    subsets = sorted({im.get("subset", "all") for im in gt["images"]})
    print("\nperson by subset: " + ", ".join(
        f"{s} {counts[(s, 1)][1]}/{counts[(s, 1)][0]} found, {counts[(s, 1)][2]} false "
        f"(R {ratio(counts[(s, 1)][1], counts[(s, 1)][0]):.2f} P {ratio(counts[(s, 1)][1], counts[(s, 1)][1] + counts[(s, 1)][2]):.2f})"
        for s in subsets))
    for s in subsets:
        n, tp, fp = counts[(s, 1)]
        row["subsets"][s] = {"person_labelled": n, "tp": tp, "fp": fp, "recall": ratio(tp, n), "precision": ratio(tp, tp + fp)}
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default=os.path.join(ROOT, "fixtures/eval/objects/annotations.json"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/clearframe"))
    ap.add_argument("--images", help="folder of the set's images [default: images/ beside it]")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("settings", nargs="+")
    a = ap.parse_args()
    if a.images:
        IMAGES.extend(["--images", a.images])
    with open(a.set) as f:
        gt = json.load(f)
    cats = sorted(c["id"] for c in gt["categories"])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    print(f"set: {a.set}: {len(gt['images'])} images, "
          f"{sum(1 for x in gt['annotations'] if not x.get('iscrowd'))} objects "
          f"(+{sum(1 for x in gt['annotations'] if x.get('iscrowd'))} iscrowd, ignored)")
    rows = []
    for s in a.settings:
        dets, ms = run_setting(a.bin, a.set, s)
        rows.append(report(s, gt, a.set, dets, ms, cats, names))
        if a.sweep:
            sweep(a.bin, a.set, s, gt, cats, names)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(finite(rows), f, indent=1)


def finite(v):
    """NaN (no objects, or no detections, of a class) as null: strict JSON."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    return v


def sweep(binary, gt_path, setting, gt, cats, names):
    """Every class at 0.05, then recall/precision per class at thresholds 0.10..0.60."""
    import tomllib

    cfg = {}
    if setting != "default":
        with open(setting, "rb") as f:
            cfg = tomllib.load(f)
    det = dict(cfg.get("detect", {}))
    det["threshold"] = 0.05
    det["class_thresholds"] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("[detect]\n")
        for k, v in det.items():
            f.write(f"{k} = {json.dumps(v)}\n")
        path = f.name
    try:
        dets, _ = run_setting(binary, gt_path, path)
    finally:
        os.unlink(path)
    thresholds = [round(0.1 + 0.05 * i, 2) for i in range(11)]
    print(f"\nsweep of {setting}: recall/precision per class by threshold")
    print("| class | " + " | ".join(str(t) for t in thresholds) + " |")
    print("|---|" + "---|" * len(thresholds))
    for c in cats:
        cells = []
        for t in thresholds:
            n, tp, fp = match(gt, [d for d in dets if d["category_id"] == c and d["score"] >= t])[c]
            cells.append(f"{ratio(tp, n):.2f}/{ratio(tp, tp + fp):.2f}")
        print(f"| {names[c]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
