//! Where things are: local paths and S3 prefixes ([`Location`]), opening the store at one,
//! resolving a catalog's clip URIs against it, the allowlist of sources, and key checks.

use super::*;

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

    pub(super) fn join_display(&self, key: &str) -> String {
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
