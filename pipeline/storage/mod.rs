//! The object store behind every stage: local folders (the embedded default) and S3 (production),
//! behind one small synchronous [`Store`] trait so the thread-based pipeline runs unchanged on
//! either. Store locations are URLs ([`Location`]): a path or `file://…` is a local folder,
//! `s3://bucket/prefix` is an S3 prefix. Keys are `/`-separated and relative to the store; they
//! never escape it (no `..`, no leading `/`).
//!
//! Guarantees, the same on both backends and checked by one shared test suite
//! (`tests/storage/`): readers never see a half-written object ([`Store::put`]), records replace
//! atomically and durably ([`Store::put_record`]), a missing key is [`StorageError::NotFound`],
//! listing returns every key under a prefix in key order however many there are, and delete is
//! idempotent. S3 adds server-side encryption on every write, with [`S3Options::require_sse`]
//! refusing to write without it; see [`s3`].
//!
//! Everything ClearFrame creates on a local disk gets one explicit mode, whatever the umask:
//! files [`FILE_MODE`] (`0640`), folders [`DIR_MODE`] (`0750`); private staging folders are
//! `0700` ([`crate::staging`]).

mod args;
pub(crate) mod beneath;
mod local;
mod location;
mod object;
pub mod s3;
mod upload;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

