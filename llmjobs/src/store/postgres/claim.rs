//! Claiming due pending jobs within the per-name, per-key and global limits.
//!
//! Candidates are read in claim order with `FOR UPDATE SKIP LOCKED`: rows another claimer is
//! taking are passed over, never waited for, and never taken twice. The global limit and the
//! `max_concurrency` of the names this worker runs are counted under their advisory locks,
//! taken (waiting) before the counters are read; a concurrency key's lock is only tried: when
//! another claimer holds it, that key's jobs are passed over for this round, so a busy or
//! saturated key never blocks the others.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::enqueue::running_with_key;
use super::locks;
use crate::store::{ClaimRequest, Claimed, ClaimedJob, MIN_ATTEMPTS_AGAINST_CRASHES};
use crate::{JobId, Result};

/// Candidates read per round trip: more than the slots, as some are passed over.
const PAGE_MIN: i64 = 64;

/// How many jobs of each name run now, from the maintained counters (summed over their slots).
async fn running_by_name(conn: &mut PgConnection) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, sum(n)::int8 FROM llmjobs_counts WHERE status = 'running' \
             GROUP BY name HAVING sum(n) > 0",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The per-key state of one claim.
enum KeyRoom {
    /// Its lock is held here; this many jobs run under it, counting the ones this claim takes.
    Running(i64),
    /// Another claimer holds its lock: pass its jobs over.
    Busy,
}

/// What the claim does with a pending row.
enum Verdict {
    Take,
    /// Its key is at its limit (or being claimed elsewhere): it waits.
    Wait,
    /// Crashes used up its attempts: it fails.
    Exhausted,
    /// A column holds a value no job may hold (a negative count, written by hand): it fails
    /// alone, saying which, as a SQLite row with a value of the wrong type does.
    Corrupt(String),
}

/// A count column's value, or 0 with the problem described in `problems` when it is negative.
fn count(value: i32, column: &str, problems: &mut Vec<String>) -> u32 {
    u32::try_from(value).unwrap_or_else(|_| {
        problems.push(format!(
            "column `{column}` holds the integer {value} where a count belongs"
        ));
        0
    })
}

