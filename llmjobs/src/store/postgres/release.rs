//! Leases: renewing an owner's, and handing running jobs back to the queue when their owner
//! departs, dies or loses its lease.
//!
//! A job whose cancellation was requested ends `cancelled` instead of going back, whichever way
//! it is released. An attempt cut short by a dead owner counts (the poison-job guard): when it
//! was the job's last, the job ends `failed` instead of crash-looping its workers.

use sqlx::PgPool;

use crate::Result;
use crate::store::{MIN_ATTEMPTS_AGAINST_CRASHES, Release};

/// Extends the lease of every job `owner` runs.
pub(super) async fn heartbeat(pool: &PgPool, owner: &str, lease_until: i64) -> Result<()> {
    sqlx::query("UPDATE llmjobs_jobs SET lease_until = $1 WHERE status = 'running' AND owner = $2")
        .bind(lease_until)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// A departing owner's jobs: the interrupted attempt is given back. Binds $1 the owner, $2 now.
const HAND_BACK_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END, \
     attempts = CASE WHEN cancel_requested THEN attempts ELSE greatest(attempts - 1, 0) END, \
     completed_at = CASE WHEN cancel_requested THEN $2 END, \
     owner = CASE WHEN cancel_requested THEN owner END, \
     lease_until = NULL \
     WHERE status = 'running' AND owner = $1";

/// A dead owner's jobs whose lease ended before $3 (NULL for an owner known dead: any lease).
/// Binds $1 the owner, $2 now, $3 the lease bound, $4 the fewest attempts a job may make.
const RELEASE_DEAD_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested THEN 'cancelled' \
         WHEN attempts >= greatest(max_attempts, $4) THEN 'failed' ELSE 'pending' END, \
     error = CASE WHEN cancel_requested THEN error \
         WHEN attempts >= greatest(max_attempts, $4) THEN format('attempt %s of %s was \
interrupted: its worker %s died or lost its lease, as at every attempt; the job fails so that \
it cannot crash its workers again', attempts, greatest(max_attempts, $4), owner) \
         ELSE format('attempt %s of %s was interrupted: its worker %s died or lost its lease', \
attempts, greatest(max_attempts, $4), owner) END, \
     completed_at = CASE WHEN cancel_requested OR attempts >= greatest(max_attempts, $4) \
         THEN $2 END, \
     owner = CASE WHEN cancel_requested OR attempts >= greatest(max_attempts, $4) \
         THEN owner END, \
     lease_until = NULL, \
     attempt_errors = CASE WHEN cancel_requested THEN attempt_errors \
         ELSE coalesce(attempt_errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
             'attempt', attempts, 'error', format('interrupted: its worker %s died or lost its \
lease', owner), 'ended_at_ms', $2)) END \
     WHERE status = 'running' AND owner = $1 \
         AND ($3::int8 IS NULL OR lease_until IS NULL OR lease_until < $3)";

/// Releases every running job of `owner`; returns how many.
pub(super) async fn release_owner(
    pool: &PgPool,
    owner: &str,
    why: Release,
    now: i64,
) -> Result<u64> {
    let query = match why {
        Release::HandBack => sqlx::query(HAND_BACK_SQL).bind(owner).bind(now),
        Release::Dead => sqlx::query(RELEASE_DEAD_SQL)
            .bind(owner)
            .bind(now)
            .bind(None::<i64>)
            .bind(MIN_ATTEMPTS_AGAINST_CRASHES as i32),
    };
    Ok(query.execute(pool).await?.rows_affected())
}

/// Releases, as dead, the running jobs of `owners` whose lease ended before `now`; returns how
/// many. Jobs of any other owner are left alone.
pub(super) async fn release_expired(pool: &PgPool, owners: &[String], now: i64) -> Result<u64> {
    let mut released = 0;
    for owner in owners {
        released += sqlx::query(RELEASE_DEAD_SQL)
            .bind(owner)
            .bind(now)
            .bind(Some(now))
            .bind(MIN_ATTEMPTS_AGAINST_CRASHES as i32)
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(released)
}
