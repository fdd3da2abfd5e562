//! A live Label Studio round trip: a real `clearframe run` on the street clip of the fixtures
//! (frames with detections), then `scripts/check_labelstudio.py` starts a real Label Studio
//! server (SQLite, loopback, no network), creates a project with the dataset's labelling config,
//! imports its tasks and predictions through the HTTP API, reads them back and compares them with
//! the file, fetches a frame through the server's local-files URL, and opens a task with
//! predictions in the labelling UI in headless Debian `chromium` (DevTools protocol), checking the
//! image and the regions it rendered and saving a screenshot.
//!
//! The screenshot is kept in `target/test-output/labelstudio/` for looking at by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{clearframe, fixture, root, version_file};
use crate::emit::venv_python;

const AS_OF: &str = "2026-11-01T00:00:00Z";

/// Where the test leaves its screenshot: `target/test-output/labelstudio/`.
fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`, wherever the target folder is.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("test-output/labelstudio")
}

/// A dataset of the street clip (`v-street-bikes`: cyclists, cars) at one frame a second, made by
/// a real `clearframe run` with the demo's ledger. The catalog holds only that clip, next to a
/// copy of it (catalog URIs are relative to the catalog's folder).
fn street_dataset(tmp: &Path) -> PathBuf {
    let input = tmp.join("input");
    std::fs::create_dir_all(input.join("media")).unwrap();
    std::fs::copy(fixture("media/bikes.mp4"), input.join("media/bikes.mp4")).unwrap();
    let line = std::fs::read_to_string(fixture("demo-catalog.jsonl"))
        .unwrap()
        .lines()
        .find(|l| l.contains("\"v-street-bikes\""))
        .expect("the demo catalog has v-street-bikes")
        .to_owned();
    std::fs::write(input.join("catalog.jsonl"), line + "\n").unwrap();
    let dataset = tmp.join("dataset");
    clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "1", "--out"])
        .arg(&dataset)
        .arg("--catalog")
        .arg(input.join("catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .assert()
        .success();
    dataset
}

#[test]
fn labelstudio_server_imports_the_tasks_and_renders_a_prediction() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = street_dataset(tmp.path());
    let tasks: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(version_file(&dataset, "annotations/labelstudio.json")).unwrap(),
    )
    .unwrap();
    let regions = |t: &serde_json::Value| t["predictions"][0]["result"].as_array().unwrap().len();
    assert!(
        tasks.iter().any(|t| regions(t) > 0),
        "the street clip gave no detections: nothing to render"
    );

    let out = output_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let python = venv_python("CLEARFRAME_LABELSTUDIO_PYTHON", "labelstudio-venv");
    assert!(
        python.exists(),
        "{} is missing\nhint: run scripts/setup-consumers.sh labelstudio (it installs label-studio, \
         websocket-client and Debian's chromium)",
        python.display()
    );
    let run = Command::new(&python)
        .arg(root().join("scripts/check_labelstudio.py"))
        .arg(&dataset)
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        run.status.success(),
        "check_labelstudio.py failed:\n{stdout}{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON summary:\n{stdout}{stderr}")),
    )
    .unwrap();
    let predicted: usize = tasks.iter().map(regions).sum();
    assert_eq!(summary["tasks"], tasks.len(), "{summary}");
    assert_eq!(summary["regions"], predicted, "{summary}");
    let shown = usize::try_from(summary["ui"]["task_index"].as_u64().unwrap()).unwrap();
    assert!(regions(&tasks[shown]) > 0, "{summary}");
    assert_eq!(
        summary["ui"]["regions"],
        regions(&tasks[shown]),
        "{summary}"
    );

    // The screenshot is a real PNG of the labelling page: a browser-sized image, not blank.
    let png = out.join(summary["ui"]["screenshot"].as_str().unwrap());
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{} is only {} bytes",
        png.display(),
        bytes.len()
    );
    let shot = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert!(
        shot.width() >= 800 && shot.height() >= 600,
        "{:?}",
        shot.dimensions()
    );
    let colours: std::collections::BTreeSet<[u8; 3]> = shot
        .pixels()
        .step_by(31)
        .map(|p| [p[0] & 0xF0, p[1] & 0xF0, p[2] & 0xF0])
        .collect();
    assert!(
        colours.len() > 100,
        "only {} colours: the labelling page looks blank",
        colours.len()
    );
}
