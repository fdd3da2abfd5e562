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

pub(crate) mod beneath;
mod local;
mod object;
pub mod s3;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

pub use local::LocalStore;
pub(crate) use local::TEMP_PREFIX;
pub use object::ObjectRef;
pub use s3::{S3Credentials, S3Options, S3Store, Sse};

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
    #[error("{operation} {}: {source}", path.display())]
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

    /// Size and version tag of an object.
    fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Every object whose key starts with `prefix` (a plain string prefix, as in S3: `a/b`
    /// matches `a/b/c` and `a/bc`), sorted by key. Pages through S3 listings of any size.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object. Deleting a missing object succeeds (as on S3).
    fn delete(&self, key: &str) -> Result<()>;

    /// Checks, before anything is deleted or replaced, that writes here will be accepted: S3
    /// writes a small probe object ([`PROBE_PREFIX`]), checks the server confirms the required
    /// encryption, and deletes it again. Local folders need no probe.
    fn probe_write(&self) -> Result<()> {
        Ok(())
    }
}

/// A store location: a local folder or an S3 bucket and prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// A local folder.
    Local(PathBuf),
    /// An S3 prefix. `prefix` has no leading or trailing `/` and may be empty.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

impl Location {
    /// Parses a store URL: `s3://bucket[/prefix]`, `file:///abs/path`, or a plain path.
    pub fn parse(url: &str) -> Result<Location> {
        let invalid = |reason: &str| StorageError::InvalidLocation {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.is_empty() {
            return Err(invalid("empty location"));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket).map_err(invalid)?;
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                check_key(prefix).map_err(|e| invalid(&e.to_string()))?;
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(invalid(
                    "file URLs must be absolute (file:///path) and name no host but localhost",
                ));
            }
            if path.contains('%') {
                return Err(invalid(
                    "percent-encoded file URLs are not supported; give the path instead",
                ));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(invalid(&format!(
                "unsupported scheme `{scheme}` (use a path, file://, or s3://)"
            )));
        }
        Ok(Location::Local(PathBuf::from(url)))
    }

    /// The location of `key` below this one (for an object URL, or a sub-store).
    pub fn join(&self, key: &str) -> Location {
        let key = key.trim_matches('/');
        match self {
            Location::Local(root) => Location::Local(if key.is_empty() {
                root.clone()
            } else {
                root.join(key)
            }),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: join_key(prefix, key),
            },
        }
    }

    fn join_display(&self, key: &str) -> String {
        self.join(key).to_string()
    }

    /// If `other` lies inside this location, its key relative to this one.
    pub fn relative_key(&self, other: &Location) -> Option<String> {
        match (self, other) {
            (Location::Local(root), Location::Local(path)) => {
                let rel = path.strip_prefix(root).ok()?;
                let parts: Option<Vec<&str>> = rel
                    .components()
                    .map(|c| match c {
                        std::path::Component::Normal(s) => s.to_str(),
                        _ => None,
                    })
                    .collect();
                let key = parts?.join("/");
                (!key.is_empty()).then_some(key)
            }
            (
                Location::S3 {
                    bucket: b1,
                    prefix: p1,
                },
                Location::S3 {
                    bucket: b2,
                    prefix: p2,
                },
            ) if b1 == b2 => {
                let rest = if p1.is_empty() {
                    p2.as_str()
                } else {
                    p2.strip_prefix(p1.as_str())?.strip_prefix('/')?
                };
                (!rest.is_empty()).then(|| rest.to_owned())
            }
            _ => None,
        }
    }

    /// Whether the two locations are the same or one lies inside the other; local paths are
    /// compared as the system resolves them (links and `..` included), as far as they exist.
    pub fn overlaps(&self, other: &Location) -> bool {
        fn resolved(p: &Path) -> PathBuf {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            let mut tail = Vec::new();
            let mut at = abs.as_path();
            loop {
                if let Ok(real) = std::fs::canonicalize(at) {
                    return tail.iter().rev().fold(real, |acc, c| acc.join(c));
                }
                match (at.parent(), at.file_name()) {
                    (Some(parent), Some(name)) => {
                        tail.push(name.to_owned());
                        at = parent;
                    }
                    _ => return abs,
                }
            }
        }
        match (self, other) {
            (Location::Local(a), Location::Local(b)) => {
                let (a, b) = (resolved(a), resolved(b));
                a.starts_with(&b) || b.starts_with(&a)
            }
            (
                Location::S3 {
                    bucket: b1,
                    prefix: p1,
                },
                Location::S3 {
                    bucket: b2,
                    prefix: p2,
                },
            ) => {
                let inside = |a: &str, b: &str| {
                    a.is_empty() || b == a || b.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
                };
                b1 == b2 && (inside(p1, p2) || inside(p2, p1))
            }
            _ => false,
        }
    }

    /// Splits an object location into the store that holds it and its key there: the parent
    /// folder and file name for local paths, the bucket and full key for S3.
    pub fn split_object(&self) -> Option<(Location, String)> {
        match self {
            Location::Local(path) => {
                let name = path.file_name()?.to_str()?.to_owned();
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Some((Location::Local(parent.to_path_buf()), name))
            }
            Location::S3 { bucket, prefix } if !prefix.is_empty() => Some((
                Location::S3 {
                    bucket: bucket.clone(),
                    prefix: String::new(),
                },
                prefix.clone(),
            )),
            Location::S3 { .. } => None,
        }
    }
}

