//! Faults injected by the tests, in debug builds only: `CLEARFRAME_FAULT=<point>=<n>` makes the
//! named point panic at its `n`th item, so that a test can show what a real panic in a pipeline
//! thread does (the clip fails; nothing is reported done). Release builds compile this to
//! nothing and read no variable.

/// Whether `CLEARFRAME_FAULT` is `<name>=<n>` (debug builds only: release builds never read
/// the variable).
#[inline]
fn armed(name: &str, n: u64) -> bool {
    cfg!(debug_assertions)
        && std::env::var("CLEARFRAME_FAULT")
            .is_ok_and(|spec| spec.split_once('=') == Some((name, n.to_string().as_str())))
}

/// Panics when `CLEARFRAME_FAULT` is `<point>=<n>` (debug builds only).
#[inline]
pub(crate) fn point(name: &str, n: u64) {
    if armed(name, n) {
        panic!("injected fault: {name} at {n}");
    }
}

/// Sends `signal` to process `pid` when `CLEARFRAME_FAULT` is `<point>=<n>` (debug builds only):
/// a real signal to a real child (ffmpeg), as the out-of-memory killer (SIGKILL) or an operator
/// (SIGTERM) would send it.
#[inline]
pub(crate) fn signal_point(name: &str, n: u64, pid: u32, signal: i32) {
    if armed(name, n)
        && let Ok(pid) = i32::try_from(pid)
    {
        // SAFETY: kill(2) with a pid of our own child; no memory is touched.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}
