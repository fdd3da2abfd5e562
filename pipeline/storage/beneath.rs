//! Files beneath a root folder, reached one component at a time without following a link.
//!
//! A folder ClearFrame writes (`--out`, `--work`) may hold what someone else put there: a link
//! `frames/<id> -> ../victim` or `annotations/cvat -> /etc` would send writes, deletes and reads
//! elsewhere if paths were joined and handed to the kernel. Here every folder below the root is
//! opened with `O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, and files are
//! created, renamed, read and removed relative to the descriptor of their own folder. A link, a
//! FIFO, a device or a socket where ClearFrame expects a folder or a file is an error naming it
//! ([`io::ErrorKind::InvalidInput`]); nothing is ever followed. The root itself is the caller's
//! choice and is opened as given.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{DIR_MODE, FILE_MODE};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What an entry that is neither a plain file nor a folder is, for messages.
fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a folder",
        FileType::RegularFile => "a file",
        FileType::Unknown => "of an unknown kind",
    }
}

/// The error for `path`, found to be `kind` where a plain file or folder was expected.
pub fn not_plain(path: &Path, kind: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {kind}: ClearFrame writes plain files and folders only and follows no link \
             inside its folders (remove it, or choose another folder)",
            path.display()
        ),
    )
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A key's components: `a/b/c.jpg` -> folders `a`, `b` and the name `c.jpg`. Keys are checked
/// by the store (no `.`, `..` or empty components); this only refuses what would escape anyway.
fn split(rel: &str) -> io::Result<(Vec<&str>, &str)> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{rel:?} is not a relative path of plain components"),
        ));
    }
    let (name, dirs) = parts.split_last().expect("split gives one part at least");
    Ok((dirs.to_vec(), name))
}

/// A root folder, and the folders and files beneath it.
#[derive(Debug, Clone)]
pub struct Beneath {
    root: PathBuf,
    create_root: bool,
}

impl Beneath {
    /// Below `root`, which a first write creates.
    pub fn new(root: impl Into<PathBuf>) -> Beneath {
        Beneath {
            root: root.into(),
            create_root: true,
        }
    }

    /// Below `root`, which must exist: a write after it was removed (a staging folder removed
    /// on a signal while a pipeline thread still writes) fails instead of making it again.
    pub fn existing(root: impl Into<PathBuf>) -> Beneath {
        Beneath {
            root: root.into(),
            create_root: false,
        }
    }

