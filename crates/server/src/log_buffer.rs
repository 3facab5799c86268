//! Log lines from the runtime's threads written to stderr in batches.
//!
//! At `info` the server logs a line per request and per delivery attempt. Written one
//! by one, each line is a `write` to stderr, and with stderr on a file, a file write
//! that also updates the file's times: about 6 % of the server's CPU at 200 events a
//! second, where the lines themselves cost little to format. A line logged on one of
//! the runtime's worker threads is kept here instead and written with the others
//! when that thread runs out of work (the runtime's park hook calls [`flush`]), when
//! [`LIMIT`] bytes have gathered, or at the next line once the oldest has waited
//! [`MAX_WAIT`]. A line from any other thread (start-up, shutdown, a blocking task)
//! is written at once, after whatever was kept, so lines keep their order.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Kept bytes that are written out without waiting for the thread to park.
const LIMIT: usize = 32 * 1024;

/// The longest a kept line waits while its thread stays busy.
const MAX_WAIT: Duration = Duration::from_millis(100);

thread_local! {
    static WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as a runtime worker, whose lines are kept until it parks:
/// the runtime's unpark hook, which only its workers run (a blocking task's thread
/// writes its lines at once).
pub fn mark_worker() {
    WORKER.with(|w| w.set(true));
}

/// Lines kept for `W`, with when the oldest of them came.
struct LineBuffer<W> {
    state: Mutex<State<W>>,
}

struct State<W> {
    sink: W,
    kept: Vec<u8>,
    since: Option<Instant>,
}

impl<W: Write> State<W> {
    fn write_kept(&mut self) {
        if !self.kept.is_empty() {
            // A log line that cannot be written has nowhere else to go.
            let _ = self.sink.write_all(&self.kept);
            let _ = self.sink.flush();
            self.kept.clear();
        }
        self.since = None;
    }
}

impl<W: Write> LineBuffer<W> {
    const fn new(sink: W) -> Self {
        Self {
            state: Mutex::new(State {
                sink,
                kept: Vec::new(),
                since: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one formatted line (or part of one): kept when `keep`, else written
    /// right after what was kept.
    fn line(&self, bytes: &[u8], keep: bool) {
        let mut state = self.state();
        let now = Instant::now();
        state.kept.extend_from_slice(bytes);
        let since = *state.since.get_or_insert(now);
        if !keep || state.kept.len() >= LIMIT || now.duration_since(since) >= MAX_WAIT {
            state.write_kept();
        }
    }

    /// Writes what was kept.
    fn flush(&self) {
        self.state().write_kept();
    }

    #[cfg(test)]
    fn with_sink<R>(&self, f: impl FnOnce(&W) -> R) -> R {
        f(&self.state().sink)
    }
}

/// The process's stderr, as a sink a `static` can hold.
struct StderrSink;

impl Write for StderrSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

static STDERR: LineBuffer<StderrSink> = LineBuffer::new(StderrSink);

/// Writes the kept lines to stderr: the runtime's park hook, and before exit.
pub fn flush() {
    STDERR.flush();
}

/// The log subscriber's writer: stderr through [`STDERR`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stderr;

/// One line being formatted; the subscriber writes each line in one call.
pub(crate) struct StderrLine;

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        STDERR.line(buf, WORKER.with(|w| w.get()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_lines_wait_for_the_flush_and_keep_their_order() {
        let buffer = LineBuffer::new(Vec::<u8>::new());
        buffer.line(b"one\n", true);
        buffer.line(b"two\n", true);
        assert!(buffer.with_sink(|s| s.is_empty()), "kept until the flush");
        buffer.flush();
        assert_eq!(buffer.with_sink(|s| s.clone()), b"one\ntwo\n");
        buffer.flush();
        assert_eq!(buffer.with_sink(|s| s.len()), 8, "nothing is written twice");
    }

    #[test]
    fn a_line_that_is_not_kept_goes_out_at_once_after_the_kept_ones() {
        let buffer = LineBuffer::new(Vec::<u8>::new());
        buffer.line(b"kept\n", true);
        buffer.line(b"now\n", false);
        assert_eq!(buffer.with_sink(|s| s.clone()), b"kept\nnow\n");
    }

    #[test]
    fn kept_lines_go_out_once_they_fill_the_limit_or_the_oldest_has_waited() {
        let buffer = LineBuffer::new(Vec::<u8>::new());
        let line = [b'x'; 1000];
        let mut lines = 0;
        while buffer.with_sink(|s| s.is_empty()) {
            buffer.line(&line, true);
            lines += 1;
            assert!(lines <= LIMIT / 1000 + 1, "never written");
        }
        assert_eq!(lines, LIMIT.div_ceil(1000));

        let buffer = LineBuffer::new(Vec::<u8>::new());
        buffer.line(b"old\n", true);
        std::thread::sleep(MAX_WAIT);
        buffer.line(b"new\n", true);
        assert_eq!(buffer.with_sink(|s| s.clone()), b"old\nnew\n");
    }

    #[test]
    fn only_marked_threads_keep_their_lines() {
        assert!(!WORKER.with(|w| w.get()));
        std::thread::spawn(|| {
            mark_worker();
            assert!(WORKER.with(|w| w.get()));
        })
        .join()
        .unwrap();
        assert!(!WORKER.with(|w| w.get()), "the mark is the thread's own");
    }
}