pub use args::*;
pub use local::LocalStore;
pub(crate) use local::TEMP_PREFIX;
pub use location::*;
pub use object::ObjectRef;
pub use s3::{S3Credentials, S3Options, S3Store, Sse};
pub use upload::*;

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage layer. Each message names the object (a path or an
/// `s3://bucket/key` URL) and the cause; variants that the user can fix carry a `hint:` line.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    // --- The caller's input ---
    /// The store URL could not be parsed or names an unsupported scheme.
    #[error("invalid store location `{url}`: {reason}")]
    InvalidLocation {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A key or prefix is empty, absolute, or would escape the store.
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A storage option is inconsistent (for example a KMS key id without `--sse aws:kms`).
    #[error("invalid storage option: {0}")]
    InvalidOption(String),
    /// A clip lies outside every allowed source location ([`Sources`]).
    #[error(
        "{url} is outside the allowed sources ({allowed})\nhint: pass --sources {url} (or a prefix of it) if clips may be read from there"
    )]
    SourceNotAllowed {
        /// Where the clip would have been read from.
        url: String,
        /// The allowed locations, comma-separated.
        allowed: String,
    },

    // --- The data ---
    /// The object does not exist.
    #[error("{url}: no such object")]
    NotFound {
        /// The object's full URL.
        url: String,
    },
    /// A local file changed while it was read (its size or modification time moved, or it gave
    /// other than its size in bytes): written in place by another process, or not a plain file
    /// on disk. Nothing read from it is used.
    #[error(
        "{url} changed while it was read ({detail}); nothing read from it was used\nhint: have its writer replace it whole (write a temporary file, then rename it over), and run again"
    )]
    ChangedWhileRead {
        /// The object's full URL.
        url: String,
        /// What moved.
        detail: String,
    },
    /// The S3 bucket does not exist.
    #[error("s3://{bucket}: no such bucket\nhint: create the bucket or check the store URL")]
    NoSuchBucket {
        /// The bucket name.
        bucket: String,
    },

    // --- Policy ---
    /// `require_sse` is set and no server-side encryption is configured: nothing was sent.
    #[error(
        "refusing to write {url}: server-side encryption is required but none is configured\nhint: pass --sse aes256 or --sse aws:kms [--sse-kms-key-id ID]"
    )]
    SseRequired {
        /// The object that was not written.
        url: String,
    },
    /// `require_sse` is set and the server did not confirm that it encrypted the object. The
    /// object was deleted again (best effort) so no unencrypted copy is left behind.
    #[error(
        "refusing {url}: server-side encryption {requested} was requested but the server did not confirm it (it answered {answered}); the object was removed\nhint: the endpoint may not support SSE; drop --require-sse only if the store is encrypted by other means"
    )]
    SseNotConfirmed {
        /// The object that was refused.
        url: String,
        /// The algorithm asked for.
        requested: String,
        /// What the server reported, or `nothing`.
        answered: String,
    },

    // --- The environment: credentials, permissions, network, disks ---
    /// S3 rejected the credentials (unknown access key, bad signature, expired token).
    #[error(
        "{operation} {url}: the S3 credentials were rejected ({code}: {message})\nhint: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE (and the endpoint, if one is set)"
    )]
    Credentials {
        /// The S3 operation (`PutObject`, …).
        operation: &'static str,
        /// The object or prefix URL.
        url: String,
        /// The S3 error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The credentials are valid but not allowed to do this.
    #[error(
        "{operation} {url}: access denied ({message})\nhint: check the IAM policy (and the KMS key policy when using aws:kms)"
    )]
    AccessDenied {
        /// The S3 operation.
        operation: &'static str,
        /// The object or prefix URL.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The S3 endpoint could not be reached, did not answer in time, or no credentials could be
    /// loaded, after retries.
    #[error(
        "{operation} {url}: could not complete the request: {message}\nhint: check the endpoint and the network; --s3-timeout sets how long one attempt may take"
    )]
    Dispatch {
        /// The S3 operation.
        operation: &'static str,
        /// The object or prefix URL.
        url: String,
        /// A short, stable cause (`timed out`, `connection refused`, …). The SDK's whole error
        /// chain, which can hold raw HTTP responses, goes to the debug log only.
        message: String,
    },
    /// Any other S3 error (after the SDK's retries on throttling and 5xx).
    #[error("{operation} {url}: {message}")]
    S3 {
        /// The S3 operation.
        operation: &'static str,
        /// The object or prefix URL.
        url: String,
        /// The S3 error code, when the server sent one.
        code: Option<String>,
        /// A short, stable description: the S3 error code, the HTTP status and the server's
        /// message. Never a raw response (the debug log has the whole chain).
        message: String,
    },
    /// A local filesystem error (or an error from a reader given to [`Store::put_reader`]).
    #[error("{operation} {}", path_and_cause(path, source))]
    Io {
        /// What was being done (`write`, `rename`, …).
        operation: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the data to upload failed (the reader given to [`Store::put_reader`]).
    #[error("reading the data for {url}: {source}")]
    Source {
        /// The object being written.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some uploads of a batch ([`Uploader`], [`put_many`]) failed; the first failure is kept.
    #[error("{failed} of {total} uploads failed; first: {first}")]
    Batch {
        /// How many failed.
        failed: usize,
        /// How many were submitted.
        total: usize,
        /// The first failure.
        first: Box<StorageError>,
    },
}

impl StorageError {
    /// True when the same failure would recur for every other object of a batch (policy,
    /// credentials, the endpoint, the disk), so an [`Uploader`] stops at it; false for a failure
    /// of one object (its key, its data, a missing object).
    pub fn stops_batch(&self) -> bool {
        !matches!(
            self,
            StorageError::InvalidKey { .. }
                | StorageError::NotFound { .. }
                | StorageError::Source { .. }
        )
    }

    /// True for [`StorageError::NotFound`] (also inside a [`StorageError::Batch`]).
    pub fn is_not_found(&self) -> bool {
        match self {
            StorageError::NotFound { .. } => true,
            StorageError::Batch { first, .. } => first.is_not_found(),
            _ => false,
        }
    }
}

/// Mode of every file ClearFrame creates on a local disk (owner read/write, group read).
pub const FILE_MODE: u32 = 0o640;
/// Mode of every folder ClearFrame creates on a local disk (owner all, group read/list).
pub const DIR_MODE: u32 = 0o750;

/// Creates `path` and its missing parents with [`DIR_MODE`] (set explicitly, whatever the umask);
/// folders that already exist are left as they are.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match std::fs::symlink_metadata(at) {
            Ok(m) if m.is_dir() || std::fs::metadata(at).is_ok_and(|m| m.is_dir()) => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a folder", at.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at);
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Checks a local output file before anything is computed for it: it may be new or a plain file
/// (to be replaced), never a link (writing through it would overwrite whatever it points to), a
/// folder, a FIFO or a device.
pub fn check_output_file(dest: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => anyhow::bail!(
            "{} is a symbolic link: not written through (remove it, or choose another output)",
            dest.display()
        ),
        Ok(m) if !m.is_file() => anyhow::bail!(
            "{} exists and is not a plain file: not overwritten",
            dest.display()
        ),
        _ => Ok(()),
    }
}