    fn open_root(&self, create: bool) -> io::Result<Option<OwnedFd>> {
        if create && self.create_root {
            super::create_dir_all(&self.root)?;
        }
        match rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) if !create || !self.create_root => {
                if create {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} no longer exists", self.root.display()),
                    ));
                }
                Ok(None)
            }
            Err(e) => Err(io::Error::new(
                errno(e).kind(),
                format!("{}: {}", self.root.display(), errno(e)),
            )),
        }
    }

    /// Opens (and with `create`, makes) the folder `dirs` below the root, one component at a
    /// time without following links; `None` when it does not exist and `create` is false.
    fn open_dirs(&self, dirs: &[&str], create: bool) -> io::Result<Option<OwnedFd>> {
        let Some(mut fd) = self.open_root(create)? else {
            return Ok(None);
        };
        let mut at = self.root.clone();
        for d in dirs {
            at.push(d);
            fd = match self.open_dir_at(&fd, d, &at, create)? {
                Some(next) => next,
                None => return Ok(None),
            };
        }
        Ok(Some(fd))
    }

    fn open_dir_at(
        &self,
        parent: &OwnedFd,
        name: &str,
        path: &Path,
        create: bool,
    ) -> io::Result<Option<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut made = false;
        loop {
            match rustix::fs::openat(parent, name, flags, Mode::empty()) {
                Ok(fd) => {
                    if made {
                        // mkdirat's mode passes through the umask: set it exactly.
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIR_MODE)).map_err(errno)?;
                    }
                    return Ok(Some(fd));
                }
                Err(rustix::io::Errno::NOENT) if create && !made => {
                    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) => made = true,
                        // Made meanwhile by another writer: open it like any folder.
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(with_path(path, errno(e))),
                    }
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| with_path(path, errno(e)))?;
                    return match FileType::from_raw_mode(st.st_mode) {
                        // Nothing lies below a plain file; to make a folder there is an error.
                        FileType::RegularFile if !create => Ok(None),
                        FileType::RegularFile => Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a folder", path.display()),
                        )),
                        other => Err(not_plain(path, kind_name(other))),
                    };
                }
                Err(e) => return Err(with_path(path, errno(e))),
            }
        }
    }

    /// Why `name` in `parent` is not what was expected.
    fn describe(&self, parent: &OwnedFd, name: &str, path: &Path) -> io::Error {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => not_plain(path, kind_name(FileType::from_raw_mode(st.st_mode))),
            Err(e) => with_path(path, errno(e)),
        }
    }

    /// Writes `rel` through a temp file in its folder (made as needed), renamed into place;
    /// `durable` adds fsync of the file and the folder. Returns what `fill` wrote.
    pub fn write(
        &self,
        rel: &str,
        temp_prefix: &str,
        durable: bool,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> io::Result<u64> {
        self.write_as(rel, temp_prefix, durable, false, fill)
    }

    /// [`Beneath::write`], durably, but only when `rel` does not exist: the rename refuses to
    /// replace (`RENAME_NOREPLACE`), so of two writers one gets `AlreadyExists`.
    pub fn write_new(
        &self,
        rel: &str,
        temp_prefix: &str,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> io::Result<u64> {
        self.write_as(rel, temp_prefix, true, true, fill)
    }

    fn write_as(
        &self,
        rel: &str,
        temp_prefix: &str,
        durable: bool,
        no_replace: bool,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> io::Result<u64> {
        let (dirs, name) = split(rel)?;
        let dir = self.open_dirs(&dirs, true)?.expect("created folders exist");
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // The writer's pid, pid namespace and boot: a later command on this machine removes
        // what a killed one left, never the files of a writer on another host sharing the folder.
        let temp = format!("{temp_prefix}{name}.{}.{n}", temp_owner());
        let path = self.root.join(rel);
        let fd = rustix::fs::openat(
            &dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| with_path(&path, errno(e)))?;
        let result = (|| {
            let mut file = File::from(fd);
            super::set_file_mode(&file)?;
            let written = fill(&mut file)?;
            if durable {
                file.sync_all()?;
            }
            drop(file);
            if no_replace {
                rustix::fs::renameat_with(
                    &dir,
                    temp.as_str(),
                    &dir,
                    name,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(errno)?;
            } else {
                rustix::fs::renameat(&dir, temp.as_str(), &dir, name).map_err(errno)?;
            }
            Ok(written)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
            return result.map_err(|e| with_path(&path, e));
        }
        if durable {
            rustix::fs::fsync(&dir).map_err(|e| with_path(&path, errno(e)))?;
        }
        result
    }

    /// Opens the plain file `rel` for reading; `None` when it (or a folder above it) does not
    /// exist. Anything else there is an error.
    pub fn open(&self, rel: &str) -> io::Result<Option<File>> {
        let (dirs, name) = split(rel)?;
        let Some(dir) = self.open_dirs(&dirs, false)? else {
            return Ok(None);
        };
        let path = self.root.join(rel);
        // Looked at before it is opened: opening a device can have effects of its own.
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => return Ok(None),
                other => return Err(not_plain(&path, kind_name(other))),
            },
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(with_path(&path, errno(e))),
        }
        // O_NONBLOCK: should a FIFO replace the file meanwhile, opening it must not wait for a
        // writer (it is refused below).
        let fd = match rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err(self.describe(&dir, name, &path)),
            Err(e) => return Err(with_path(&path, errno(e))),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| with_path(&path, errno(e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                // Back to blocking reads (a no-op for plain files, but honest).
                rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(errno)?;
                Ok(Some(File::from(fd)))
            }
            FileType::Directory => Ok(None),
            other => Err(not_plain(&path, kind_name(other))),
        }
    }

    /// Removes the file `rel` (a link there is removed, not followed); absent is fine.
    pub fn remove(&self, rel: &str) -> io::Result<()> {
        let (dirs, name) = split(rel)?;
        let Some(dir) = self.open_dirs(&dirs, false)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(with_path(&self.root.join(rel), errno(e))),
        }
    }

    /// Removes the folder `rel` and then its parents while they are empty, up to (not
    /// including) the root. A folder that is not empty, or not a folder, stops it.
    pub fn remove_empty_dirs(&self, rel: &str) {
        let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        while let Some(name) = parts.pop() {
            if name == "." || name == ".." {
                return;
            }
            let Ok(Some(dir)) = self.open_dirs(&parts, false) else {
                return;
            };
            if rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).is_err() {
                return;
            }
        }
    }

    /// Every plain file whose key starts with `prefix`, as `(key, size, mtime in ns)`, skipping
    /// names that start with `skip`. A link or special file where keys of `prefix` could be is
    /// an error, as is a name that is not UTF-8: a listing that cannot see everything there
    /// must not pass for complete.
    pub fn list(&self, prefix: &str, skip: &str) -> io::Result<Vec<(String, u64, u128)>> {
        // Start from the deepest folder the prefix names completely.
        let start: Vec<&str> = match prefix.rfind('/') {
            Some(i) => prefix[..i].split('/').collect(),
            None => Vec::new(),
        };
        if start
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{prefix:?} is not a prefix of plain components"),
            ));
        }
        let Some(dir) = self.open_dirs(&start, false)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        self.walk(dir, start.join("/"), prefix, skip, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn walk(
        &self,
        dir: OwnedFd,
        key: String,
        prefix: &str,
        skip: &str,
        out: &mut Vec<(String, u64, u128)>,
    ) -> io::Result<()> {
        let at = if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&key)
        };
        let entries =
            rustix::fs::Dir::read_from(dir.as_fd()).map_err(|e| with_path(&at, errno(e)))?;
        for entry in entries {
            let entry = entry.map_err(|e| with_path(&at, errno(e)))?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(raw) else {
                return Err(not_plain(
                    &at.join(OsStr::from_bytes(raw)),
                    "a name that is not UTF-8",
                ));
            };
            if name.starts_with(skip) {
                continue;
            }
            let child = if key.is_empty() {
                name.to_owned()
            } else {
                format!("{key}/{name}")
            };
            let as_dir = format!("{child}/");
            let relevant = child.starts_with(prefix) || prefix.starts_with(&as_dir);
            if !relevant {
                continue;
            }
            let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| with_path(&at.join(name), errno(e)))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let Some(sub) = self.open_dir_at(&dir, name, &at.join(name), false)? else {
                        continue; // removed meanwhile
                    };
                    self.walk(sub, child, prefix, skip, out)?;
                }
                FileType::RegularFile if child.starts_with(prefix) => {
                    let mtime =
                        i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
                    out.push((child, st.st_size as u64, mtime.max(0) as u128));
                }
                FileType::RegularFile => {}
                other => return Err(not_plain(&at.join(name), kind_name(other))),
            }
        }
        Ok(())
    }
}

