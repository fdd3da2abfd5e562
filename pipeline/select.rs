//! Stage 1: select (placeholder).
/// Arguments of `clearframe select`.
#[derive(clap::Args, Debug)]
pub struct SelectArgs {}
/// Runs `clearframe select`.
pub fn run_cli(_args: &SelectArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
