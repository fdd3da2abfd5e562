//! The storage arguments every command takes (`--s3-endpoint`, `--sse`, `--require-sse`,
//! `--s3-timeout`).

use super::*;

/// Storage flags for any command that reads or writes a store; flatten it into a command's
/// arguments with `#[command(flatten)]` and turn it into [`S3Options`] with
/// [`StoreArgs::to_options`]. Credentials and region come from the standard AWS chain
/// (environment, profile, web identity, container and instance metadata).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreArgs {
    /// S3-compatible endpoint (e.g. http://127.0.0.1:9000); uses path-style addressing.
    #[arg(long = "s3-endpoint", env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Server-side encryption for every object written to S3.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub sse: Option<SseArg>,
    /// KMS key id or ARN for `--sse aws:kms` (default: the account's aws/s3 key).
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Refuse to write to S3 unless the server confirms the server-side encryption asked for with
    /// `--sse` (checked with a probe object before anything is deleted or replaced).
    #[arg(long, requires = "sse")]
    pub require_sse: bool,
    /// Seconds one S3 request attempt (and each wait for the next chunk of a download) may take
    /// before it is retried; a request gives up after its attempts, naming the object.
    #[arg(
        long = "s3-timeout",
        env = "CLEARFRAME_S3_TIMEOUT",
        value_name = "SECONDS",
        value_parser = parse_timeout
    )]
    pub s3_timeout: Option<std::time::Duration>,
}

fn parse_timeout(s: &str) -> std::result::Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{s:?}: the timeout must be > 0 and at most 86400 seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The `--sse` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseArg {
    /// SSE-S3: keys managed by S3 (`AES256`).
    #[value(name = "aes256", alias = "AES256")]
    Aes256,
    /// SSE-KMS: keys in AWS KMS (`aws:kms`).
    #[value(name = "aws:kms", alias = "kms")]
    Kms,
}

impl StoreArgs {
    /// Checks the flags and builds the options (defaults for everything else).
    pub fn to_options(&self) -> Result<S3Options> {
        let sse = match (self.sse, &self.sse_kms_key_id) {
            (None, None) => None,
            (Some(SseArg::Aes256), None) => Some(Sse::Aes256),
            (Some(SseArg::Kms), key_id) => Some(Sse::Kms {
                key_id: key_id.clone(),
            }),
            (_, Some(_)) => {
                return Err(StorageError::InvalidOption(
                    "--sse-kms-key-id needs --sse aws:kms".to_owned(),
                ));
            }
        };
        let endpoint = self.s3_endpoint.clone().filter(|e| !e.trim().is_empty());
        let defaults = S3Options::default();
        Ok(S3Options {
            endpoint,
            sse,
            require_sse: self.require_sse,
            attempt_timeout: self.s3_timeout.unwrap_or(defaults.attempt_timeout),
            ..defaults
        })
    }
}
