//! JSON Schemas of the record types (placeholder).
/// Runs `clearframe schema`.
pub fn run_cli(_name: Option<&str>, _write: Option<&std::path::Path>) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
