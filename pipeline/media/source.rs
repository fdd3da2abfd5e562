//! One file, one identity: the bytes a clip is hashed from are the bytes ffmpeg decodes.
//!
//! A [`SourceFile`] is an open descriptor, never a path that could be swapped. A catalog clip is
//! opened once, beneath the catalog's folder (a symlink is followed only while it stays inside
//! that folder), refused unless it is a regular file (a FIFO, device or socket could serve other
//! bytes to each reader), and copied once from that descriptor into an anonymous memory file
//! (`memfd`, never a file on disk), hashed as it is copied and sealed against any change; an S3
//! body is streamed into one the same way. ffmpeg and ffprobe then open `/proc/<pid>/fd/<n>` of
//! that sealed file: exactly the hashed bytes, whatever happens to the path or the original file
//! meanwhile. A file given to `anonymize` by its user is read in place through its descriptor; a
//! rewrite while it is decoded changes its status-change time, which
//! [`SourceFile::check_unchanged`] reports.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a clip's bytes could not be opened as a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("{name}: no such file")]
    NotFound {
        /// The clip concerned.
        name: String,
    },
    /// The path is a FIFO, device, socket or folder.
    #[error("{name}: is a {kind}, not a regular file")]
    NotRegular {
        /// The clip concerned.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// The path (through a symlink or `..`) leaves the folder it must stay in.
    #[error("{name}: resolves outside the catalog's folder")]
    Escapes {
        /// The clip concerned.
        name: String,
    },
    /// The clip is larger than the configured limit.
    #[error("{name}: larger than the limit of {max_bytes} bytes")]
    TooLarge {
        /// The clip concerned.
        name: String,
        /// The limit.
        max_bytes: u64,
    },
    /// The file changed while it was being decoded.
    #[error("{name}: the file changed while it was read")]
    Changed {
        /// The clip concerned.
        name: String,
    },
    /// Reading failed.
    #[error("{name}: cannot read: {source}")]
    Io {
        /// The clip concerned.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What `fstat` says about a local file; a change between two looks means it was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

fn stamp(file: &File) -> std::io::Result<Stamp> {
    let st = rustix::fs::fstat(file)?;
    Ok(Stamp {
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        ino: st.st_ino as u64,
    })
}

/// An open, hashed clip that ffmpeg reads through its descriptor.
#[derive(Debug)]
pub struct SourceFile {
    file: File,
    blake3: String,
    len: u64,
    /// `None` for a sealed memory file (it cannot change).
    stamp: Option<Stamp>,
}

impl SourceFile {
    /// Opens `key` (a `/`-separated relative path) beneath `root` and copies it into a sealed
    /// memory file. Symlinks are resolved, but only inside `root`; anything but a regular file is
    /// refused before a byte is read.
    pub fn open_beneath(
        root: &Path,
        key: &str,
        name: &str,
        max_bytes: u64,
    ) -> Result<SourceFile, SourceError> {
        let io = |source: std::io::Error| SourceError::Io {
            name: name.to_owned(),
            source,
        };
        let dir = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        // NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat2(
            &dir,
            key,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOSYS) => {
                return Self::open_beneath_fallback(root, key, name, max_bytes);
            }
            Err(rustix::io::Errno::XDEV) => {
                return Err(SourceError::Escapes {
                    name: name.to_owned(),
                });
            }
            Err(rustix::io::Errno::NOENT) => {
                return Err(SourceError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io(e.into())),
        };
        Self::sealed_copy(File::from(fd), name, max_bytes)
    }

    /// A regular file's bytes, copied into a sealed memory file.
    fn sealed_copy(file: File, name: &str, max_bytes: u64) -> Result<SourceFile, SourceError> {
        check_regular(&file, name, max_bytes)?;
        Self::from_reader(file, name, max_bytes)
    }

    /// For kernels without `openat2`: canonicalise, check the result is inside `root`, and open
    /// it without following a final symlink (the descriptor is checked as in the usual path).
    fn open_beneath_fallback(
        root: &Path,
        key: &str,
        name: &str,
        max_bytes: u64,
    ) -> Result<SourceFile, SourceError> {
        let io = |source: std::io::Error| SourceError::Io {
            name: name.to_owned(),
            source,
        };
        let root = root.canonicalize().map_err(io)?;
        let full = match root.join(key).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        if !full.starts_with(&root) {
            return Err(SourceError::Escapes {
                name: name.to_owned(),
            });
        }
        let fd = rustix::fs::open(
            &full,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        Self::sealed_copy(File::from(fd), name, max_bytes)
    }

    /// Opens a local file given by the user (`anonymize`): any path, but a regular file only.
    pub fn open_path(path: &Path, max_bytes: u64) -> Result<SourceFile, SourceError> {
        let name = path.display().to_string();
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => SourceError::NotFound { name: name.clone() },
            e => SourceError::Io {
                name: name.clone(),
                source: e.into(),
            },
        })?;
        Self::from_local(File::from(fd), &name, max_bytes)
    }

    fn from_local(file: File, name: &str, max_bytes: u64) -> Result<SourceFile, SourceError> {
        let io = |source: std::io::Error| SourceError::Io {
            name: name.to_owned(),
            source,
        };
        check_regular(&file, name, max_bytes)?;
        let before = stamp(&file).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let len = std::io::copy(&mut (&file).take(max_bytes + 1), &mut hasher).map_err(io)?;
        if len > max_bytes {
            return Err(SourceError::TooLarge {
                name: name.to_owned(),
                max_bytes,
            });
        }
        let source = SourceFile {
            blake3: crate::hashing::hex(&hasher.finalize()),
            len,
            stamp: Some(before),
            file,
        };
        // Hashed bytes are only the file's if nothing wrote to it meanwhile.
        source.check_unchanged(name)?;
        if len != before.size {
            return Err(SourceError::Changed {
                name: name.to_owned(),
            });
        }
        Ok(source)
    }
}

