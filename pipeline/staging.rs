//! Private staging folders: where `run` and `emit` stage a dataset bound for S3, where `run`
//! keeps its scratch selection, and where `select` stages a selection bound for S3.
//!
//! They hold redacted frames and `selection.jsonl`, so:
//! - they are owner-only (`0700`), in the system's temporary folder (`$TMPDIR`);
//! - they are removed when dropped, and on SIGINT, SIGTERM and SIGHUP ([`install_signal_cleanup`]
//!   blocks those signals in every thread and handles them on one of its own, which removes every
//!   live staging folder and exits with `128 + signal`);
//! - a SIGKILL cannot be handled, so each folder's name carries the owning process id and its
//!   pid namespace (`clearframe-<kind>-<pid>-<pidns>-<random>`): [`sweep`], run at the start of
//!   every command, removes the folders of this user and pid namespace whose process is gone
//!   (a process in another namespace, say a container sharing `/tmp`, is never taken for dead).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Mode of a staging folder: owner only.
pub const STAGING_MODE: u32 = 0o700;

/// Names of staging folders start with this.
const NAME_PREFIX: &str = "clearframe-";

fn live() -> &'static Mutex<BTreeSet<PathBuf>> {
    static LIVE: OnceLock<Mutex<BTreeSet<PathBuf>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// A private staging folder, removed on drop (and on a handled signal).
#[derive(Debug)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
}

impl Staging {
    /// Creates `$TMPDIR/clearframe-<kind>-<pid>-<pidns>-<random>` with mode `0700`. `kind` is a
    /// short lowercase word (`out`, `scratch`, `select`).
    pub fn create(kind: &str) -> io::Result<Staging> {
        use std::os::unix::fs::PermissionsExt;
        debug_assert!(kind.bytes().all(|b| b.is_ascii_lowercase()));
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "{NAME_PREFIX}{kind}-{}-{}-",
                std::process::id(),
                pid_namespace()
            ))
            .permissions(std::fs::Permissions::from_mode(STAGING_MODE))
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(STAGING_MODE))?;
        live()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(dir.path().to_path_buf());
        Ok(Staging { dir: Some(dir) })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            live()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(dir.path());
            if let Err(e) = dir.close() {
                tracing::warn!(error = %e, "could not remove a staging folder");
            }
        }
    }
}

/// Removes every live staging folder (the signal handler's work).
fn remove_live() {
    let dirs: Vec<PathBuf> = live()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    for dir in dirs {
        // Renamed first, so that no writer reaches it by its path again (the emitter's writes
        // never make a missing root); then removed until it is gone, as a pipeline thread that
        // already holds one of its folders may still be writing into it: once a folder itself
        // is removed, nothing more can be made in it.
        let mut doomed = dir.clone().into_os_string();
        doomed.push(".removing");
        let doomed = PathBuf::from(doomed);
        let target = if std::fs::rename(&dir, &doomed).is_ok() {
            doomed
        } else {
            dir
        };
        for _ in 0..100 {
            match std::fs::remove_dir_all(&target) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started after it)
/// and handles them on a thread of its own: it removes the live staging folders and exits with
/// `128 + signal`. Call it first thing in `main`, before any other thread starts. Child
/// processes (ffmpeg) start with an empty signal mask, as `std::process` resets it.
pub fn install_signal_cleanup() {
    // SAFETY: plain libc calls on a zeroed, then initialised, sigset_t; no handler runs in signal
    // context (the signals are taken synchronously with sigwait on an ordinary thread).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                loop {
                    let mut sig: libc::c_int = 0;
                    if libc::sigwait(&set, &mut sig) == 0 {
                        remove_live();
                        eprintln!("clearframe: stopped by signal {sig}; staging folders removed");
                        std::process::exit(128 + sig);
                    }
                }
            });
        if spawned.is_err() {
            // No handler thread: let the signals act as usual again.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// The inode of this process's pid namespace (0 when it cannot be read).
pub(crate) fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

/// Parses `clearframe-<kind>-<pid>-<pidns>-<random>` into the pid and the pid namespace.
fn owner(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.splitn(4, '-');
    let kind = parts.next()?;
    let pid = parts.next()?;
    let ns = parts.next()?;
    parts.next()?;
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some((pid.parse().ok()?, ns.parse().ok()?))
}

pub(crate) fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the staging folders in `$TMPDIR` that a killed ClearFrame process left: those of
/// this user whose owning process no longer exists. Returns how many were removed.
pub fn sweep() -> usize {
    sweep_in(&std::env::temp_dir())
}

fn sweep_in(tmp: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let ns = pid_namespace();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, owner_ns)) = name.to_str().and_then(owner) else {
            continue;
        };
        if owner_ns != ns {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || pid == std::process::id() || process_alive(pid) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(folder = %entry.path().display(), pid, "removed the staging folder of a ClearFrame process that was killed");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(folder = %entry.path().display(), error = %e, "could not remove a stale staging folder");
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner() {
        assert_eq!(
            owner("clearframe-out-123-4026531836-AbC9"),
            Some((123, 4026531836))
        );
        assert_eq!(owner("clearframe-out-123-AbC9"), None);
        assert_eq!(owner("clearframe-Out-1-2-x"), None);
        assert_eq!(owner("other-out-1-2-x"), None);
    }

    #[test]
    fn staging_is_private_and_dead_owners_are_swept() {
        use std::os::unix::fs::PermissionsExt;
        let s = Staging::create("test").unwrap();
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let path = s.path().to_path_buf();
        drop(s);
        assert!(!path.exists());

        let tmp = tempfile::tempdir().unwrap();
        // No pid is that high (pid_max is at most 2^22); our own pid is alive.
        let ns = pid_namespace();
        let dead = tmp.path().join(format!("clearframe-out-999999999-{ns}-x"));
        let mine = tmp
            .path()
            .join(format!("clearframe-out-{}-{ns}-y", std::process::id()));
        let elsewhere = tmp
            .path()
            .join(format!("clearframe-out-999999999-{}-z", ns + 1));
        let other = tmp.path().join("unrelated-1-2");
        for d in [&dead, &mine, &elsewhere, &other] {
            std::fs::create_dir_all(d.join("frames")).unwrap();
        }
        assert_eq!(sweep_in(tmp.path()), 1);
        assert!(!dead.exists() && mine.exists() && elsewhere.exists() && other.exists());
    }
}
