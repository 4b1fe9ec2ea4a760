//! Deleting old finished jobs and their journals, a bounded chunk per transaction, and giving
//! the space back.
//!
//! Each chunk is a write of its own, so the spawns and completions queued meanwhile commit
//! between two chunks: a prune of a million jobs never stalls the queue for its whole length.

use rusqlite::Connection;

use super::execute;
use crate::Result;

/// Jobs deleted per transaction: a few milliseconds of work.
pub(crate) const PRUNE_CHUNK: u32 = 500;

/// Pages given back per transaction of an incremental vacuum (4 MiB of 4 KiB pages).
pub(crate) const VACUUM_PAGES: u32 = 1024;

/// Deletes up to `limit` of the jobs that ended before `before`, oldest first, with their
/// steps; returns how many jobs.
pub(super) fn prune_chunk(conn: &Connection, before: i64, limit: u32) -> Result<u64> {
    // The same rows four times (their steps, their budgets, their counts, the rows): the retention index
    // orders them, and nothing else writes between. Finished jobs count under no key.
    const OLDEST: &str = "FROM llmjobs_jobs WHERE completed_at <= ?1 \
         AND status <> 'pending' AND status <> 'running' ORDER BY completed_at, rowid LIMIT ?2";
    execute(
        conn,
        &format!("DELETE FROM llmjobs_steps WHERE job_id IN (SELECT id {OLDEST})"),
        rusqlite::params![before, limit],
    )?;
    execute(
        conn,
        &format!("DELETE FROM llmjobs_job_budgets WHERE job_id IN (SELECT id {OLDEST})"),
        rusqlite::params![before, limit],
    )?;
    execute(
        conn,
        &format!(
            "UPDATE llmjobs_counts SET n = llmjobs_counts.n - gone.gone FROM \
             (SELECT name, status, count(*) AS gone FROM \
              (SELECT name, status {OLDEST}) GROUP BY name, status) AS gone \
             WHERE llmjobs_counts.name = gone.name AND llmjobs_counts.status = gone.status"
        ),
        rusqlite::params![before, limit],
    )?;
    Ok(execute(
        conn,
        &format!("DELETE FROM llmjobs_jobs WHERE rowid IN (SELECT rowid {OLDEST})"),
        rusqlite::params![before, limit],
    )? as u64)
}

/// Moves the write-ahead log into the database and truncates it, so that what a prune deleted
/// does not linger in the log file. Runs outside any transaction.
pub(super) fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Gives up to `pages` free pages back to the file system (databases created with incremental
/// auto-vacuum); returns how many free pages remain. Runs outside any transaction.
pub(super) fn vacuum(conn: &Connection, pages: u32) -> Result<u64> {
    let incremental: i64 = conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
    if incremental != 2 {
        return Ok(0);
    }
    conn.execute_batch(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    Ok(free.unsigned_abs())
}