impl Beneath {
    /// Removes the temporary files (`<temp_prefix><name>.<pid>-<pidns>.<n>`) that a ClearFrame
    /// process killed mid-write left anywhere below the root: those of this pid namespace whose
    /// process is gone. A live writer's files are left alone. Returns how many were removed.
    pub fn sweep_temp(&self, temp_prefix: &str) -> io::Result<usize> {
        let Some(dir) = self.open_dirs(&[], false)? else {
            return Ok(0);
        };
        let mut removed = 0;
        self.sweep_in(dir, self.root.clone(), temp_prefix, &mut removed)?;
        Ok(removed)
    }

    fn sweep_in(
        &self,
        dir: OwnedFd,
        at: PathBuf,
        temp_prefix: &str,
        removed: &mut usize,
    ) -> io::Result<()> {
        let entries =
            rustix::fs::Dir::read_from(dir.as_fd()).map_err(|e| with_path(&at, errno(e)))?;
        for entry in entries {
            let entry = entry.map_err(|e| with_path(&at, errno(e)))?;
            let Ok(name) = std::str::from_utf8(entry.file_name().to_bytes()) else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    if let Some(sub) = self.open_dir_at(&dir, name, &at.join(name), false)? {
                        self.sweep_in(sub, at.join(name), temp_prefix, removed)?;
                    }
                }
                FileType::RegularFile
                    if name.starts_with(temp_prefix)
                        && temp_owner_gone(name)
                        && rustix::fs::unlinkat(&dir, name, AtFlags::empty()).is_ok() =>
                {
                    tracing::info!(file = %at.join(name).display(), "removed a temporary file of a ClearFrame process that was killed");
                    *removed += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The owner part of this process's temporary file names: `<pid>-<pidns>-<boot>`.
pub(crate) fn temp_owner() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        crate::staging::pid_namespace(),
        boot_id()
    )
}

/// This machine's boot, as 16 hex digits of `/proc/sys/kernel/random/boot_id` (`0` when it
/// cannot be read: then no file is ever taken for this machine's).
fn boot_id() -> &'static str {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or_else(
            |_| "0".to_owned(),
            |s| s.trim().replace('-', "").chars().take(16).collect(),
        )
    })
}

