//! Support code shared by the integration tests and examples of llmjobs: temporary databases,
//! and a worker process that tests can start and kill.

pub mod acceptance;
pub mod http;
pub mod logs;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A database file in a fresh temporary folder, removed when dropped.
pub struct TempDb {
    dir: tempfile::TempDir,
}

impl TempDb {
    /// A new, empty folder for a database.
    pub fn new() -> TempDb {
        TempDb {
            dir: tempfile::tempdir().expect("create a temporary folder"),
        }
    }

    /// The database file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }

    /// The `sqlite://` URL of the database.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }

    /// A runtime on the database that runs no jobs: it spawns, watches and cancels them, as
    /// a web front end or the CLI would.
    pub async fn watcher(&self) -> llmjobs::Jobs {
        llmjobs::Jobs::builder()
            .url(self.url())
            .run_jobs(false)
            .open()
            .await
            .expect("open the database")
    }

    /// A file in the same folder (for logs the jobs write).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TempDb {
    fn default() -> Self {
        TempDb::new()
    }
}

/// The lines of a log file, or none if it does not exist yet.
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Appends one line to a log file, in one `write` so that lines from concurrent writers never
/// interleave.
pub fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("append to the log");
    file.sync_data().expect("sync the log");
}

/// Polls `condition` every 10 ms until it holds, or panics after `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process running the `llmjobs-test-worker` binary; killed when dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts the worker binary at `exe` with `args`.
    pub fn start(exe: &str, args: &[&str]) -> WorkerProcess {
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the worker process");
        WorkerProcess { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill the worker");
        self.child.wait().expect("reap the worker");
    }

    /// Waits for the process to exit by itself, at most `timeout`; its exit status.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("worker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Microseconds since the Unix epoch, for logs compared across processes.
pub fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros()
}

/// The most intervals open at once, from `start T` and `end T` lines (T in microseconds).
pub fn peak_overlap(lines: &[String]) -> usize {
    let mut events: Vec<(u128, i32)> = lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let delta = match parts.next()? {
                "start" => 1,
                "end" => -1,
                _ => return None,
            };
            Some((parts.next()?.parse().ok()?, delta))
        })
        .collect();
    // At equal times, ends before starts: touching intervals do not overlap.
    events.sort();
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        open += delta;
        peak = peak.max(open);
    }
    peak as usize
}
