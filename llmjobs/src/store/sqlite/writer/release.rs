//! Leases: renewing an owner's, and handing running jobs back to the queue when their owner
//! departs, dies or loses its lease.
//!
//! A job whose cancellation was requested ends `cancelled` instead of going back, whichever way
//! it is released. An attempt cut short by a dead owner counts (the poison-job guard): when it
//! was the job's last, the job ends `failed`, saying its attempts were interrupted, instead of
//! crash-looping every worker that picks it up.

use rusqlite::{Connection, Params};

use super::execute;
use super::tally::Tally;
use crate::status::JobState;
use crate::store::{MIN_ATTEMPTS_AGAINST_CRASHES, Release};
use crate::{Error, Result};

/// Extends the lease of every job `owner` runs; returns how many it renewed.
pub(super) fn heartbeat(conn: &Connection, owner: &str, lease_until: i64) -> Result<u64> {
    Ok(execute(
        conn,
        "UPDATE llmjobs_jobs SET lease_until = ? WHERE status = 'running' AND owner = ?",
        rusqlite::params![lease_until, owner],
    )? as u64)
}

/// A departing owner's jobs: the interrupted attempt is given back. Binds ?1 the owner, ?2 now.
const HAND_BACK_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE cancel_requested WHEN 0 THEN 'pending' ELSE 'cancelled' END, \
     attempts = CASE cancel_requested WHEN 0 THEN max(attempts - 1, 0) ELSE attempts END, \
     completed_at = CASE cancel_requested WHEN 0 THEN NULL ELSE ?2 END, \
     owner = CASE cancel_requested WHEN 0 THEN NULL ELSE owner END, \
     lease_until = NULL \
     WHERE status = 'running' AND owner = ?1 \
     RETURNING name, concurrency_key, status";

/// A dead owner's jobs whose lease ended before ?3 (NULL for an owner known dead: any lease).
/// Binds ?1 the owner, ?2 now, ?3 the lease bound, ?4 the fewest attempts a job may make. The
/// interrupted attempt joins the attempts' error history, unless the job ends cancelled.
const RELEASE_DEAD_SQL: &str = concat!(
    "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' \
         WHEN attempts >= max(max_attempts, ?4) THEN 'failed' ELSE 'pending' END, \
     error = CASE WHEN cancel_requested <> 0 THEN error \
         WHEN attempts >= max(max_attempts, ?4) THEN printf('attempt %d of %d was interrupted: \
its worker %s died or lost its lease, as at every attempt; the job fails so that it cannot \
crash its workers again', attempts, max(max_attempts, ?4), owner) \
         ELSE printf('attempt %d of %d was interrupted: its worker %s died or lost its lease', \
attempts, max(max_attempts, ?4), owner) END, \
     completed_at = CASE WHEN cancel_requested <> 0 OR attempts >= max(max_attempts, ?4) \
         THEN ?2 END, \
     owner = CASE WHEN cancel_requested <> 0 OR attempts >= max(max_attempts, ?4) \
         THEN owner END, \
     lease_until = NULL, \
     attempt_errors = CASE WHEN cancel_requested <> 0 THEN attempt_errors ELSE ",
    attempt_error_appended!(
        "printf('interrupted: its worker %s died or lost its lease', owner)",
        "?2"
    ),
    " END \
     WHERE status = 'running' AND owner = ?1 \
         AND (?3 IS NULL OR lease_until IS NULL OR lease_until < ?3) \
     RETURNING name, concurrency_key, status"
);

/// Releases every running job of `owner`; returns how many.
pub(super) fn release_owner(
    conn: &Connection,
    owner: &str,
    why: Release,
    now: i64,
    tally: &mut Tally,
) -> Result<u64> {
    match why {
        Release::HandBack => release(conn, HAND_BACK_SQL, rusqlite::params![owner, now], tally),
        Release::Dead => release(
            conn,
            RELEASE_DEAD_SQL,
            rusqlite::params![owner, now, None::<i64>, MIN_ATTEMPTS_AGAINST_CRASHES],
            tally,
        ),
    }
}

/// Releases, as dead, the running jobs of `owners` whose lease ended before `now`; returns how
/// many. Jobs of any other owner are left alone.
pub(super) fn release_expired(
    conn: &Connection,
    owners: &[String],
    now: i64,
    tally: &mut Tally,
) -> Result<u64> {
    let mut released = 0;
    for owner in owners {
        released += release(
            conn,
            RELEASE_DEAD_SQL,
            rusqlite::params![owner, now, now, MIN_ATTEMPTS_AGAINST_CRASHES],
            tally,
        )?;
    }
    Ok(released)
}

/// Runs a release statement, counting the state each running job it released went to;
/// returns how many it released.
fn release(conn: &Connection, sql: &str, params: impl Params, tally: &mut Tally) -> Result<u64> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut released = 0;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let key: Option<String> = row.get(1)?;
        let state: String = row.get(2)?;
        let state: JobState = state.parse().map_err(|reason| Error::CorruptRow {
            id: "(released job)".into(),
            reason,
        })?;
        tally.moved(&name, key.as_deref(), Some(JobState::Running), Some(state));
        released += 1;
    }
    Ok(released)
}
