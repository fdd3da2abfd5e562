#!/usr/bin/env python3
"""A live Label Studio round trip for a ClearFrame dataset: a real server and a real browser.

Usage: check_labelstudio.py DATASET_DIR OUT_DIR   (run with the python of
       `scripts/setup-consumers.sh labelstudio`: label-studio 1.23.2, websocket-client; Debian's
       chromium on PATH)

1. Starts `label-studio start` on a free loopback port with its data (SQLite, media) in a
   temporary folder, offline (no version check, analytics or Sentry), serving local files:
   LOCAL_FILES_SERVING_ENABLED=true, LOCAL_FILES_DOCUMENT_ROOT=DATASET_DIR. Waits for /health.
2. Logs in as the user the server was started with and makes a personal access token (a JWT
   refresh token, POST /api/token/), exchanged for an access token (POST /api/token/refresh/,
   `Authorization: Bearer`). The legacy user token is left disabled, as Label Studio 1.23 ships.
3. Creates a project with annotations/labelstudio.xml and a Local Files storage on DATASET_DIR/frames
   (Label Studio serves /data/local-files/?d=<path> only under such a storage, and refuses one on
   the document root itself), then imports annotations/labelstudio.json (POST
   /api/projects/<id>/import).
4. Reads every task and prediction back through the API and compares them with the file (the
   number of tasks, each task's data, each prediction's model_version and score, each region's
   id, type, labels, x, y, width, height, score and original size) and with the manifest (the
   boxes in pixels within 0.05 px, the classes, the scores). Fetches one task's data.image through
   the server and compares the bytes with the frame JPEG.
5. Starts headless Debian chromium, drives it over the DevTools protocol (websocket-client): logs
   in through the login form and opens the task with the most predicted boxes in the labelling
   UI. Label Studio pre-fills a draft from the prediction. Once it is drawn, checks from the DOM
   that the image is the frame (natural size, SHA-256 of the bytes behind it), that the regions
   list shows each predicted label and score, and that each rectangle on the canvas (Konva) lies
   where its region is; saves a screenshot as OUT_DIR/labelstudio-task.png.

Prints a JSON summary on stdout; exits 1 naming the first mismatch. The server and the browser are
stopped and the temporary folders removed whatever happens.
"""

import base64
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

import requests
import websocket

USER = "check@clearframe.invalid"
HEALTH_TIMEOUT = 180
UI_TIMEOUT = 90
SCREENSHOT = "labelstudio-task.png"
# How far (percentage points of the image) a drawn rectangle may be from its region: screen
# pixels of a ~800 px wide view are ~0.12 points.
UI_TOLERANCE = 0.2


class CheckError(Exception):
    """A mismatch or a failure of the round trip: the message names what and where."""