/// Sets [`FILE_MODE`] on a file ClearFrame created (before it is renamed into place).
pub fn set_file_mode(file: &std::fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
}

/// Keys starting with this are ClearFrame's write probes ([`Store::probe_write`]): short-lived,
/// and never taken for someone else's data.
pub const PROBE_PREFIX: &str = ".clearframe-probe.";

/// What [`Store::head`] and [`Store::list`] know about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the store.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// An opaque version tag that changes when the object is rewritten: the S3 ETag (without
    /// quotes), or `mtime-size` in hex for local files.
    pub etag: Option<String>,
    /// The server-side encryption the server reports (`AES256`, `aws:kms`); filled by
    /// [`Store::head`] on S3 only, `None` from [`Store::list`] and for local files.
    pub encryption: Option<String>,
}

/// A blocking object store. Implementations are cheap to share (`Arc<dyn Store>`) across the
/// pipeline's threads. S3 calls block the calling thread on an internal tokio runtime, so these
/// methods must not be called from inside an async task (they are safe from any plain thread).
pub trait Store: Send + Sync + fmt::Debug {
    /// Where this store is.
    fn location(&self) -> &Location;

    /// The full URL of `key` in this store (a path for local stores), for messages and records.
    fn url(&self, key: &str) -> String {
        self.location().join_display(key)
    }

    /// Reads a whole object into memory.
    fn get(&self, key: &str) -> Result<Bytes>;

    /// Reads a whole object that another process may be writing (a catalog, a consent ledger)
    /// as one state of it. An S3 GET is one version already. A local file is read twice, a
    /// moment apart, each read checked against the file's size and times, and given when the
    /// two agree, or when the second only adds whole lines to the first (an append-only
    /// writer); else it tries again (a few times; then [`StorageError::ChangedWhileRead`]). A
    /// file rewritten in place that pauses mid-write cannot be told from a finished one by any
    /// reader: such files must be replaced whole (rename) instead.
    fn get_settled(&self, key: &str) -> Result<Bytes> {
        self.get(key)
    }

    /// Opens an object for streaming: S3 bodies arrive through a bounded channel as they are
    /// received, never buffered whole and never written to local disk.
    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>>;

    /// Writes an object. Readers see the old object or the new one, never a partial write (local:
    /// temp file + rename; S3: a single PUT, or a multipart upload above the threshold).
    fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// Writes an object from a reader without holding it all in memory (S3: multipart once the
    /// data passes the threshold). Returns the number of bytes written. Same atomicity as
    /// [`Store::put`].
    fn put_reader(&self, key: &str, reader: &mut dyn Read) -> Result<u64>;

    /// Writes a record (manifest, selection, run record) atomically and durably: local stores
    /// fsync the temp file and the folder around the rename; S3 PUTs are atomic and durable.
    fn put_record(&self, key: &str, data: Bytes) -> Result<()>;

    /// Writes a record like [`Store::put_record`], but only if no object `key` exists: `false`
    /// when one does (nothing written). Two writers racing for one key cannot both succeed
    /// (local: a no-replace rename; S3: `If-None-Match: *`).
    fn put_new(&self, key: &str, data: Bytes) -> Result<bool>;

    /// Size and version tag of an object.
    fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Every object whose key starts with `prefix` (a plain string prefix, as in S3: `a/b`
    /// matches `a/b/c` and `a/bc`), sorted by key. Pages through S3 listings of any size.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object. Deleting a missing object succeeds (as on S3).
    fn delete(&self, key: &str) -> Result<()>;

    /// Checks, before anything is deleted or replaced, that writes here will be accepted: S3
    /// writes a small probe object ([`PROBE_PREFIX`]), checks the server confirms the required
    /// encryption, and deletes it again. Local folders need no probe; there it removes the
    /// temporary files that a ClearFrame process killed mid-write left (S3 puts leave none).
    fn probe_write(&self) -> Result<()> {
        Ok(())
    }
}

/// `path: cause`, or the cause alone when it starts with the path already ([`beneath`]'s errors
/// name their path), so that a message names a path once.
pub(crate) fn path_and_cause(path: &std::path::Path, cause: &std::io::Error) -> String {
    let (path, cause) = (path.display().to_string(), cause.to_string());
    if cause.starts_with(&path) {
        cause
    } else {
        format!("{path}: {cause}")
    }
}

/// An error's message, then each of its causes that the text before does not already say (an
/// error whose message quotes its source would otherwise say it twice).
pub fn error_parts(err: &anyhow::Error) -> Vec<String> {
    let mut parts = vec![err.to_string()];
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !parts.iter().any(|p| p.contains(&cause)) {
            parts.push(cause);
        }
    }
    parts
}