/// Refuses anything but a regular file of at most `max_bytes`.
fn check_regular(file: &File, name: &str, max_bytes: u64) -> Result<(), SourceError> {
    {
        let io = |source: std::io::Error| SourceError::Io {
            name: name.to_owned(),
            source,
        };
        let st = rustix::fs::fstat(file).map_err(|e| io(e.into()))?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let what = match kind {
            rustix::fs::FileType::RegularFile => None,
            rustix::fs::FileType::Directory => Some("folder"),
            rustix::fs::FileType::Fifo => Some("FIFO"),
            rustix::fs::FileType::Socket => Some("socket"),
            rustix::fs::FileType::CharacterDevice => Some("character device"),
            rustix::fs::FileType::BlockDevice => Some("block device"),
            _ => Some("special file"),
        };
        if let Some(kind) = what {
            return Err(SourceError::NotRegular {
                name: name.to_owned(),
                kind,
            });
        }
        if st.st_size as u64 > max_bytes {
            return Err(SourceError::TooLarge {
                name: name.to_owned(),
                max_bytes,
            });
        }
        Ok(())
    }
}

impl SourceFile {
    /// Copies a stream into a sealed memory file, hashing as it goes.
    pub fn from_reader(
        mut reader: impl Read,
        name: &str,
        max_bytes: u64,
    ) -> Result<SourceFile, SourceError> {
        use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};
        let io = |source: std::io::Error| SourceError::Io {
            name: name.to_owned(),
            source,
        };
        let fd = memfd_create(
            "clearframe-clip",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| io(e.into()))?;
        let mut memory = File::from(fd);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            total += n as u64;
            if total > max_bytes {
                return Err(SourceError::TooLarge {
                    name: name.to_owned(),
                    max_bytes,
                });
            }
            hasher.update(&buf[..n]);
            memory.write_all(&buf[..n]).map_err(io)?;
        }
        fcntl_add_seals(
            &memory,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )
        .map_err(|e| io(e.into()))?;
        Ok(SourceFile {
            file: memory,
            blake3: crate::hashing::hex(&hasher.finalize()),
            len: total,
            stamp: None,
        })
    }

    /// blake3 (hex) of exactly the bytes ffmpeg reads.
    pub fn blake3(&self) -> &str {
        &self.blake3
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty clip.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The path a child process opens to read this very descriptor.
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Fails when a local file was written to since it was hashed.
    pub fn check_unchanged(&self, name: &str) -> Result<(), SourceError> {
        let Some(before) = self.stamp else {
            return Ok(());
        };
        let now = stamp(&self.file).map_err(|source| SourceError::Io {
            name: name.to_owned(),
            source,
        })?;
        if now != before {
            return Err(SourceError::Changed {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("clip.mp4");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err =
            SourceFile::open_beneath(dir.path(), "clip.mp4", "clip.mp4", 1 << 30).unwrap_err();
        assert!(
            matches!(err, SourceError::NotRegular { kind: "FIFO", .. }),
            "{err}"
        );
        let err = SourceFile::open_path(&fifo, 1 << 30).unwrap_err();
        assert!(matches!(err, SourceError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn symlinks_resolve_inside_the_folder_only() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.mp4"), b"other bytes").unwrap();
        std::fs::create_dir(dir.path().join("clips")).unwrap();
        std::fs::write(dir.path().join("clips/real.mp4"), b"clip bytes").unwrap();
        std::os::unix::fs::symlink("clips/real.mp4", dir.path().join("inside.mp4")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.mp4"),
            dir.path().join("out.mp4"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", dir.path().join("clips/up.mp4")).unwrap();
        let ok = SourceFile::open_beneath(dir.path(), "inside.mp4", "inside", 1 << 20).unwrap();
        assert_eq!(ok.blake3(), crate::hashing::hash_bytes(b"clip bytes"));
        for key in ["out.mp4", "clips/up.mp4"] {
            let err = SourceFile::open_beneath(dir.path(), key, key, 1 << 20).unwrap_err();
            assert!(matches!(err, SourceError::Escapes { .. }), "{key}: {err}");
        }
    }

    #[test]
    fn a_catalog_clip_is_a_sealed_copy_of_the_hashed_bytes() {
        // Regression: a clip rewritten in place (or swapped by a rename) while it was decoded
        // gave frames of other bytes under the first bytes' blake3.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.mp4");
        std::fs::write(&p, b"first bytes").unwrap();
        let src = SourceFile::open_beneath(dir.path(), "a.mp4", "a", 1 << 20).unwrap();
        std::fs::write(&p, b"other bytes").unwrap();
        std::fs::rename(&p, dir.path().join("old.mp4")).unwrap();
        std::fs::write(&p, b"third bytes").unwrap();
        let read = std::fs::read(src.proc_path()).unwrap();
        assert_eq!(read, b"first bytes");
        assert_eq!(src.blake3(), crate::hashing::hash_bytes(&read));
        src.check_unchanged("a").unwrap();
    }

    #[test]
    fn a_users_file_rewritten_in_place_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.mp4");
        std::fs::write(&p, b"first bytes").unwrap();
        let src = SourceFile::open_path(&p, 1 << 20).unwrap();
        src.check_unchanged("a").unwrap();
        std::fs::write(&p, b"rewritten!!").unwrap();
        assert!(matches!(
            src.check_unchanged("a"),
            Err(SourceError::Changed { .. })
        ));
    }

    #[test]
    fn streams_are_sealed_and_bounded() {
        let src = SourceFile::from_reader(&b"streamed"[..], "s3://b/k", 1 << 20).unwrap();
        assert_eq!(src.blake3(), crate::hashing::hash_bytes(b"streamed"));
        assert_eq!(std::fs::read(src.proc_path()).unwrap(), b"streamed");
        let err = SourceFile::from_reader(&[0u8; 100][..], "s3://b/k", 10).unwrap_err();
        assert!(matches!(err, SourceError::TooLarge { .. }), "{err}");
    }
}
