//! The local-folder store: keys are relative paths under a root folder. Writes go to a temp file
//! in the destination folder and are renamed into place, so readers never see a partial object;
//! records are additionally fsynced (file and folder) so a crash leaves the old or the new record.
//! Files are created with [`super::FILE_MODE`] and folders with [`super::DIR_MODE`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::beneath::Beneath;
use super::{Location, ObjectMeta, Result, StorageError, Store, check_key, check_prefix};

/// Temp files start with this; [`Store::list`] skips them.
pub(crate) const TEMP_PREFIX: &str = ".cf-tmp.";

/// The pause between the two reads of [`Store::get_settled`].
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// A store in a local folder (created on first write). Nothing below the root is reached through
/// a link ([`Beneath`]): a link, FIFO, device or socket inside it is an error naming it. Only a
/// store made with [`LocalStore::reading_named_file`] reads through links, for the one file a
/// user names on the command line (a catalog, a ledger).
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    location: Location,
    beneath: Beneath,
    follow_reads: bool,
}

impl LocalStore {
    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        let root = root.into();
        LocalStore {
            location: Location::Local(root.clone()),
            beneath: Beneath::new(root.clone()),
            root,
            follow_reads: false,
        }
    }

    /// A store whose reads follow links the way the system does: for the folder of a file named
    /// on the command line, which may well be a link to the current version. Writes stay as
    /// strict as [`LocalStore::new`]'s.
    pub fn reading_named_file(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            follow_reads: true,
            ..LocalStore::new(root)
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key` (for messages: it is never opened by this path).
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The plain file that holds `key`, open for reading.
    fn open(&self, key: &str) -> Result<File> {
        let path = self.path(key)?;
        let not_found = || StorageError::NotFound { url: self.url(key) };
        if self.follow_reads {
            let file = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => not_found(),
                _ => io_err("open", &path, e),
            })?;
            let meta = file.metadata().map_err(|e| io_err("stat", &path, e))?;
            if !meta.is_file() {
                return Err(not_found());
            }
            return Ok(file);
        }
        self.beneath
            .open(key)
            .map_err(|e| io_err("open", &path, e))?
            .ok_or_else(not_found)
    }

    /// Writes via temp file + rename; `durable` adds fsync of the file and the folder.
    fn write_atomic(
        &self,
        key: &str,
        durable: bool,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> Result<u64> {
        let path = self.path(key)?;
        self.beneath
            .write(key, TEMP_PREFIX, durable, fill)
            .map_err(|e| io_err("write", &path, e))
    }

    /// Removes the folder `dir` (a key prefix without its `/`) and its parents while they are
    /// empty, below the root.
    pub fn remove_empty_dirs(&self, dir: &str) {
        self.beneath.remove_empty_dirs(dir);
    }
}

impl Store for LocalStore {
    fn location(&self) -> &Location {
        &self.location
    }

    fn probe_write(&self) -> Result<()> {
        self.beneath
            .sweep_temp(TEMP_PREFIX)
            .map(drop)
            .map_err(|e| io_err("sweep", &self.root, e))
    }

    /// Reads the whole file, and refuses what was not one state of it: a file rewritten in place
    /// while read (a ledger edited by another process) could otherwise give a prefix of its new
    /// text that ends on a line boundary, a ledger that never was (a revocation cut off).
    fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.root.join(key);
        let mut file = self.open(key)?;
        let stamp = |file: &File| {
            file.metadata()
                // Not the change time: a file replaced by rename while it is read (the safe way)
                // changes the old inode's link count, and so its ctime, not its bytes.
                .map(|m| (m.len(), m.modified().ok(), m.ino()))
                .map_err(|e| io_err("stat", &path, e))
        };
        let before = stamp(&file)?;
        let mut buf = Vec::with_capacity(usize::try_from(before.0).unwrap_or(0));
        file.read_to_end(&mut buf)
            .map_err(|e| io_err("read", &path, e))?;
        let after = stamp(&file)?;
        let detail = if before != after {
            Some("its size or modification time changed".to_owned())
        } else if buf.len() as u64 != after.0 {
            Some(format!(
                "{} bytes read from a file of {} bytes",
                buf.len(),
                after.0
            ))
        } else {
            None
        };
        match detail {
            Some(detail) => Err(StorageError::ChangedWhileRead {
                url: self.url(key),
                detail,
            }),
            None => Ok(Bytes::from(buf)),
        }
    }

    fn get_settled(&self, key: &str) -> Result<Bytes> {
        const TRIES: usize = 5;
        let mut last = None;
        for _ in 0..TRIES {
            let first = match self.get(key) {
                Err(e @ StorageError::ChangedWhileRead { .. }) => {
                    last = Some(e);
                    std::thread::sleep(SETTLE);
                    continue;
                }
                other => other?,
            };
            std::thread::sleep(SETTLE);
            match self.get(key) {
                Ok(second) if second == first => return Ok(first),
                // An append-only writer (the ledger's own model) added whole lines in between:
                // the first read was a state of the file, ending on a line.
                Ok(second)
                    if !first.is_empty()
                        && first.ends_with(b"\n")
                        && second.starts_with(&first) =>
                {
                    return Ok(first);
                }
                Ok(_) => {
                    last = Some(StorageError::ChangedWhileRead {
                        url: self.url(key),
                        detail: "two reads a moment apart differ".to_owned(),
                    });
                }
                Err(e @ StorageError::ChangedWhileRead { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.open(key)?))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.write_atomic(key, false, |f| {
            f.write_all(&data).map(|()| data.len() as u64)
        })
        .map(drop)
    }

    fn put_reader(&self, key: &str, reader: &mut dyn Read) -> Result<u64> {
        self.write_atomic(key, false, |f| io::copy(reader, f))
    }

    fn put_record(&self, key: &str, data: Bytes) -> Result<()> {
        self.write_atomic(key, true, |f| {
            f.write_all(&data).map(|()| data.len() as u64)
        })
        .map(drop)
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        match self.beneath.write_new(key, TEMP_PREFIX, |f| {
            f.write_all(&data).map(|()| data.len() as u64)
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("write", &path, e)),
        }
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        let file = self.open(key)?;
        let meta = file
            .metadata()
            .map_err(|e| io_err("stat", &self.root.join(key), e))?;
        Ok(meta_of(key.to_owned(), &meta))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let found = self
            .beneath
            .list(prefix, TEMP_PREFIX)
            .map_err(|e| io_err("list", &self.root.join(prefix), e))?;
        Ok(found
            .into_iter()
            .map(|(key, size, mtime)| ObjectMeta {
                key,
                size,
                etag: Some(etag(mtime, size)),
                encryption: None,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.beneath
            .remove(key)
            .map_err(|e| io_err("delete", &path, e))
    }
}

fn io_err(operation: &'static str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

fn meta_of(key: String, meta: &fs::Metadata) -> ObjectMeta {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    ObjectMeta {
        key,
        size: meta.len(),
        etag: Some(etag(mtime, meta.len())),
        encryption: None,
    }
}

/// A local file's version tag: its modification time (ns) and size.
fn etag(mtime_ns: u128, size: u64) -> String {
    format!("{mtime_ns:x}-{size:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that does not give its size in bytes is no state of itself that can be trusted:
    /// `/proc` files say 0 bytes and give more (a file rewritten in place while read gives
    /// other than its size too, or moves its size and time). The old `get` returned the bytes.
    #[test]
    fn a_file_that_gives_other_than_its_size_is_refused() {
        let store = LocalStore::reading_named_file("/proc/self");
        match store.get("status") {
            Err(StorageError::ChangedWhileRead { url, detail }) => {
                assert!(url.ends_with("/proc/self/status"), "{url}");
                assert!(
                    detail.contains("bytes read from a file of 0 bytes"),
                    "{detail}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ledger.jsonl"), b"{}\n").unwrap();
        let store = LocalStore::reading_named_file(dir.path());
        assert_eq!(&store.get("ledger.jsonl").unwrap()[..], b"{}\n");
    }

    /// A writer that appends whole lines while the file is read (a live, append-only ledger):
    /// every settled read is accepted, and is a state the writer made, ending on a line. The
    /// first version of the settled read refused them all ("two reads a moment apart differ").
    #[test]
    fn reads_racing_an_appender_give_a_state_it_made_and_are_not_refused() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        fs::write(&path, b"{\"n\":0}\n").unwrap();
        let stop = AtomicBool::new(false);
        let store = LocalStore::reading_named_file(dir.path());
        let results: Vec<Result<Bytes>> = std::thread::scope(|s| {
            s.spawn(|| {
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                let mut n = 1;
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(format!("{{\"n\":{n}}}\n").as_bytes()).unwrap();
                    n += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            let results = (0..40).map(|_| store.get_settled("ledger.jsonl")).collect();
            stop.store(true, Ordering::Relaxed);
            results
        });
        let last = fs::read(&path).unwrap();
        for r in results {
            let bytes = r.expect("a live appender's file is read, not refused");
            assert!(bytes.ends_with(b"\n") && last.starts_with(&bytes));
        }
    }

    #[test]
    fn temp_files_are_invisible_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .put_record("runs/r.json", Bytes::from_static(b"{}"))
            .unwrap();
        fs::write(
            dir.path().join("runs").join(format!("{TEMP_PREFIX}x.1.2")),
            b"partial",
        )
        .unwrap();
        let keys: Vec<_> = store.list("").unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["runs/r.json"]);
        // A failing reader leaves no temp file behind.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("camera unplugged"))
            }
        }
        let err = store.put_reader("runs/bad.bin", &mut Failing).unwrap_err();
        assert!(err.to_string().contains("camera unplugged"), "{err}");
        // A prefix that runs through a file lists nothing (as on S3), not an error.
        store.put("plain", Bytes::from_static(b"x")).unwrap();
        assert!(store.list("plain/").unwrap().is_empty());
        assert!(store.list("plain/x/").unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(dir.path().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
