//! JSON Schemas of the record types, generated from the Rust types. `schemas/` holds the
//! committed copies; a test fails when they are stale (regenerate with
//! `clearframe schema --write schemas`).

#![allow(clippy::print_stdout, reason = "a command: its summary goes to stdout")]

use std::path::Path;
use std::process::ExitCode;

use schemars::{JsonSchema, Schema, schema_for};

use crate::records;

/// Every record type that has a schema: `(file stem, generator)`.
pub fn all() -> Vec<(&'static str, Schema)> {
    fn s<T: JsonSchema>() -> Schema {
        schema_for!(T)
    }
    vec![
        ("catalog-clip", s::<records::CatalogClip>()),
        ("ledger-event", s::<records::LedgerEvent>()),
        ("selection-line", s::<records::SelectionLine>()),
        ("select-record", s::<records::SelectRecord>()),
        ("manifest-entry", s::<crate::emit::ManifestEntry>()),
        ("dataset", s::<crate::emit::DatasetRecord>()),
        ("removed-clip", s::<crate::emit::RemovedClip>()),
        ("changes", s::<crate::emit::ChangesRecord>()),
        ("audit-record", s::<crate::audit::AuditRecord>()),
        ("redaction-report", s::<crate::redact::RedactionReport>()),
        ("run-config", s::<crate::config::Config>()),
        ("redact-record", s::<crate::stages::RedactStageRecord>()),
        ("clip-redaction", s::<crate::stages::ClipRedactionRecord>()),
        ("detect-record", s::<crate::stages::DetectStageRecord>()),
        (
            "clip-detections",
            s::<crate::stages::ClipDetectionsRecord>(),
        ),
    ]
}

/// A schema as committed: pretty JSON with a trailing newline.
pub fn render(schema: &Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas serialize");
    s.push('\n');
    s
}

/// Runs `clearframe schema`.
pub fn run_cli(name: Option<&str>, write: Option<&Path>) -> anyhow::Result<ExitCode> {
    let schemas = all();
    if let Some(dir) = write {
        std::fs::create_dir_all(dir)?;
        for (stem, schema) in &schemas {
            std::fs::write(dir.join(format!("{stem}.schema.json")), render(schema))?;
        }
        println!("wrote {} schemas to {}", schemas.len(), dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    match name {
        None => {
            for (stem, _) in &schemas {
                println!("{stem}");
            }
        }
        Some(n) => {
            let (_, schema) = schemas.iter().find(|(stem, _)| *stem == n).ok_or_else(|| {
                anyhow::anyhow!("no record named {n:?}; `clearframe schema` lists them")
            })?;
            print!("{}", render(schema));
        }
    }
    Ok(ExitCode::SUCCESS)
}