def log(msg):
    print(f"check_labelstudio: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version_dir(root):
    with open(os.path.join(root, "dataset.json"), encoding="utf-8") as f:
        version = json.load(f)["version"]
    if len(version) != 16 or any(c not in "0123456789abcdef" for c in version):
        raise CheckError(f"dataset.json names the version {version!r}")
    return os.path.join(root, "versions", version)


def stop(proc, name):
    """Stops a child and its process group: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop on SIGTERM: killing it")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def tail(path, n=40):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# The server


class Server:
    def __init__(self, dataset, tmp):
        self.dataset = dataset
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        self.log_path = os.path.join(tmp, "label-studio.log")
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        env = dict(os.environ)
        env.update(
            {
                "HOME": home,
                "LABEL_STUDIO_BASE_DATA_DIR": os.path.join(tmp, "data"),
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": dataset,
                "SECRET_KEY": secrets.token_urlsafe(32),
                # Offline: no PyPI version check, no analytics, no Sentry (server or browser).
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "DISABLE_SIGNUP_WITHOUT_LINK": "true",
            }
        )
        for key in [k for k in env if k.startswith(("DJANGO_DB", "POSTGRE_", "LABEL_STUDIO_HOST"))]:
            del env[key]
        exe = os.path.join(os.path.dirname(sys.executable), "label-studio")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                exe, "start", "--no-browser",
                # --internal-host is the address it binds; --host the URL it writes into links.
                "--internal-host", "127.0.0.1", "--host", self.base, "--port", str(self.port),
                "--username", USER, "--password", self.password,
            ],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self):
        start = time.monotonic()
        while time.monotonic() - start < HEALTH_TIMEOUT:
            if self.proc.poll() is not None:
                raise CheckError(f"label-studio exited ({self.proc.returncode}):\n{tail(self.log_path)}")
            try:
                r = requests.get(self.base + "/health", timeout=5)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    return time.monotonic() - start
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise CheckError(f"label-studio did not answer /health in {HEALTH_TIMEOUT} s:\n{tail(self.log_path)}")

    def close(self):
        stop(self.proc, "label-studio")
        self.log_file.close()


def login(base, password):
    """A requests session logged in through the login form (Django session cookie)."""
    s = requests.Session()
    r = s.get(base + "/user/login/", timeout=30)
    r.raise_for_status()
    csrf = s.cookies.get("csrftoken")
    r = s.post(
        base + "/user/login/",
        data={"email": USER, "password": password, "csrfmiddlewaretoken": csrf},
        headers={"Referer": base + "/user/login/"},
        timeout=30,
        allow_redirects=False,
    )
    if r.status_code != 302 or "sessionid" not in s.cookies:
        raise CheckError(f"login as {USER} failed: HTTP {r.status_code}")
    return s


def api_session(base, password):
    """A session authenticated by a personal access token (JWT): the token is created with the
    logged-in session, then exchanged for a short-lived access token."""
    web = login(base, password)
    r = web.post(
        base + "/api/token/",
        headers={"X-CSRFToken": web.cookies.get("csrftoken"), "Referer": base + "/"},
        timeout=30,
    )
    if r.status_code != 201:
        raise CheckError(f"POST /api/token/: HTTP {r.status_code} {r.text[:300]}")
    refresh = r.json()["token"]
    r = requests.post(base + "/api/token/refresh/", json={"refresh": refresh}, timeout=30)
    if r.status_code != 200:
        raise CheckError(f"POST /api/token/refresh/: HTTP {r.status_code} {r.text[:300]}")
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + r.json()["access"]
    return api


def call(api, method, url, expect=(200, 201), **kw):
    r = api.request(method, url, timeout=120, **kw)
    if r.status_code not in expect:
        raise CheckError(f"{method} {url}: HTTP {r.status_code} {r.text[:500]}")
    return r


# ---------------------------------------------------------------------------------------------
# The API round trip


def close(a, b):
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=1e-9)


def compare_region(where, want, got):
    for key in ("id", "type", "from_name", "to_name", "original_width", "original_height"):
        if got.get(key) != want[key]:
            raise CheckError(f"{where}: {key} is {got.get(key)!r}, the file has {want[key]!r}")
    if not close(got.get("score"), want["score"]):
        raise CheckError(f"{where}: score is {got.get('score')!r}, the file has {want['score']!r}")
    wv, gv = want["value"], got.get("value", {})
    for key in ("x", "y", "width", "height"):
        if not close(gv.get(key), wv[key]):
            raise CheckError(f"{where}: {key} is {gv.get(key)!r}, the file has {wv[key]!r}")
    if gv.get("rectanglelabels") != wv["rectanglelabels"]:
        raise CheckError(f"{where}: labels are {gv.get('rectanglelabels')!r}, the file has {wv['rectanglelabels']!r}")


def frame_path(url):
    """The dataset-relative frame path of a local-files URL (`/data/local-files/?d=<path>`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path != "/data/local-files/":
        raise CheckError(f"data.image {url!r} is not a Label Studio local-files URL")
    return urllib.parse.parse_qs(parts.query).get("d", [""])[0]


def compare_with_manifest(where, entry, result):
    """The regions Label Studio holds against the manifest's detections (the dataset's record):
    pixel boxes within 0.05 px (the file rounds percentages to 4 decimals), label, score."""
    dets = entry["detections"]
    if len(result) != len(dets):
        raise CheckError(f"{where}: {len(result)} regions, the manifest has {len(dets)} detections")
    w, h = entry["width"], entry["height"]
    for r, d in zip(result, dets):
        v = r["value"]
        px = (v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100, (v["y"] + v["height"]) * h / 100)
        b = d["bbox"]
        x0, y0 = min(max(b["x0"], 0), w), min(max(b["y0"], 0), h)
        want = (x0, y0, min(max(b["x1"], x0), w), min(max(b["y1"], y0), h))
        if not all(math.isclose(p, q, abs_tol=0.05) for p, q in zip(px, want)):
            raise CheckError(f"{where}: region {r['id']} is {[round(p, 2) for p in px]} px, the manifest has {b}")
        if v["rectanglelabels"] != [d["class"]]:
            raise CheckError(f"{where}: region {r['id']} is labelled {v['rectanglelabels']}, the manifest has {d['class']!r}")
        if not math.isclose(r["score"], d["score"], abs_tol=5e-5):
            raise CheckError(f"{where}: region {r['id']} has score {r['score']}, the manifest {d['score']}")


def round_trip(base, api, dataset, vdir):
    with open(os.path.join(vdir, "annotations", "labelstudio.xml"), encoding="utf-8") as f:
        config = f.read()
    with open(os.path.join(vdir, "annotations", "labelstudio.json"), encoding="utf-8") as f:
        tasks = json.load(f)
    if not isinstance(tasks, list) or not tasks:
        raise CheckError("annotations/labelstudio.json holds no tasks")
    with open(os.path.join(vdir, "manifest.jsonl"), encoding="utf-8") as f:
        manifest = {e["path"]: e for e in map(json.loads, filter(str.strip, f))}
    if len(manifest) != len(tasks):
        raise CheckError(f"annotations/labelstudio.json has {len(tasks)} tasks, the manifest {len(manifest)} frames")

    project = call(api, "POST", base + "/api/projects/", json={"title": "ClearFrame check", "label_config": config}).json()
    pid = project["id"]
    storage = call(
        api, "POST", base + "/api/storages/localfiles/",
        json={"project": pid, "title": "ClearFrame frames", "path": os.path.join(dataset, "frames"),
              "use_blob_urls": True},
    ).json()
    imported = call(api, "POST", f"{base}/api/projects/{pid}/import", json=tasks).json()
    if imported.get("task_count") != len(tasks):
        raise CheckError(f"import: {imported.get('task_count')} tasks imported, the file has {len(tasks)}: {imported}")
    want_predictions = sum(1 for t in tasks for _ in t.get("predictions", []))
    if imported.get("prediction_count") != want_predictions:
        raise CheckError(f"import: {imported.get('prediction_count')} predictions, the file has {want_predictions}")

    got = call(api, "GET", f"{base}/api/tasks/", params={"project": pid, "page_size": len(tasks) + 10, "fields": "all"}).json()
    got_tasks = sorted(got["tasks"], key=lambda t: t["id"])
    if len(got_tasks) != len(tasks):
        raise CheckError(f"the server has {len(got_tasks)} tasks, the file {len(tasks)}")
    regions = 0
    for i, (want, task) in enumerate(zip(tasks, got_tasks)):
        where = f"task {i} (server id {task['id']}, {want['data'].get('image')})"
        if task["data"] != want["data"]:
            raise CheckError(f"{where}: data is {task['data']!r}, the file has {want['data']!r}")
        preds = call(api, "GET", f"{base}/api/predictions/", params={"task": task["id"]}).json()
        if isinstance(preds, dict):
            preds = preds.get("results", [])
        if len(preds) != len(want["predictions"]):
            raise CheckError(f"{where}: {len(preds)} predictions, the file has {len(want['predictions'])}")
        for j, (wp, gp) in enumerate(zip(want["predictions"], sorted(preds, key=lambda p: p["id"]))):
            pw = f"{where} prediction {j}"
            if gp.get("model_version") != wp["model_version"]:
                raise CheckError(f"{pw}: model_version is {gp.get('model_version')!r}, the file has {wp['model_version']!r}")
            if not close(gp.get("score"), wp["score"]):
                raise CheckError(f"{pw}: score is {gp.get('score')!r}, the file has {wp['score']!r}")
            if len(gp["result"]) != len(wp["result"]):
                raise CheckError(f"{pw}: {len(gp['result'])} regions, the file has {len(wp['result'])}")
            for k, (wr, gr) in enumerate(zip(wp["result"], gp["result"])):
                compare_region(f"{pw} region {k} ({wr['id']})", wr, gr)
                regions += 1
        entry = manifest.get(frame_path(task["data"].get("image", "")))
        if entry is None or (entry["video_id"], entry["frame"]) != (task["data"].get("video_id"), task["data"].get("frame")):
            raise CheckError(f"{where}: data {task['data']} is no frame of the manifest")
        compare_with_manifest(where, entry, preds[0]["result"] if preds else [])

    # A task with at least one predicted box, the one with the most; its image through the server.
    shown = max(range(len(tasks)), key=lambda i: (len(tasks[i]["predictions"][0]["result"]), -i))
    if not tasks[shown]["predictions"][0]["result"]:
        raise CheckError("no task has a predicted box: nothing to render")
    url = tasks[shown]["data"]["image"]
    frame = os.path.join(dataset, frame_path(url))
    with open(frame, "rb") as f:
        want_bytes = f.read()
    r = call(api, "GET", urllib.parse.urljoin(base + "/", url))
    if r.content != want_bytes:
        raise CheckError(f"GET {url}: {len(r.content)} bytes ({r.headers.get('content-type')}), not the {len(want_bytes)} bytes of {frame}")
    return {
        "project": pid,
        "storage": storage["id"],
        "tasks": len(got_tasks),
        "predictions": want_predictions,
        "regions": regions,
        "image_fetched": {"url": url, "bytes": len(want_bytes)},
        "shown": shown,
        "shown_id": got_tasks[shown]["id"],
        "frame": frame,
    }


# ---------------------------------------------------------------------------------------------
# The browser


class Browser:
    """Headless Debian chromium driven over the DevTools protocol (one page, one websocket)."""

    def __init__(self, tmp):
        exe = shutil.which("chromium")
        if exe is None:
            raise CheckError("chromium is not on PATH (hint: scripts/setup-consumers.sh labelstudio installs it)")
        self.profile = os.path.join(tmp, "chromium")
        self.log_path = os.path.join(tmp, "chromium.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                exe, "--headless=new", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile}", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--window-size=1440,1000", "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ws = None
        self.next_id = 0
        self.events = []

    def connect(self):
        # Chromium writes the port it chose into DevToolsActivePort in its profile.
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not os.path.exists(active) or os.path.getsize(active) == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CheckError(f"chromium did not start its DevTools server:\n{tail(self.log_path)}")
            time.sleep(0.2)
        with open(active, encoding="utf-8") as f:
            port = int(f.readline())
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CheckError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expr):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CheckError(f"in the page: {r['exceptionDetails'].get('exception', {}).get('description', r['exceptionDetails'])}")
        return r["result"].get("value")

    def navigate(self, url):
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href", 60, f"loading {url}")

    def wait_for(self, expr, timeout, what):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expr)
            except CheckError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise CheckError(f"timed out after {timeout} s {what}")

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        if self.ws is not None:
            try:
                self.send("Browser.close")
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.ws.close()
        stop(self.proc, "chromium")
        self.log_file.close()


# What the labelling UI shows, read from its DOM: the image of the main view (Label Studio
# fetches the frame and shows it from a blob: URL) with its natural size and the SHA-256 of the
# bytes behind it, the rows of the regions list (label and score), and the rectangles drawn on
# the Konva stage over the image.
UI_STATE = """(async () => {
  const img = document.querySelector('.lsf-main-view .lsf-image img');
  const rows = [...document.querySelectorAll('.lsf-outliner-item')].map(r => ({
    label: (r.querySelector('.lsf-outliner-item__title') || {}).textContent,
    score: (r.querySelector('.lsf-outliner-item__control_type_score') || {}).textContent,
  }));
  // Each drawn rectangle in percent of the image as displayed (Konva names it after the region id).
  let rects = null;
  if (img && window.Konva && window.Konva.stages) {
    const shown = img.getBoundingClientRect();
    rects = window.Konva.stages.flatMap(s => {
      const c = s.container().getBoundingClientRect();
      return s.find('Rect').filter(r => r.isVisible() && r.width() > 0).map(r => {
        const b = r.getClientRect({skipStroke: true, skipShadow: true});
        return {
          name: r.name(),
          x: (c.left + b.x - shown.left) / shown.width * 100,
          y: (c.top + b.y - shown.top) / shown.height * 100,
          width: b.width / shown.width * 100,
          height: b.height / shown.height * 100,
        };
      });
    });
  }
  let sha256 = null;
  if (img && img.complete && img.naturalWidth > 0) {
    const bytes = await (await fetch(img.src)).arrayBuffer();
    sha256 = [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))]
      .map(b => b.toString(16).padStart(2, '0')).join('');
  }
  return {
    image: img ? {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, sha256} : null,
    regions: rows,
    rects,
  };
})()"""


def check_ui(browser, base, password, rt, task, out_dir):
    """Logs in through the form, opens the task in the labelling UI, checks what it rendered and
    saves a screenshot."""
    browser.connect()
    browser.navigate(base + "/user/login/")
    browser.eval(
        "(() => { const f = document.querySelector('form');"
        f" f.querySelector('input[name=email]').value = {json.dumps(USER)};"
        f" f.querySelector('input[name=password]').value = {json.dumps(password)};"
        " f.submit(); return true; })()"
    )
    browser.wait_for(
        "document.readyState === 'complete' && !location.pathname.startsWith('/user/login') && location.href",
        60, "logging in through the login form",
    )
    url = f"{base}/projects/{rt['project']}/data?task={rt['shown_id']}"
    browser.navigate(url)

    with open(rt["frame"], "rb") as f:
        frame_sha = hashlib.sha256(f.read()).hexdigest()
    width, height = jpeg_size(rt["frame"])
    result = task["predictions"][0]["result"]
    want_rows = sorted((r["value"]["rectanglelabels"][0], f"{r['score']:.2f}") for r in result)

    state = None
    deadline = time.monotonic() + UI_TIMEOUT
    while time.monotonic() < deadline:
        try:
            state = browser.eval(UI_STATE)
        except CheckError:
            state = None
        if (state and state["image"] and state["image"]["sha256"] and len(state["regions"]) >= len(result)
                and state["rects"] is not None and len(state["rects"]) >= len(result)):
            break
        time.sleep(1)
    else:
        browser.screenshot(os.path.join(out_dir, SCREENSHOT))
        raise CheckError(f"the labelling UI at {url} did not show the image and {len(result)} regions in "
                         f"{UI_TIMEOUT} s (screenshot in {out_dir}): {json.dumps(state)}")
    time.sleep(1)  # let the canvas paint the regions before the screenshot
    browser.screenshot(os.path.join(out_dir, SCREENSHOT))

    image = state["image"]
    if (image["width"], image["height"]) != (width, height):
        raise CheckError(f"the UI's image is {image['width']}x{image['height']}, the frame {width}x{height}")
    if image["sha256"] != frame_sha:
        raise CheckError(f"the UI's image is not the bytes of {rt['frame']}")
    got_rows = sorted((r["label"], r["score"]) for r in state["regions"])
    if got_rows != want_rows:
        raise CheckError(f"the UI's regions list shows {got_rows}, the prediction has {want_rows}")
    if len(state["rects"]) != len(result):
        raise CheckError(f"the UI's canvas has {len(state['rects'])} rectangles, the prediction {len(result)} boxes")
    for r in result:
        drawn = [d for d in state["rects"] if d["name"].split("#")[0] == r["id"]]
        if len(drawn) != 1:
            raise CheckError(f"the UI's canvas has {len(drawn)} rectangles for region {r['id']}: {state['rects']}")
        for key in ("x", "y", "width", "height"):
            if abs(drawn[0][key] - r["value"][key]) > UI_TOLERANCE:
                raise CheckError(f"the UI draws region {r['id']} with {key} {drawn[0][key]:.4f} %, "
                                 f"the prediction has {r['value'][key]} %")
    return {
        "url": url,
        "task_index": rt["shown"],
        "image": [width, height],
        "regions": len(got_rows),
        "canvas_rects": len(state["rects"]),
        "screenshot": SCREENSHOT,
    }


def jpeg_size(path):
    """Width and height from a JPEG's SOF marker."""
    with open(path, "rb") as f:
        data = f.read()
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise CheckError(f"{path}: not a JPEG marker at {i}")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    raise CheckError(f"{path}: no JPEG frame header")


def on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main():
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGINT already raises KeyboardInterrupt
        signal.signal(sig, on_sigterm)
    if len(sys.argv) != 3:
        sys.exit("usage: check_labelstudio.py DATASET_DIR OUT_DIR")
    dataset = os.path.realpath(sys.argv[1])
    out_dir = os.path.realpath(sys.argv[2])
    os.makedirs(out_dir, exist_ok=True)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="clearframe-labelstudio-")
    server = browser = None
    try:
        vdir = version_dir(dataset)
        server = Server(dataset, tmp)
        browser = Browser(tmp)  # starts while the server does
        health = server.wait_healthy()
        log(f"label-studio {server.base} answered /health after {health:.0f} s")
        api = api_session(server.base, server.password)
        rt = round_trip(server.base, api, dataset, vdir)
        log(f"imported and read back {rt['tasks']} tasks, {rt['regions']} predicted boxes")
        with open(os.path.join(vdir, "annotations", "labelstudio.json"), encoding="utf-8") as f:
            task = json.load(f)[rt["shown"]]
        ui = check_ui(browser, server.base, server.password, rt, task, out_dir)
        log(f"the labelling UI showed task {rt['shown_id']} with {ui['regions']} regions")
        summary = {
            "labelstudio": "ok",
            "server_ready_s": round(health, 1),
            "auth": "personal access token (JWT)",
            "tasks": rt["tasks"],
            "predictions": rt["predictions"],
            "regions": rt["regions"],
            "image_fetched": rt["image_fetched"],
            "ui": ui,
            "seconds": round(time.monotonic() - started, 1),
        }
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        what = str(e) if isinstance(e, CheckError) else f"unexpected {type(e).__name__}: {e}"
        print(f"labelstudio: FAILED: {what}", file=sys.stderr)
        if not isinstance(e, CheckError):
            import traceback

            traceback.print_exc()
        if server is not None:
            print(f"--- label-studio log (last lines):\n{tail(server.log_path, 10)}", file=sys.stderr)
        return 1
    finally:
        if browser is not None:
            browser.close()
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
