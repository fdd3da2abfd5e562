//! Why a clip is not (wholly) in the output: a stable [`FailureCode`] and a message built from
//! ClearFrame's own checks and ffmpeg's error lines only (never free text from the clip).

use std::fmt;

use crate::media::{MediaError, SourceError};
use crate::records::FailureCode;

/// Why a selected clip is not (wholly) in the dataset: a stable code and a short message built
/// from ClearFrame's own checks and ffmpeg's error lines only.
#[derive(Debug)]
pub(crate) enum ClipError {
    /// Left out on purpose (the indoor policy `exclude`): not a failure.
    Policy(String),
    Failed {
        code: FailureCode,
        reason: String,
    },
}

impl ClipError {
    pub(crate) fn failed(code: FailureCode, reason: impl Into<String>) -> Self {
        ClipError::Failed {
            code,
            reason: reason.into(),
        }
    }
    /// A failure of ClearFrame's own machinery (an output that could not be written, a thread).
    pub(crate) fn internal(e: anyhow::Error) -> Self {
        Self::failed(FailureCode::Internal, crate::storage::error_chain(&e))
    }
    pub(crate) fn model(e: anyhow::Error) -> Self {
        Self::failed(FailureCode::Model, crate::storage::error_chain(&e))
    }
    pub(crate) fn code(&self) -> FailureCode {
        match self {
            ClipError::Policy(_) => FailureCode::IndoorExcluded,
            ClipError::Failed { code, .. } => *code,
        }
    }
    pub(crate) fn reason(&self) -> &str {
        match self {
            ClipError::Policy(r) | ClipError::Failed { reason: r, .. } => r,
        }
    }
}

fn source_code(e: &SourceError) -> FailureCode {
    match e {
        SourceError::NotFound { .. } => FailureCode::SourceMissing,
        SourceError::NotRegular { .. } => FailureCode::SourceNotRegular,
        SourceError::Escapes { .. } => FailureCode::SourceOutsideFolder,
        SourceError::TooLarge { .. } => FailureCode::LimitBytes,
        SourceError::Changed { .. } => FailureCode::SourceChanged,
        SourceError::Io { .. } => FailureCode::SourceUnreadable,
    }
}

impl From<SourceError> for ClipError {
    fn from(e: SourceError) -> Self {
        Self::failed(source_code(&e), e.to_string())
    }
}

impl From<MediaError> for ClipError {
    fn from(e: MediaError) -> Self {
        use crate::media::Limit;
        let code = match &e {
            MediaError::Source(s) => source_code(s),
            MediaError::Decode { .. } => FailureCode::NotAVideo,
            MediaError::Truncated { .. } => FailureCode::Truncated,
            MediaError::Killed { .. } => FailureCode::DecoderKilled,
            MediaError::NoVideo { .. } => FailureCode::NoVideoStream,
            MediaError::NoFrames { .. } => FailureCode::NoFrames,
            MediaError::Stream { .. } => FailureCode::StreamInconsistent,
            MediaError::Unsupported { .. } => FailureCode::Unsupported,
            MediaError::Limit { limit, .. } => match limit {
                Limit::Pixels => FailureCode::LimitPixels,
                Limit::Duration => FailureCode::LimitDuration,
                Limit::Frames => FailureCode::LimitFrames,
                Limit::Bytes => FailureCode::LimitBytes,
            },
            MediaError::Spawn { .. }
            | MediaError::FrameSize { .. }
            | MediaError::Encode { .. }
            | MediaError::Io { .. } => FailureCode::Internal,
        };
        Self::failed(code, e.to_string())
    }
}

impl fmt::Display for ClipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ClipError {}
