//! Owner liveness on one machine, by OS file locks.
//!
//! Each worker creates `<database>.llmjobs/<owner>.lock` and holds an exclusive lock on it for as
//! long as it lives. The OS drops the lock when the process dies, however it dies (SIGKILL,
//! panic, power loss), so another worker that manages to lock the file knows at once that the
//! owner is gone and can hand its running jobs back, without waiting for the owner's lease to
//! expire. A worker whose lock file is missing (it runs on another machine, or the file was
//! cleaned away) is judged by its lease instead.
//!
//! Limits: this relies on `flock`-style locks being honoured by every process that opens the
//! database, which holds on a local filesystem. On network filesystems (NFS, SMB) locks may be
//! unreliable, and SQLite itself is unsafe there; use PostgreSQL across machines.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The folder beside the database that holds the lock files.
pub(crate) fn lock_dir(database: &Path) -> PathBuf {
    let mut name = database
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".llmjobs");
    database.with_file_name(name)
}

/// The lock file `name` beside `database`.
pub(crate) fn lock_path(database: &Path, name: &str) -> PathBuf {
    lock_dir(database).join(format!("{name}.lock"))
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

fn lock_error(path: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(
        e.kind(),
        format!("cannot lock {}: {e}", path.display()),
    ))
}

/// Waits for an exclusive lock on `path`; the lock is held until the file is dropped.
pub(crate) async fn lock_exclusive(path: &Path) -> Result<File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = open_lock_file(&path).map_err(|e| lock_error(&path, e))?;
        file.lock().map_err(|e| lock_error(&path, e))?;
        Ok(file)
    })
    .await
    .map_err(|e| Error::Io(io::Error::other(e)))?
}

/// Whether `owner` is a name this module could have made (and so is safe in a path).
fn is_owner_name(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 128
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The liveness lock of this worker.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    path: PathBuf,
    // Held for the lock; dropping the file releases it.
    _file: File,
}

impl OwnerLock {
    /// Creates and locks the lock file of `owner`.
    pub(crate) fn acquire(database: &Path, owner: &str) -> Result<Self> {
        debug_assert!(is_owner_name(owner));
        let path = lock_path(database, owner);
        let file = open_lock_file(&path).map_err(|e| lock_error(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(OwnerLock { path, _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Io(io::Error::other(format!(
                "owner lock {} is held by another process",
                path.display()
            )))),
            Err(TryLockError::Error(e)) => Err(lock_error(&path, e)),
        }
    }

    /// Releases the lock and removes the file: for an owner that handed all its jobs back.
    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the lock file says about another owner.
#[derive(Debug)]
pub(crate) enum Liveness {
    /// Its process holds its lock.
    Alive,
    /// Its lock file exists and nobody holds it: the owner died. The lock is now held by the
    /// caller until this value is dropped, so only one worker at a time recovers it.
    Dead(DeadOwner),
    /// No lock file: the owner lives elsewhere, or is long gone. Judge it by its lease.
    Unknown,
}

/// The lock of a dead owner, held while its jobs are handed back.
#[derive(Debug)]
pub(crate) struct DeadOwner {
    path: PathBuf,
    _file: File,
}

impl DeadOwner {
    /// Removes the dead owner's lock file once its jobs are handed back.
    pub(crate) fn forget(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks whether `owner`, which ran jobs in `database`, is still alive on this machine.
pub(crate) fn probe(database: &Path, owner: &str) -> Liveness {
    if !is_owner_name(owner) {
        return Liveness::Unknown;
    }
    let path = lock_path(database, owner);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(_) => return Liveness::Unknown,
    };
    match file.try_lock() {
        Ok(()) => Liveness::Dead(DeadOwner { path, _file: file }),
        Err(TryLockError::WouldBlock) => Liveness::Alive,
        Err(TryLockError::Error(e)) => {
            tracing::debug!(error = %e, path = %path.display(), "cannot probe owner lock");
            Liveness::Unknown
        }
    }
}

/// A new owner name: process id and a random part, safe to use in a file name.
pub(crate) fn new_owner_name() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("pid{}-{}", std::process::id(), &uuid[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_alive_and_a_released_one_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let owner = new_owner_name();
        let lock = OwnerLock::acquire(&db, &owner).unwrap();
        assert!(matches!(probe(&db, &owner), Liveness::Alive));
        drop(lock);
        match probe(&db, &owner) {
            Liveness::Dead(dead) => dead.forget(),
            other => panic!("expected dead, got {other:?}"),
        }
        assert!(matches!(probe(&db, &owner), Liveness::Unknown));
    }

    #[test]
    fn owner_names_from_the_database_never_escape_the_lock_folder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        assert!(matches!(probe(&db, "../../etc/passwd"), Liveness::Unknown));
        assert!(is_owner_name(&new_owner_name()));
    }
}
