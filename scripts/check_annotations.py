#!/usr/bin/env python3
"""Loads a ClearFrame dataset's annotation files with the tools people will use them with, and
fails (exit 1, one line per problem on stderr) when any of them rejects or misreads them.

Usage: check_annotations.py DATASET_DIR   (run with the venv of scripts/setup-consumers.sh)

The annotation files and the manifest are read from the version folder that the dataset's
dataset.json names (versions/<version>/); frames/ is at the dataset's top.

- coco:          pycocotools COCO() loads annotations/coco.json; every image file exists under
                 frames/; loadRes() + COCOeval(bbox) on the annotations as detections gives AP 1.0.
- datumaro-coco: datumaro imports the folder as COCO ("coco" format, detected) through the
                 standard layout: annotations/instances_default.json and images/default/ pointing
                 at the dataset's files (symlinks in a temporary folder; nothing is copied or
                 edited). Items, boxes and labels must match coco.json and the images must load.
- datumaro-cvat: datumaro imports each annotations/cvat/<video_id>.xml ("cvat" format); the boxes
                 per frame must equal the manifest's detections, with track ids.
- labelstudio:   label-studio-sdk's LabelInterface parses annotations/labelstudio.xml and
                 validates every task's predictions (validate_prediction) and data keys against it;
                 the task layout is checked against Label Studio's documented import format.
Prints "<check>: ok ..." per check on stdout.
"""

import json
import math
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

problems = []


def fail(check, msg):
    problems.append(f"{check}: {msg}")


def version_dir(root):
    """The folder of the version dataset.json names: versions/<version>/ (annotations, manifest)."""
    with open(os.path.join(root, "dataset.json"), encoding="utf-8") as f:
        version = json.load(f)["version"]
    if len(version) != 16 or any(c not in "0123456789abcdef" for c in version):
        sys.exit(f"dataset: dataset.json names the version {version!r}")
    return os.path.join(root, "versions", version)


def load_manifest(root):
    with open(os.path.join(version_dir(root), "manifest.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_coco(root, manifest):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = os.path.join(version_dir(root), "annotations", "coco.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(path)
    img_ids = sorted(gt.getImgIds())
    if img_ids != list(range(1, len(manifest) + 1)):
        fail("coco", f"image ids {img_ids} are not 1..{len(manifest)}")
    ann_ids = sorted(gt.getAnnIds())
    n_dets = sum(len(e["detections"]) for e in manifest)
    if ann_ids != list(range(1, n_dets + 1)):
        fail("coco", f"annotation ids are not 1..{n_dets}")
    for img_id, entry in zip(img_ids, manifest):
        img = gt.loadImgs(img_id)[0]
        if not os.path.isfile(os.path.join(root, "frames", img["file_name"])):
            fail("coco", f"image {img_id}: frames/{img['file_name']} does not exist")
        if (img["width"], img["height"]) != (entry["width"], entry["height"]):
            fail("coco", f"image {img_id}: size differs from the manifest")
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[img_id]))
        if len(anns) != len(entry["detections"]):
            fail("coco", f"image {img_id}: {len(anns)} annotations, manifest has {len(entry['detections'])}")
        for a, d in zip(anns, entry["detections"]):
            x, y, w, h = a["bbox"]
            b = d["bbox"]
            if not all(math.isclose(u, v, abs_tol=0.01) for u, v in
                       [(x, b["x0"]), (y, b["y0"]), (x + w, b["x1"]), (y + h, b["y1"])]):
                fail("coco", f"annotation {a['id']}: bbox {a['bbox']} is not the manifest's {b}")
            if not math.isclose(a["area"], w * h, rel_tol=1e-6, abs_tol=0.01):
                fail("coco", f"annotation {a['id']}: area {a['area']} != w*h")
            if a["iscrowd"] != 0 or a["segmentation"] != []:
                fail("coco", f"annotation {a['id']}: iscrowd/segmentation not 0/[]")
            cat = gt.loadCats(a["category_id"])[0]
            if cat["name"] != d["class"]:
                fail("coco", f"annotation {a['id']}: category {cat['name']} is not {d['class']}")
    if len(gt.getCatIds()) != 80 or gt.loadCats(90)[0]["name"] != "toothbrush":
        fail("coco", "categories are not the 80 COCO classes with official ids")
    if n_dets:
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                    "score": a.get("score", 1.0)} for a in gt.loadAnns(ann_ids)]
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if not math.isclose(ev.stats[0], 1.0, abs_tol=1e-9) and ev.stats[0] != -1:
            fail("coco", f"COCOeval of the annotations against themselves gives AP {ev.stats[0]}, not 1.0")
        ap = ev.stats[0]
    else:
        ap = float("nan")
    return f"({len(img_ids)} images, {len(ann_ids)} annotations, self-AP {ap:.3f})"