/// Picks due pending jobs this worker can run, within the limits counted over the whole
/// database, and marks them running.
pub(super) async fn claim(conn: &mut PgConnection, request: &ClaimRequest) -> Result<Claimed> {
    let mut slots = i64::from(request.slots);
    let mut limit_locks = Vec::new();
    if request.global_limit.is_some() {
        limit_locks.push(locks::global());
    }
    for quota in request.names.iter().filter(|q| q.limit.is_some()) {
        limit_locks.push(locks::name(quota.name));
    }
    let limited = !limit_locks.is_empty();
    locks::lock_all(conn, &mut limit_locks).await?;
    let running_by_name = if limited {
        running_by_name(conn).await?
    } else {
        HashMap::new()
    };
    if let Some(global) = request.global_limit {
        let running: i64 = running_by_name.values().sum();
        slots = slots.min(i64::from(global) - running);
    }
    // How many more of each name may start.
    let mut room: HashMap<&str, i64> = request
        .names
        .iter()
        .map(|q| {
            let room = match q.limit {
                Some(limit) => i64::from(limit) - running_by_name.get(q.name).copied().unwrap_or(0),
                None => i64::MAX,
            };
            (q.name, room)
        })
        .filter(|(_, room)| *room > 0)
        .collect();
    // No more than the names' room together: a claim under a limit that has room for one
    // job takes one and stops, instead of reading (and locking) every pending job behind it.
    slots = slots.min(
        room.values()
            .fold(0i64, |sum, left| sum.saturating_add(*left)),
    );
    if slots <= 0 || room.is_empty() {
        return Ok(Claimed::default());
    }
    // Names at their limit are not read: jobs of theirs may wait.
    let every_name = room.len() == request.names.len();
    // Rows other claims are taking are skipped unseen: if one of them passes a job over, its
    // worker claims again; here it may wait for the next poll.
    let mut drained = false;
    let mut passed_over = false;

    // Walk the due jobs in order, a page at a time, until the slots are filled, passing over
    // those whose name or key is at its limit.
    let page = (slots * 2).max(PAGE_MIN);
    let mut keys: HashMap<String, KeyRoom> = HashMap::new();
    let mut chosen: Vec<ClaimedJob> = Vec::new();
    let mut exhausted: Vec<String> = Vec::new();
    let mut corrupt: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<(i32, i64, String)> = None;
    'pages: while (chosen.len() as i64) < slots {
        // Only the names that still have room.
        let names: Vec<&str> = room
            .iter()
            .filter(|(_, left)| **left > 0)
            .map(|(name, _)| *name)
            .collect();
        if names.is_empty() {
            break;
        }
        let rows = sqlx::query(
            "SELECT id::text, name, concurrency_key, key_limit, attempts, max_attempts, \
             started_at IS NULL, args, priority, run_at FROM llmjobs_jobs \
             WHERE status = 'pending' AND run_at <= $1 AND name = ANY($2) \
             AND ($3::int4 IS NULL OR priority < $3 \
                  OR (priority = $3 AND (run_at, id) > ($4, $5::uuid))) \
             ORDER BY priority DESC, run_at, id LIMIT $6 FOR UPDATE SKIP LOCKED",
        )
        .bind(request.now)
        .bind(&names)
        .bind(cursor.as_ref().map(|c| c.0))
        .bind(cursor.as_ref().map(|c| c.1))
        .bind(cursor.as_ref().map(|c| c.2.clone()))
        .bind(page)
        .fetch_all(&mut *conn)
        .await?;
        let full = rows.len() as i64 == page;
        for row in &rows {
            let id: String = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let key: Option<String> = row.try_get(2)?;
            let key_limit: Option<i32> = row.try_get(3)?;
            let mut problems = Vec::new();
            let attempts = count(row.try_get(4)?, "attempts", &mut problems);
            let max_attempts = count(row.try_get(5)?, "max_attempts", &mut problems);
            cursor = Some((row.try_get(8)?, row.try_get(9)?, id.clone()));
            if (chosen.len() as i64) >= slots {
                break 'pages;
            }
            let verdict = if !problems.is_empty() {
                Verdict::Corrupt(problems.join("; "))
            } else if attempts >= max_attempts.max(MIN_ATTEMPTS_AGAINST_CRASHES) {
                Verdict::Exhausted
            } else if room.get(name.as_str()).is_none_or(|left| *left <= 0) {
                Verdict::Wait
            } else {
                match (&key, key_limit) {
                    (Some(key), Some(limit)) => key_verdict(conn, &mut keys, key, limit).await?,
                    _ => Verdict::Take,
                }
            };
            match verdict {
                Verdict::Take => {
                    if let Some(left) = room.get_mut(name.as_str()) {
                        *left -= 1;
                    }
                    let Ok(job_id) = id.parse::<JobId>() else {
                        continue;
                    };
                    chosen.push(ClaimedJob {
                        id: job_id,
                        name,
                        args: row.try_get(7)?,
                        attempts: attempts + 1,
                        max_attempts,
                        fresh: row.try_get(6)?,
                    });
                }
                Verdict::Wait => passed_over = true,
                Verdict::Exhausted => exhausted.push(id),
                Verdict::Corrupt(problems) => {
                    tracing::warn!(%problems, "failing a corrupt job row");
                    corrupt.push((id, format!("corrupt row: {problems}")));
                }
            }
        }
        if !full {
            drained = every_name && !passed_over && (chosen.len() as i64) < slots;
            break;
        }
    }

    // One statement for every row the claim changes: counter rows are then locked in one
    // order, by the trigger, whatever the mix of names.
    let mut ids: Vec<String> = chosen.iter().map(|job| job.id.to_string()).collect();
    let taken = ids.len();
    ids.extend(exhausted);
    // The error of each row that fails for what it holds; none for the others.
    let mut errors: Vec<Option<String>> = vec![None; ids.len()];
    for (id, error) in corrupt {
        ids.push(id);
        errors.push(Some(error));
    }
    if ids.is_empty() {
        return Ok(Claimed {
            jobs: chosen,
            drained,
        });
    }
    sqlx::query(
        "UPDATE llmjobs_jobs AS j SET \
         status = CASE WHEN c.take THEN 'running' ELSE 'failed' END, \
         owner = CASE WHEN c.take THEN $2 ELSE j.owner END, \
         lease_until = CASE WHEN c.take THEN $3 END, \
         attempts = CASE WHEN c.take THEN j.attempts + 1 ELSE j.attempts END, \
         started_at = CASE WHEN c.take THEN coalesce(j.started_at, $4) ELSE j.started_at END, \
         completed_at = CASE WHEN c.take THEN NULL ELSE $4 END, \
         error = CASE WHEN c.take THEN j.error WHEN c.error IS NOT NULL THEN c.error \
ELSE format('its %s attempts were interrupted \
(its workers died or lost their lease); the job fails so that it cannot crash its workers \
again', j.attempts) END \
         FROM (SELECT id::uuid AS id, error, ord <= $5 AS take \
               FROM unnest($1::text[], $6::text[]) WITH ORDINALITY AS u(id, error, ord)) AS c \
         WHERE j.id = c.id AND j.status = 'pending'",
    )
    .bind(&ids)
    .bind(&*request.owner)
    .bind(request.lease_until)
    .bind(request.now)
    .bind(taken as i64)
    .bind(&errors)
    .execute(&mut *conn)
    .await?;
    Ok(Claimed {
        jobs: chosen,
        drained,
    })
}

/// Whether a job under `key` (limit `limit`) may start, counting it if so.
async fn key_verdict(
    conn: &mut PgConnection,
    keys: &mut HashMap<String, KeyRoom>,
    key: &str,
    limit: i32,
) -> Result<Verdict> {
    if !keys.contains_key(key) {
        let state = if locks::try_lock(conn, locks::concurrency_key(key)).await? {
            KeyRoom::Running(running_with_key(conn, key).await?)
        } else {
            KeyRoom::Busy
        };
        keys.insert(key.to_string(), state);
    }
    match keys.get_mut(key) {
        Some(KeyRoom::Running(running)) if *running < i64::from(limit) => {
            // Taken: it runs under its key from now on.
            *running += 1;
            Ok(Verdict::Take)
        }
        _ => Ok(Verdict::Wait),
    }
}