impl FromStr for Location {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Opens the store at `url` (see [`Location::parse`]). Local stores need not exist yet (folders
/// are created on first write); S3 stores make no request until first used, so bad credentials
/// show up on the first operation as [`StorageError::Credentials`].
pub fn open(url: &str, options: &S3Options) -> Result<Arc<dyn Store>> {
    open_location(Location::parse(url)?, options)
}

/// Opens the store at an already parsed location.
pub fn open_location(location: Location, options: &S3Options) -> Result<Arc<dyn Store>> {
    Ok(match location {
        Location::Local(root) => Arc::new(LocalStore::new(root)),
        Location::S3 { bucket, prefix } => Arc::new(S3Store::open(&bucket, &prefix, options)?),
    })
}

/// Resolves a reference found in a record (a catalog clip's `uri`) against the store the record
/// came from: a relative key stays in `base`; an absolute path, `file://` or `s3://` URL inside
/// `base` becomes a key of `base`; anything else opens the store that holds it (S3 clients are
/// shared between stores with the same options). Returns the store and the key to use.
pub fn resolve(
    base: &Arc<dyn Store>,
    uri: &str,
    options: &S3Options,
) -> Result<(Arc<dyn Store>, String)> {
    let absolute = uri.contains("://") || Path::new(uri).is_absolute();
    if !absolute {
        check_key(uri)?;
        return Ok((Arc::clone(base), uri.to_owned()));
    }
    let target = Location::parse(uri)?;
    if let Some(key) = base.location().relative_key(&target) {
        check_key(&key)?;
        return Ok((Arc::clone(base), key));
    }
    let (parent, key) = target
        .split_object()
        .ok_or_else(|| StorageError::InvalidLocation {
            url: uri.to_owned(),
            reason: "names a bucket or folder, not an object".to_owned(),
        })?;
    Ok((open_location(parent, options)?, key))
}

/// Where clips may be read from: the catalog's own folder or bucket prefix, and any location
/// given with `--sources`. A catalog can name any object the credentials can read (another
/// dataset's frames, another bucket); a clip outside the allowlist is excluded by `select`
/// (`source_not_allowed`) and refused again when it is opened ([`Sources::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    allowed: Vec<Location>,
}

impl Sources {
    /// The catalog's location (`base`, the store that holds the catalog) and the `extra` URLs.
    pub fn new(base: &Location, extra: &[String]) -> Result<Sources> {
        let mut allowed = vec![base.clone()];
        for url in extra {
            let url = url.trim();
            if url.is_empty() {
                continue;
            }
            allowed.push(Location::parse(url)?);
        }
        Ok(Sources { allowed })
    }