def check_datumaro_coco(root, manifest):
    import datumaro as dm

    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "annotations"))
        os.makedirs(os.path.join(tmp, "images"))
        os.symlink(os.path.join(os.path.abspath(version_dir(root)), "annotations", "coco.json"),
                   os.path.join(tmp, "annotations", "instances_default.json"))
        os.symlink(os.path.join(os.path.abspath(root), "frames"), os.path.join(tmp, "images", "default"))
        detected = dm.Environment().detect_dataset(tmp)
        if "coco" not in detected and "coco_instances" not in detected:
            fail("datumaro-coco", f"datumaro does not detect COCO (detected {detected})")
            return
        ds = dm.Dataset.import_from(tmp, "coco_instances")
        labels = ds.categories()[dm.AnnotationType.label]
        items = sorted(ds, key=lambda it: it.attributes.get("id", 0))
        if len(items) != len(manifest):
            fail("datumaro-coco", f"{len(items)} items, manifest has {len(manifest)}")
        boxes = 0
        for it, entry in zip(items, manifest):
            # The image's path below frames/ without its extension:
            # <video_id>/<frame:06>-<blake3:16>.
            want_id = entry["path"].removeprefix("frames/").removesuffix(".jpg")
            if not want_id.startswith(f"{entry['video_id']}/{entry['frame']:06d}-"):
                fail("datumaro-coco", f"{entry['path']} is not a path of frame {entry['frame']}")
            if it.id != want_id:
                fail("datumaro-coco", f"item {it.id} is not {want_id}")
            data = it.media.data if it.media is not None else None
            if data is None or tuple(data.shape[:2]) != (entry["height"], entry["width"]):
                fail("datumaro-coco", f"item {it.id}: image did not load at {entry['width']}x{entry['height']}")
            got = sorted((labels[a.label].name, tuple(round(v, 2) for v in a.get_bbox()))
                         for a in it.annotations if a.type == dm.AnnotationType.bbox)
            want = sorted((d["class"], (round(d["bbox"]["x0"], 2), round(d["bbox"]["y0"], 2),
                                        round(d["bbox"]["x1"] - d["bbox"]["x0"], 2),
                                        round(d["bbox"]["y1"] - d["bbox"]["y0"], 2)))
                          for d in entry["detections"])
            if got != want:
                fail("datumaro-coco", f"item {it.id}: boxes {got} are not the manifest's {want}")
            boxes += len(got)
    return f"({len(items)} items, {boxes} boxes, {len(labels)} labels)"


def check_datumaro_cvat(root, manifest):
    import datumaro as dm

    by_clip = {}
    for e in manifest:
        by_clip.setdefault(e["video_id"], []).append(e)
    cvat_dir = os.path.join(version_dir(root), "annotations", "cvat")
    files = sorted(os.listdir(cvat_dir)) if os.path.isdir(cvat_dir) else []
    if files != sorted(f"{v}.xml" for v in by_clip):
        fail("datumaro-cvat", f"CVAT files {files} are not one per clip {sorted(by_clip)}")
    tracks = 0
    for name in files:
        clip = name[:-4]
        ds = dm.Dataset.import_from(os.path.join(cvat_dir, name), "cvat")
        labels = ds.categories()[dm.AnnotationType.label]
        frames = by_clip.get(clip, [])
        track_ids = set()
        for k, entry in enumerate(frames):
            it = ds.get(f"frame_{k:06d}", subset=clip) or next(
                (i for i in ds if i.id == f"frame_{k:06d}"), None)
            if it is None:
                # CVAT video XML lists boxes, not frames: a frame with no detection has no item.
                if entry["detections"]:
                    fail("datumaro-cvat", f"{name}: frame {k} with detections missing")
                continue
            visible = [a for a in it.annotations
                       if a.type == dm.AnnotationType.bbox and not a.attributes.get("outside")]
            got = sorted((labels[a.label].name, tuple(round(v, 2) for v in a.points)) for a in visible)
            want = sorted((d["class"], tuple(round(d["bbox"][c], 2) for c in ("x0", "y0", "x1", "y1")))
                          for d in entry["detections"])
            if got != want:
                fail("datumaro-cvat", f"{name} frame {k}: boxes {got} are not the manifest's {want}")
            for a in visible:
                if "track_id" not in a.attributes:
                    fail("datumaro-cvat", f"{name} frame {k}: a box has no track id")
                track_ids.add(a.attributes.get("track_id"))
        tracks += len(track_ids)
    return f"({len(files)} clips, {tracks} tracks)"


