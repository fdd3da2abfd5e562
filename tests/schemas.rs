//! The committed JSON Schemas match the Rust types, and the fixtures and outputs validate.

use crate::common::{fixture, root};

#[test]
fn committed_schemas_are_fresh() {
    let dir = root().join("schemas");
    let mut stale = Vec::new();
    for (stem, schema) in clearframe::schema::all() {
        let path = dir.join(format!("{stem}.schema.json"));
        let want = clearframe::schema::render(&schema);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            if std::env::var_os("CLEARFRAME_UPDATE_SCHEMAS").is_some() {
                std::fs::write(&path, want).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas (run `cargo run -- schema --write schemas`): {stale:?}"
    );
}

pub fn validator(stem: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schemas").join(format!("{stem}.schema.json")))
        .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

pub fn assert_lines_valid(stem: &str, path: &std::path::Path) {
    let v = validator(stem);
    for (i, line) in std::fs::read_to_string(path).unwrap().lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{}:{}: {errors:?}",
            path.display(),
            i + 1
        );
    }
}

#[test]
fn fixtures_validate_against_their_schemas() {
    assert_lines_valid("catalog-clip", &fixture("demo-catalog.jsonl"));
    assert_lines_valid("ledger-event", &fixture("demo-ledger.jsonl"));
}

#[test]
fn schemas_reject_what_the_parser_rejects() {
    let clip = validator("catalog-clip");
    let bad: serde_json::Value = serde_json::json!({"video_id": "bad id", "uri": "a.mp4", "owner_id": "a", "device_id": "d", "placement": "outdoor", "captured_at": "2026-01-01T00:00:00Z"});
    assert!(!clip.is_valid(&bad));
    let ev = validator("ledger-event");
    let no_doc = serde_json::json!({"event_id": "e", "type": "consent.granted", "owner_id": "a", "at": "2026-01-01T00:00:00Z", "scope": [], "devices": []});
    assert!(!ev.is_valid(&no_doc));
}

#[test]
fn select_outputs_validate() {
    let out = tempfile::tempdir().unwrap();
    clearframe::select::run_select(
        &fixture("demo-catalog.jsonl"),
        &fixture("demo-ledger.jsonl"),
        "2026-11-01T00:00:00Z".parse().unwrap(),
        out.path(),
        0,
    )
    .unwrap();
    assert_lines_valid("selection-line", &out.path().join("selection.jsonl"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("select.json")).unwrap()).unwrap();
    assert!(validator("select-record").is_valid(&record));
}

#[test]
fn the_module_graph_has_no_cycle() {
    // Lower layers never import higher ones (lib.rs `# Layout`).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("scripts/module-graph.py"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cycles (pairs in a strongly connected component): none"),
        "{text}"
    );
}
