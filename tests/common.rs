//! Shared helpers for the integration tests: paths to the real fixtures and the built binary.

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The `clearframe` binary built for this test run.
pub fn clearframe() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("clearframe")
        .expect("the clearframe binary is built with the tests")
}
