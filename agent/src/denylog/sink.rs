//! The deny log file: buffered JSON-line appends, 0640, rotated by size
//! (one old file, `.1`, kept); write failures are counted and reported
//! once, and the denies still reach the journal.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use serde_json::{Map, Value};
use tracing::{info, warn};

use super::DenyStats;

/// The deny log file: buffered appends, rotated by size.
pub(super) struct Sink {
    path: PathBuf,
    max_bytes: u64,
    file: Option<io::BufWriter<File>>,
    size: u64,
    stats: Arc<DenyStats>,
    failing: bool,
}

impl Sink {
    pub(super) fn new(path: PathBuf, max_bytes: u64, stats: Arc<DenyStats>) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
            size: 0,
            stats,
            failing: false,
        }
    }

    fn open(&mut self) -> io::Result<&mut io::BufWriter<File>> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            // A new deny log is 0640, like the audit log: it names users,
            // cgroups and peers.
            use std::os::unix::fs::OpenOptionsExt;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(io::BufWriter::new(f));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    pub(super) fn write(&mut self, rec: Map<String, Value>) {
        let mut line = Value::Object(rec).to_string();
        line.push('\n');
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate();
        }
        let result = self.open().and_then(|f| f.write_all(line.as_bytes()));
        match result {
            Ok(()) => {
                self.size += line.len() as u64;
                if self.failing {
                    self.failing = false;
                    info!(path = %self.path.display(), "deny log writable again");
                }
            }
            Err(e) => self.failed(e),
        }
    }

    pub(super) fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.flush() {
                self.failed(e);
            }
        }
    }

    fn failed(&mut self, e: io::Error) {
        self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
        // A buffered writer that failed may hold half a line: start over.
        self.file = None;
        if !self.failing {
            self.failing = true;
            warn!(path = %self.path.display(), error = %e, "cannot write the deny log; denies still reach the journal");
        }
    }

    fn rotate(&mut self) {
        self.flush();
        self.file = None;
        let old = rotated(&self.path);
        if let Err(e) = fs::rename(&self.path, &old) {
            warn!(path = %self.path.display(), error = %e, "deny log rotation failed");
        }
        self.size = 0;
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}
