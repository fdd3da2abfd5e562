#!/usr/bin/env bash
# Builds models/nanodet_int8.onnx from models/nanodet_coco.onnx in two steps:
#   1. (in a temporary folder) the same float32 network with tf2onnx's Pad(-inf) + MaxPool pair
#     folded into one MaxPool with `pads` (the same values, bit-identical outputs), so that
#     calibration sees no -inf;
#   2. that network statically quantised to INT8 with ONNX Runtime's own
#     quantiser (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration). Only the
#     network body (Conv, LeakyRelu, Concat, MaxPool, Resize, Add) is quantised: the heads' Split,
#     Reshape, Transpose and Sigmoid stay float, because MinMax would clip the class scores at the
#     largest score seen in calibration (a 0.74 person fell to 0.46).
# Calibration: 25 real frames of fixtures/media/*.mp4 (carphone_pristine every 12th, bikes every
# 25th, bigbuckbunny every 26th), decoded in memory with the ffmpeg CLI at their own size and turned
# into the tensor exactly as pipeline/vision/preprocess.rs does (bilinear with pixel centres
# aligned, stretched to 416x416, BGR, (x - mean) / std). Nothing is written but the models.
# RetinaFace (the verifier) is deliberately not quantised: a full INT8 build lost faces that the
# float model finds, and even with its first stage kept float one near-threshold face was lost.
# The quantiser is not bit-reproducible across versions: pin the files by blake3 in
# models/manifest.json and check behaviour, not bytes.
#   usage: scripts/quantize-detectors.sh [OUT_DIR]   (needs python3 and ffmpeg; ~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-models}
VENV=${QUANT_VENV:-/tmp/clearframe-quant-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet onnxruntime==1.32.0 onnx==1.23.2 numpy
fi
"$VENV/bin/python" - "$OUT_DIR" <<'PY'
import json, os, subprocess, sys, tempfile
import numpy as np
import onnx
from onnx import helper, numpy_helper
import onnxruntime
onnxruntime.set_default_logger_severity(3)
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantType, QuantFormat, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process

out_dir = sys.argv[1]
SIDE = 416
MEAN, STD = np.array([103.53, 116.28, 123.675], np.float32), np.array([57.375, 57.12, 58.395], np.float32)

def frames(path, every, limit):
    """Native-size RGB frames 0, every, 2*every, ... decoded in memory."""
    s = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                   "stream=width,height", "-of", "json", path], check=True, capture_output=True).stdout)["streams"][0]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-vf", f"select=not(mod(n\\,{every}))", "-vsync", "0",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, s["height"], s["width"], 3)[:limit]

def taps(src, dst):
    # preprocess::taps: OpenCV INTER_LINEAR sampling, pixel centres aligned, edges clamped.
    s = np.maximum((np.arange(dst, dtype=np.float32) + 0.5) * np.float32(src / dst) - 0.5, 0).astype(np.float32)
    i0 = np.minimum(np.floor(s).astype(np.int64), src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, np.where(i1 == i0, 0, s - i0).astype(np.float32)

def tensor(img):
    # preprocess::to_tensor with NanoDet's layout: stretched to 416x416, BGR, (x - mean) * (1 / std).
    h, w, _ = img.shape
    f = img.astype(np.float32)
    x0, x1, wx = taps(w, SIDE); y0, y1, wy = taps(h, SIDE)
    wx, wy = wx[None, :, None], wy[:, None, None]
    top = f[y0][:, x0] * (1 - wx) + f[y0][:, x1] * wx
    bottom = f[y1][:, x0] * (1 - wx) + f[y1][:, x1] * wx
    f = (top * (1 - wy) + bottom * wy)[:, :, ::-1]
    return np.ascontiguousarray(((f - MEAN) * (1 / STD)).transpose(2, 0, 1)[None], dtype=np.float32)

media = "fixtures/media/"
calib = [tensor(f) for p, every, limit in [("carphone_pristine.mp4", 12, 10), ("bikes.mp4", 25, 10),
                                            ("bigbuckbunny.mp4", 26, 5)] for f in frames(media + p, every, limit)]

class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter({"input_1:0": x} for x in calib)
    def get_next(self): return next(self.it, None)

# 1. Fold Pad(constant -inf) -> MaxPool into MaxPool(pads): ONNX MaxPool ignores padded cells,
#    which is what padding with -inf does, so the outputs are the same.
m = onnx.load("models/nanodet_coco.onnx")
g = m.graph
inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
for pad in [n for n in g.node if n.op_type == "Pad"]:
    if len(pad.input) < 3 or pad.input[2] not in inits or not np.isneginf(inits[pad.input[2]]).all():
        continue
    users = [n for n in g.node if pad.output[0] in n.input]
    p = inits[pad.input[1]].astype(int)  # [n0, c0, h0, w0, n1, c1, h1, w1]
    assert len(users) == 1 and users[0].op_type == "MaxPool" and p[0] == p[1] == p[4] == p[5] == 0
    users[0].input[0] = pad.input[0]
    users[0].attribute.append(helper.make_attribute("pads", [int(p[2]), int(p[3]), int(p[6]), int(p[7])]))
    g.node.remove(pad)
used = {i for n in g.node for i in n.input}
for i in [i for i in g.initializer if i.name not in used]:
    g.initializer.remove(i)
onnx.checker.check_model(m)
# 2. Quantise the body; the heads' Split/Reshape/Transpose/Sigmoid stay float.
out = os.path.join(out_dir, "nanodet_int8.onnx")
with tempfile.TemporaryDirectory() as tmp:
    clean = os.path.join(tmp, "nanodet_clean.onnx")
    onnx.save(m, clean)
    pre = os.path.join(tmp, "pre.onnx")
    quant_pre_process(clean, pre, skip_symbolic_shape=True)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["Conv", "LeakyRelu", "Concat", "MaxPool", "Resize", "Add"])
print(out)
PY
