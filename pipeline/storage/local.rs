//! The local-folder store: keys are relative paths under a root folder. Writes go to a temp file
//! in the destination folder and are renamed into place, so readers never see a partial object;
//! records are additionally fsynced (file and folder) so a crash leaves the old or the new record.
//! Files are created with [`super::FILE_MODE`] and folders with [`super::DIR_MODE`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::{Location, ObjectMeta, Result, StorageError, Store, check_key, check_prefix};

/// Temp files start with this; [`Store::list`] skips them.
pub(crate) const TEMP_PREFIX: &str = ".cf-tmp.";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A store in a local folder (created on first write).
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    location: Location,
}

impl LocalStore {
    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        let root = root.into();
        LocalStore {
            location: Location::Local(root.clone()),
            root,
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`.
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn not_found_or(
        &self,
        key: &str,
        operation: &'static str,
        path: &Path,
        err: io::Error,
    ) -> StorageError {
        if err.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound { url: self.url(key) }
        } else {
            io_err(operation, path, err)
        }
    }

    /// Writes via temp file + rename; `durable` adds fsync of the file and the folder.
    fn write_atomic(
        &self,
        key: &str,
        durable: bool,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> Result<u64> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent: the root");
        super::create_dir_all(dir).map_err(|e| io_err("create folder", dir, e))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id()));
        let result = (|| {
            let mut file = File::create(&temp).map_err(|e| io_err("create", &temp, e))?;
            super::set_file_mode(&file).map_err(|e| io_err("chmod", &temp, e))?;
            let written = fill(&mut file).map_err(|e| io_err("write", &temp, e))?;
            if durable {
                file.sync_all().map_err(|e| io_err("fsync", &temp, e))?;
            }
            drop(file);
            fs::rename(&temp, &path).map_err(|e| io_err("rename into", &path, e))?;
            Ok(written)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
            return result;
        }
        if durable {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync folder", dir, e))?;
        }
        result
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(io_err("list", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| io_err("stat", &path, e))?;
            let key = key_of(&self.root, &path);
            if file_type.is_dir() {
                // Descend only where keys below can still match the prefix.
                let dir_key = format!("{key}/");
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    self.walk(&path, prefix, out)?;
                }
            } else if key.starts_with(prefix) {
                let meta = fs::metadata(&path).map_err(|e| io_err("stat", &path, e))?;
                if meta.is_file() {
                    out.push(meta_of(key, &meta));
                }
            }
        }
        Ok(())
    }
}

impl Store for LocalStore {
    fn location(&self) -> &Location {
        &self.location
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        fs::read(&path)
            .map(Bytes::from)
            .map_err(|e| self.not_found_or(key, "read", &path, e))
    }

    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key)?;
        let file = File::open(&path).map_err(|e| self.not_found_or(key, "open", &path, e))?;
        Ok(Box::new(file))
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

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let meta = fs::metadata(&path).map_err(|e| self.not_found_or(key, "stat", &path, e))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound { url: self.url(key) });
        }
        Ok(meta_of(key.to_owned(), &meta))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        // Start from the deepest folder the prefix names completely.
        let start = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        self.walk(&start, prefix, &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", &path, e)),
        }
    }
}

fn io_err(operation: &'static str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

fn key_of(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
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
        etag: Some(format!("{mtime:x}-{:x}", meta.len())),
        encryption: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