/// Whether a temporary file's writer (`….<pid>-<pidns>-<boot>.<n>`) was a process of this
/// machine's boot and pid namespace that no longer exists.
fn temp_owner_gone(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let (Some(_n), Some(owner)) = (parts.next(), parts.next()) else {
        return false;
    };
    let mut fields = owner.splitn(3, '-');
    let (Some(pid), Some(ns), Some(boot)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    let (Ok(pid), Ok(ns)) = (pid.parse::<u32>(), ns.parse::<u64>()) else {
        return false;
    };
    boot != "0"
        && boot == boot_id()
        && ns == crate::staging::pid_namespace()
        && pid != std::process::id()
        && !crate::staging::process_alive(pid)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn temporary_files_of_killed_writers_are_swept_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        std::fs::create_dir_all(root.join("frames/v")).unwrap();
        let ns = crate::staging::pid_namespace();
        let boot = boot_id();
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (gone, kept, other_ns) = (
            format!("frames/v/.t.000001.jpg.{dead}-{ns}-{boot}.0"),
            format!("frames/v/.t.000002.jpg.{}-{ns}-{boot}.0", live.id()),
            format!(".t.dataset.json.{dead}-{}-{boot}.3", ns + 1),
        );
        let elsewhere = format!("frames/v/.t.000004.jpg.{dead}-{ns}-0123456789abcdef.0");
        std::fs::write(root.join(&elsewhere), b"another host's").unwrap();
        for f in [&gone, &kept, &other_ns] {
            std::fs::write(root.join(f), b"half").unwrap();
        }
        std::fs::write(root.join("frames/v/000003.jpg"), b"a frame").unwrap();
        assert_eq!(Beneath::new(&root).sweep_temp(".t.").unwrap(), 1);
        live.kill().unwrap();
        live.wait().unwrap();
        assert!(!root.join(&gone).exists());
        assert!(root.join(&kept).exists(), "a live writer's file is kept");
        assert!(
            root.join(&other_ns).exists(),
            "another pid namespace's file is kept"
        );
        assert!(root.join("frames/v/000003.jpg").exists());
        assert!(
            root.join(&elsewhere).exists(),
            "another machine's file is kept"
        );
    }

    #[test]
    fn links_inside_the_root_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, victim) = (tmp.path().join("out"), tmp.path().join("victim"));
        std::fs::create_dir_all(root.join("frames")).unwrap();
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep.txt"), b"theirs").unwrap();
        symlink(&victim, root.join("frames/a")).unwrap();
        symlink(victim.join("keep.txt"), root.join("file-link")).unwrap();
        let b = Beneath::new(&root);
        let fill = |f: &mut File| io::Write::write_all(f, b"ours").map(|()| 4);
        let err = b.write("frames/a/0.jpg", ".t.", false, fill).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(
            b.open("frames/a/keep.txt")
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        assert!(
            b.open("file-link")
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        let err = b.list("", ".t.").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Out of the prefix's way, a link is not looked at.
        assert!(b.list("annotations/", ".t.").unwrap().is_empty());
        b.remove("frames/a/keep.txt").unwrap_err();
        b.remove_empty_dirs("frames/a");
        assert_eq!(std::fs::read(victim.join("keep.txt")).unwrap(), b"theirs");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
        // A FIFO is refused without waiting for a writer.
        let fifo = root.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(b.open("fifo").unwrap_err().to_string().contains("a FIFO"));
    }

    #[test]
    fn files_are_written_read_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let b = Beneath::new(tmp.path().join("out"));
        let fill = |f: &mut File| io::Write::write_all(f, b"ours").map(|()| 4);
        assert_eq!(b.write("a/b/c.txt", ".t.", true, fill).unwrap(), 4);
        let mut s = String::new();
        io::Read::read_to_string(&mut b.open("a/b/c.txt").unwrap().unwrap(), &mut s).unwrap();
        assert_eq!(s, "ours");
        assert!(b.open("a/b/none").unwrap().is_none());
        assert!(b.open("x/y").unwrap().is_none());
        let keys: Vec<String> = b
            .list("a/", ".t.")
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(keys, ["a/b/c.txt"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("out/a/b")), DIR_MODE);
        assert_eq!(mode(&tmp.path().join("out/a/b/c.txt")), FILE_MODE);
        b.remove("a/b/c.txt").unwrap();
        b.remove("a/b/c.txt").unwrap();
        b.remove_empty_dirs("a/b");
        assert_eq!(
            std::fs::read_dir(tmp.path().join("out")).unwrap().count(),
            0
        );
    }
}