/// [`error_parts`] on one line.
pub fn error_chain(err: &anyhow::Error) -> String {
    error_parts(err).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("s3://my-bucket").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("s3://my-bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("file:///data/x").unwrap(),
            Location::Local("/data/x".into())
        );
        assert_eq!(
            Location::parse("file://localhost/data").unwrap(),
            Location::Local("/data".into())
        );
        assert_eq!(
            Location::parse("out/dir").unwrap(),
            Location::Local("out/dir".into())
        );
        assert_eq!(
            Location::parse("s3://b-1/p").unwrap().to_string(),
            "s3://b-1/p"
        );
        for bad in [
            "",
            "s3://",
            "s3://AB",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "gs://b/k",
            "file://host/x",
            "http://x/y",
        ] {
            assert!(
                matches!(
                    Location::parse(bad),
                    Err(StorageError::InvalidLocation { .. })
                ),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn keys_cannot_escape() {
        for good in ["a", "a/b.json", "frames/0001.jpg", "x..y"] {
            check_key(good).unwrap();
        }
        for bad in [
            "", "/a", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\nb",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} should be refused");
        }
        check_prefix("").unwrap();
        check_prefix("frames/").unwrap();
        check_prefix("frames/clip_").unwrap();
        assert!(check_prefix("../").is_err());
        assert!(check_prefix("/").is_err());
    }

    #[test]
    fn relative_keys_and_splits() {
        let base = Location::parse("s3://bkt/data").unwrap();
        assert_eq!(
            base.relative_key(&Location::parse("s3://bkt/data/c/1.mp4").unwrap())
                .as_deref(),
            Some("c/1.mp4")
        );
        assert_eq!(
            base.relative_key(&Location::parse("s3://bkt/database/1.mp4").unwrap()),
            None
        );
        assert_eq!(
            base.relative_key(&Location::parse("s3://other/data/1.mp4").unwrap()),
            None
        );
        let local = Location::Local("/srv/clips".into());
        assert_eq!(
            local
                .relative_key(&Location::Local("/srv/clips/a/b.mp4".into()))
                .as_deref(),
            Some("a/b.mp4")
        );
        assert_eq!(
            local.relative_key(&Location::Local("/srv/other.mp4".into())),
            None
        );
        let (store, key) = Location::parse("s3://bkt/x/y.mp4")
            .unwrap()
            .split_object()
            .unwrap();
        assert_eq!(
            (store.to_string(), key.as_str()),
            ("s3://bkt".to_owned(), "x/y.mp4")
        );
        let (store, key) = Location::Local("/srv/y.mp4".into()).split_object().unwrap();
        assert_eq!(
            (store, key.as_str()),
            (Location::Local("/srv".into()), "y.mp4")
        );
        assert_eq!(base.join("k/1").to_string(), "s3://bkt/data/k/1");
    }

    #[test]
    fn resolves_relative_and_absolute_uris() {
        let dir = tempfile::tempdir().unwrap();
        let base = open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let (store, key) = resolve(&base, "clips/a.mp4", &S3Options::default()).unwrap();
        assert!(Arc::ptr_eq(&store, &base));
        assert_eq!(key, "clips/a.mp4");
        let inside = dir.path().join("clips/b.mp4");
        let (store, key) = resolve(&base, inside.to_str().unwrap(), &S3Options::default()).unwrap();
        assert!(Arc::ptr_eq(&store, &base));
        assert_eq!(key, "clips/b.mp4");
        let (store, key) = resolve(&base, "/elsewhere/c.mp4", &S3Options::default()).unwrap();
        assert_eq!(store.location(), &Location::Local("/elsewhere".into()));
        assert_eq!(key, "c.mp4");
        assert!(resolve(&base, "../escape.mp4", &S3Options::default()).is_err());
    }

    /// Regression (trust boundaries, item 7): a catalog could point a clip at any object the
    /// credentials can read; where clips are opened, the allowlist refuses it again.
    #[test]
    fn sources_confine_where_clips_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let base = open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let opts = S3Options::default();
        let only_catalog = Sources::new(base.location(), &[]).unwrap();
        only_catalog.resolve(&base, "clips/a.mp4", &opts).unwrap();
        let err = only_catalog
            .resolve(&base, "s3://other/datasets/v7/frames/x.jpg", &opts)
            .unwrap_err();
        assert!(
            matches!(err, StorageError::SourceNotAllowed { .. })
                && err
                    .to_string()
                    .contains("s3://other/datasets/v7/frames/x.jpg")
                && err.to_string().contains("hint: pass --sources"),
            "{err}"
        );
        assert!(only_catalog.resolve(&base, "/etc/passwd", &opts).is_err());
        let wider = Sources::new(base.location(), &["s3://other/clips".to_owned()]).unwrap();
        wider
            .resolve(&base, "s3://other/clips/a.mp4", &opts)
            .unwrap();
        assert!(
            wider
                .resolve(&base, "s3://other/clipsX/a.mp4", &opts)
                .is_err()
        );
        assert!(
            wider
                .resolve(&base, "s3://other/datasets/a.jpg", &opts)
                .is_err()
        );
        let bucket = Sources::new(base.location(), &["s3://other".to_owned()]).unwrap();
        bucket
            .resolve(&base, "s3://other/datasets/a.jpg", &opts)
            .unwrap();
    }

    /// Regression (trust boundaries, item 2): the uploader kept sending after a refusal that
    /// would recur for every object. A failure of the store stops the batch; later objects are
    /// not sent and count as failed. (A bad key of one object does not: the storage suite.)
    #[test]
    fn an_uploader_stops_at_a_failure_that_would_recur() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("blocked"),
            b"a file where a folder should be",
        )
        .unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let uploader = Uploader::new(Arc::clone(&store), 1);
        uploader.submit("blocked/a.jpg", vec![1]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !uploader.failed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the failure was not seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        uploader.submit("fine/b.jpg", vec![2]);
        match uploader.finish() {
            Err(StorageError::Batch {
                failed: 2,
                total: 2,
                first,
            }) => assert!(matches!(*first, StorageError::Io { .. }), "{first}"),
            other => panic!("expected the batch to stop, got {other:?}"),
        }
        assert!(
            !dir.path().join("fine/b.jpg").exists(),
            "sent after the batch stopped"
        );
    }

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn store_args_build_options() {
        let cmd = Cmd::try_parse_from([
            "x",
            "--sse",
            "aws:kms",
            "--sse-kms-key-id",
            "k-1",
            "--require-sse",
        ])
        .unwrap();
        let opts = cmd.store.to_options().unwrap();
        assert_eq!(
            opts.sse,
            Some(Sse::Kms {
                key_id: Some("k-1".into())
            })
        );
        assert!(opts.require_sse);
        let cmd = Cmd::try_parse_from([
            "x",
            "--sse",
            "aes256",
            "--s3-endpoint",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        let opts = cmd.store.to_options().unwrap();
        assert_eq!(
            (opts.sse, opts.endpoint.as_deref()),
            (Some(Sse::Aes256), Some("http://127.0.0.1:9"))
        );
        let cmd = Cmd::try_parse_from(["x", "--sse", "aes256", "--sse-kms-key-id", "k"]).unwrap();
        assert!(matches!(
            cmd.store.to_options(),
            Err(StorageError::InvalidOption(_))
        ));
        assert!(Cmd::try_parse_from(["x", "--sse-kms-key-id", "k"]).is_err());
        assert!(Cmd::try_parse_from(["x", "--sse", "des"]).is_err());
    }
}
