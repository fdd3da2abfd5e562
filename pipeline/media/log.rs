//! ffmpeg's and ffprobe's stderr: the error lines kept for a record (cleaned, bounded, no
//! run-specific addresses), and what the decoder's stderr thread shares with it.

use super::*;

/// What the thread that drains ffmpeg's stderr shares with the decoder: ffmpeg's error lines,
/// whether it logged one, and the first sign that the frames are not the stream that was probed.
#[derive(Clone, Default)]
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    error: Arc<std::sync::atomic::AtomicBool>,
    inconsistent: Arc<Mutex<Option<String>>>,
}

impl Tail {
    /// Records that ffmpeg logged an error (it may still exit 0, e.g. on a truncated mp4).
    pub(super) fn mark_error(&self) {
        self.error.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    pub(super) fn had_error(&self) -> bool {
        self.error.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Records why the frames cannot be trusted to be the probed stream (the first reason
    /// stays): ffmpeg configured this run's filters a second time (it does so when a frame's
    /// side data, a display matrix, changes, and drops the frames its `fps` filter held), or a
    /// decoded frame has another size or pixel aspect than the probe found.
    pub(super) fn mark_inconsistent(&self, detail: String) {
        let mut slot = self
            .inconsistent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(detail);
    }
    pub(super) fn inconsistency(&self) -> Option<String> {
        self.inconsistent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    pub(crate) fn push(&self, line: String) {
        let mut q = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.back() == Some(&line) {
            return;
        }
        if q.len() == ERROR_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    pub(crate) fn text(&self) -> String {
        let q = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.is_empty() {
            return "  (no error message)".to_owned();
        }
        q.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The level of an ffmpeg log line printed with `-loglevel level+…`: `[ctx @ 0x..] [error] msg`
/// or `[error] msg`.
pub(super) fn level_of(line: &str) -> Option<&str> {
    let rest = if line.starts_with("[") && !line.starts_with("[info]") {
        // `[ctx @ 0x..] [level] ...`, or a bare `[level] ...`.
        match line.find("] [") {
            Some(i) if line[..i].contains(" @ ") => &line[i + 2..],
            _ => line,
        }
    } else {
        line
    };
    let end = rest.strip_prefix('[')?.find(']')?;
    Some(&rest[1..=end])
}

/// An error-level message of ffmpeg or ffprobe, made fit for a record: without the level,
/// without run-specific context addresses, with `path` (the descriptor) replaced by `name`,
/// bounded in length, printable ASCII only.
pub(super) fn clean_error_line(line: &str, path: &Path, name: &str) -> String {
    let mut s = strip_addresses(line);
    for lvl in ["[error] ", "[fatal] ", "[panic] "] {
        s = s.replacen(lvl, "", 1);
    }
    let p = path.display().to_string();
    if !p.is_empty() {
        s = s.replace(&p, name);
    }
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(ERROR_LINE_CHARS)
        .collect();
    if s.chars().count() > ERROR_LINE_CHARS {
        out.push('…');
    }
    out.trim().to_owned()
}

/// The error-level lines of a whole stderr text (ffprobe's at `-v error`), cleaned.
pub(super) fn error_lines(stderr: &str, path: &Path, name: &str) -> String {
    let tail = Tail::default();
    for line in stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        tail.push(clean_error_line(line, path, name));
    }
    tail.text()
}

/// A log line without the `@ 0x55d0c0ffee00` context addresses ffmpeg prints (`[mov,mp4 @ 0x..]`):
/// they differ from run to run and would make error messages, and records holding them,
/// irreproducible.
pub(crate) fn strip_addresses(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(" @ 0x") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " @ 0x".len()..];
        let hex = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        rest = &after[hex..];
    }
    out.push_str(rest);
    out
}