    /// True when `target` lies in (or is) one of the allowed locations.
    pub fn allows(&self, target: &Location) -> bool {
        self.allowed.iter().any(|a| match (a, target) {
            (Location::Local(root), Location::Local(path)) => path.starts_with(root),
            (
                Location::S3 {
                    bucket: b1,
                    prefix: p1,
                },
                Location::S3 {
                    bucket: b2,
                    prefix: p2,
                },
            ) => {
                b1 == b2
                    && (p1.is_empty()
                        || p2 == p1
                        || p2
                            .strip_prefix(p1.as_str())
                            .is_some_and(|r| r.starts_with('/')))
            }
            _ => false,
        })
    }

    /// The allowed locations, for messages.
    pub fn describe(&self) -> String {
        self.allowed
            .iter()
            .map(Location::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks a catalog `uri` (relative to the catalog at `base`, or `s3://…`) against the
    /// allowlist; the error says where it points and what is allowed.
    pub fn check_uri(&self, base: &Location, uri: &str) -> Result<()> {
        let absolute = uri.contains("://") || Path::new(uri).is_absolute();
        let target = if absolute {
            Location::parse(uri)?
        } else {
            base.join(uri)
        };
        if self.allows(&target) {
            Ok(())
        } else {
            Err(StorageError::SourceNotAllowed {
                url: target.to_string(),
                allowed: self.describe(),
            })
        }
    }

    /// [`resolve`], refusing anything outside the allowlist.
    pub fn resolve(
        &self,
        base: &Arc<dyn Store>,
        uri: &str,
        options: &S3Options,
    ) -> Result<(Arc<dyn Store>, String)> {
        let (store, key) = resolve(base, uri, options)?;
        let target = store.location().join(&key);
        if !self.allows(&target) {
            return Err(StorageError::SourceNotAllowed {
                url: target.to_string(),
                allowed: self.describe(),
            });
        }
        Ok((store, key))
    }
}

/// Checks an object key: non-empty, relative, `/`-separated, no empty, `.` or `..` segments, no
/// backslashes or control characters. Keys that pass cannot escape a local store's folder.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.starts_with('/') {
        return bad("keys are relative (no leading `/`)");
    }
    if key.contains('\\') || key.chars().any(char::is_control) {
        return bad("backslashes and control characters are not allowed");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("empty path segment (`//` or trailing `/`)"),
            "." | ".." => return bad("`.` and `..` segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a listing prefix: like a key, but it may be empty or end with `/`.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() && prefix.is_empty() {
        return Ok(());
    }
    check_key(trimmed).map_err(|_| StorageError::InvalidKey {
        key: prefix.to_owned(),
        reason: "prefixes follow the key rules (relative, no `..`), optionally ending with `/`",
    })
}

/// Checks an S3 bucket name (3 to 63 of lowercase letters, digits, `-` and `.`, starting and
/// ending with a letter or digit).
pub fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("bucket names are 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("bucket names use lowercase letters, digits, `-` and `.`");
    }
    if !bucket.as_bytes()[0].is_ascii_alphanumeric()
        || !bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
    {
        return Err("bucket names start and end with a letter or digit");
    }
    Ok(())
}

pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}/{key}"),
    }
}

/// Counts from a finished [`Uploader`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Objects written.
    pub objects: u64,
    /// Bytes written.
    pub bytes: u64,
}

type Job = (String, Bytes);

/// Puts many small objects (frames) with a bounded number in flight, overlapping with the
/// caller's compute: [`Uploader::submit`] returns at once while fewer than `in_flight` uploads are
/// queued and blocks otherwise (back-pressure, bounded memory). Works with any [`Store`].
/// A failure that would recur for every object (refused encryption, credentials, an unreachable
/// or stalled endpoint: [`StorageError::stops_batch`]) stops the batch: later objects are not
/// sent (they count as failed), [`Uploader::failed`] tells the caller to stop producing them, and
/// [`Uploader::finish`] reports it. A failure of one object (a bad key) does not stop the others.
pub struct Uploader {
    tx: Option<crossbeam_channel::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    state: Arc<Mutex<UploadState>>,
}

