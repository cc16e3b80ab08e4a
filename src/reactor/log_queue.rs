//! The log: `log` records become lines on a bounded lock-free queue at the moment they are
//! logged (timestamp taken then, microseconds), and the event loop writes them out when it has
//! nothing else to do (or the queue is half full) and before exit. A full queue counts the
//! line as dropped and never blocks. Line buffers are recycled through a second queue so a
//! busy trace does not allocate per line once warm.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Shared {
    lines: ArrayQueue<String>,
    spare: ArrayQueue<String>,
    dropped: AtomicU64,
}

struct QueueLogger {
    shared: Arc<Shared>,
}

/// The loop's end of the log: drains the queue to the log file (or stderr).
pub struct LogDrain {
    shared: Arc<Shared>,
    out: Output,
    reported_drops: u64,
}

enum Output {
    Stderr,
    File(File),
}

/// Install the queue logger as the process logger. Call once.
pub fn init(
    queue_size: usize,
    level: LevelFilter,
    file: Option<&Path>,
) -> Result<LogDrain, String> {
    let shared = Arc::new(Shared {
        lines: ArrayQueue::new(queue_size.max(16)),
        spare: ArrayQueue::new(queue_size.clamp(16, 4096)),
        dropped: AtomicU64::new(0),
    });
    let out = open_output(file)?;
    log::set_boxed_logger(Box::new(QueueLogger {
        shared: shared.clone(),
    }))
    .map_err(|e| format!("logger: {e}"))?;
    log::set_max_level(level);
    Ok(LogDrain {
        shared,
        out,
        reported_drops: 0,
    })
}

fn open_output(file: Option<&Path>) -> Result<Output, String> {
    match file {
        None => Ok(Output::Stderr),
        Some(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(Output::File)
            .map_err(|e| format!("log_file {}: {e}", p.display())),
    }
}

impl Log for QueueLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Only pgmulti's own lines: mio's internal tracing is noise in a protocol trace.
        metadata.level() <= log::max_level() && metadata.target().starts_with("pgmulti")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = self.shared.spare.pop().unwrap_or_default();
        line.clear();
        write_timestamp(&mut line);
        let _ = write!(line, " {:<5} {}", level_name(record.level()), record.args());
        line.push('\n');
        if let Err(line) = self.shared.lines.push(line) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            let _ = self.shared.spare.push(line);
        }
    }

    fn flush(&self) {}
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

impl LogDrain {
    /// True when the loop should write now rather than wait for an idle moment.
    pub fn pressing(&self) -> bool {
        self.shared.lines.len() * 2 >= self.shared.lines.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.lines.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Write every queued line. Called by the loop when idle, when pressing, and at exit.
    pub fn drain(&mut self) {
        let dropped = self.dropped();
        if dropped > self.reported_drops {
            let mut note = String::new();
            write_timestamp(&mut note);
            let _ = writeln!(
                note,
                " WARN  log queue full: {} lines dropped",
                dropped - self.reported_drops
            );
            self.write(note.as_bytes());
            self.reported_drops = dropped;
        }
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(mut line) = self.shared.lines.pop() {
            batch.extend_from_slice(line.as_bytes());
            line.clear();
            let _ = self.shared.spare.push(line);
            if batch.len() >= 60 * 1024 {
                self.write(&batch);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.write(&batch);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let _ = match &mut self.out {
            Output::Stderr => std::io::stderr().write_all(bytes),
            Output::File(f) => f.write_all(bytes),
        };
    }

    /// Reopen the log file (after log rotation, or a changed `log_file` on reload).
    pub fn reopen(&mut self, file: Option<&Path>) -> Result<(), String> {
        self.drain();
        self.out = open_output(file)?;
        Ok(())
    }
}

/// `2026-11-21 05:56:09.123456 UTC`, read from the realtime clock now.
fn write_timestamp(out: &mut String) {
    let (secs, micros) = crate::timestamp::now();
    out.push_str(&crate::timestamp::format_utc(secs, micros));
    out.push_str(" UTC");
}
