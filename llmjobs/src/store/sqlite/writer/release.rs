//! Leases: renewing an owner's, and handing running jobs back to the queue when their owner is
//! dead or their lease has expired.

use rusqlite::Connection;

use super::execute;
use crate::Result;

/// Extends the lease of every job `owner` runs; returns how many it renewed.
pub(super) fn heartbeat(conn: &Connection, owner: &str, lease_until: i64) -> Result<u64> {
    Ok(execute(
        conn,
        "UPDATE llmjobs_jobs SET lease_until = ? WHERE status = 'running' AND owner = ?",
        rusqlite::params![lease_until, owner],
    )? as u64)
}

/// Makes every job `owner` runs pending again; returns how many.
pub(super) fn release_owner(conn: &Connection, owner: &str) -> Result<u64> {
    Ok(execute(
        conn,
        "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
         WHERE status = 'running' AND owner = ?",
        [owner],
    )? as u64)
}

/// Makes every running job whose lease ended before `now` pending again; returns how many.
pub(super) fn release_expired(conn: &Connection, now: i64) -> Result<u64> {
    Ok(execute(
        conn,
        "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
         WHERE status = 'running' AND lease_until < ?",
        [now],
    )? as u64)
}