def check_labelstudio(root, manifest):
    from label_studio_sdk.label_interface import LabelInterface

    with open(os.path.join(version_dir(root), "annotations", "labelstudio.xml"), encoding="utf-8") as f:
        config = f.read()
    li = LabelInterface(config)
    li.validate()
    with open(os.path.join(version_dir(root), "annotations", "labelstudio.json"), encoding="utf-8") as f:
        tasks = json.load(f)
    if not isinstance(tasks, list) or len(tasks) != len(manifest):
        fail("labelstudio", f"expected a list of {len(manifest)} tasks")
        return
    regions = 0
    for i, (task, entry) in enumerate(zip(tasks, manifest)):
        where = f"task {i} ({entry['path']})"
        # Label Studio's import format: a dict with "data" (keys the config's $variables use),
        # optional "predictions": [{"model_version", "score", "result": [region...]}].
        if set(task) - {"data", "predictions", "annotations", "meta", "id"}:
            fail("labelstudio", f"{where}: unexpected task keys {sorted(task)}")
        for obj in li.objects:
            if obj.value_is_variable and task["data"].get(obj.value_name) is None:
                fail("labelstudio", f"{where}: data.{obj.value_name} missing")
        if not str(task["data"].get("image", "")).endswith(entry["path"]):
            fail("labelstudio", f"{where}: data.image {task['data'].get('image')} does not point at the frame")
        preds = task.get("predictions", [])
        if len(preds) != 1:
            fail("labelstudio", f"{where}: expected one prediction")
            continue
        pred = preds[0]
        if not isinstance(pred.get("model_version"), str) or not pred["model_version"]:
            fail("labelstudio", f"{where}: model_version missing")
        errors = li.validate_prediction(pred, return_errors=True)
        for e in errors:
            fail("labelstudio", f"{where}: {e}")
        for r, d in zip(pred["result"], entry["detections"]):
            v = r["value"]
            w, h = r["original_width"], r["original_height"]
            if (w, h) != (entry["width"], entry["height"]):
                fail("labelstudio", f"{where}: original size differs from the manifest")
            if not (0 <= v["x"] <= 100 and 0 <= v["y"] <= 100 and v["x"] + v["width"] <= 100.0001
                    and v["y"] + v["height"] <= 100.0001):
                fail("labelstudio", f"{where}: region {r['id']} is outside 0..100 percent")
            px = (v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100,
                  (v["y"] + v["height"]) * h / 100)
            b = d["bbox"]
            if not all(math.isclose(p, q, abs_tol=0.05) for p, q in zip(px, (b["x0"], b["y0"], b["x1"], b["y1"]))):
                fail("labelstudio", f"{where}: region {r['id']} is {px} px, manifest has {b}")
            if v["rectanglelabels"] != [d["class"]]:
                fail("labelstudio", f"{where}: label {v['rectanglelabels']} is not {d['class']}")
            regions += 1
    return f"({len(tasks)} tasks, {regions} regions)"


def run_checks(root, manifest, checks):
    """Runs each check(root, manifest) and prints "<check>: ok <summary>" or "<check>: FAILED"."""
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", "-")
        before = len(problems)
        try:
            summary = check(root, manifest)
        except Exception as e:  # a consumer that throws has rejected the file
            fail(name, f"{type(e).__name__}: {e}")
        print(f"{name}: ok {summary}" if len(problems) == before else f"{name}: FAILED")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    manifest = load_manifest(root)
    run_checks(root, manifest, (check_coco, check_datumaro_coco, check_datumaro_cvat, check_labelstudio))
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