#[derive(Default)]
struct UploadState {
    /// Set by the first failure that would recur for every object ([`StorageError::stops_batch`]).
    stopped: bool,
    stats: UploadStats,
    submitted: usize,
    failed: usize,
    first_error: Option<StorageError>,
}

impl Uploader {
    /// Starts `in_flight` (at least 1) upload threads writing into `store`.
    pub fn new(store: Arc<dyn Store>, in_flight: usize) -> Uploader {
        let in_flight = in_flight.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(in_flight);
        let state = Arc::new(Mutex::new(UploadState::default()));
        let workers = (0..in_flight)
            .map(|i| {
                let (rx, store, state) = (rx.clone(), Arc::clone(&store), Arc::clone(&state));
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || {
                        for (key, data) in rx {
                            {
                                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                                if s.stopped {
                                    s.failed += 1; // not sent: the batch stopped
                                    continue;
                                }
                            }
                            let len = data.len() as u64;
                            let result = store.put(&key, data);
                            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                            match result {
                                Ok(()) => {
                                    s.stats.objects += 1;
                                    s.stats.bytes += len;
                                }
                                Err(err) => {
                                    tracing::error!(key = %store.url(&key), error = %err, "upload failed");
                                    s.failed += 1;
                                    s.stopped |= err.stops_batch();
                                    s.first_error.get_or_insert(err);
                                }
                            }
                        }
                    })
                    .expect("spawning an upload thread")
            })
            .collect();
        Uploader {
            tx: Some(tx),
            workers,
            state,
        }
    }

    /// True once the batch stopped at a failure: nothing more is sent; the caller should stop.
    pub fn failed(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// A handle that tells whether an upload failed, for a thread that does not own the uploader.
    pub fn watch(&self) -> UploadWatch {
        UploadWatch(Arc::clone(&self.state))
    }

    /// Queues one object; blocks while `in_flight` uploads are already waiting. Once the batch
    /// stopped ([`Uploader::failed`]) the object is not sent and counts as failed.
    pub fn submit(&self, key: impl Into<String>, data: impl Into<Bytes>) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.submitted += 1;
            if s.stopped {
                s.failed += 1; // not sent: the batch stopped
                return;
            }
        }
        let tx = self.tx.as_ref().expect("uploader is open until finish");
        // The workers only stop when the channel closes, so sending cannot fail.
        tx.send((key.into(), data.into()))
            .expect("upload threads are running");
    }

    /// Waits for every queued upload; returns the counts, or [`StorageError::Batch`] with the
    /// first failure when any upload failed.
    pub fn finish(mut self) -> Result<UploadStats> {
        self.tx.take();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                s.failed += 1;
            }
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed > 0 {
            let first = s
                .first_error
                .take()
                .unwrap_or_else(|| StorageError::InvalidOption("an upload thread panicked".into()));
            return Err(StorageError::Batch {
                failed: s.failed,
                total: s.submitted,
                first: Box::new(first),
            });
        }
        Ok(s.stats)
    }
}

/// Tells whether an [`Uploader`] stopped at a failure ([`Uploader::watch`]).
#[derive(Clone)]
pub struct UploadWatch(Arc<Mutex<UploadState>>);

impl UploadWatch {
    /// True once an upload failed.
    pub fn failed(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.tx.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Puts every `(key, bytes)` pair with at most `in_flight` uploads at once (see [`Uploader`]).
pub fn put_many<I, K, D>(store: &Arc<dyn Store>, items: I, in_flight: usize) -> Result<UploadStats>
where
    I: IntoIterator<Item = (K, D)>,
    K: Into<String>,
    D: Into<Bytes>,
{
    let uploader = Uploader::new(Arc::clone(store), in_flight);
    for (key, data) in items {
        uploader.submit(key, data);
    }
    uploader.finish()
}

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
