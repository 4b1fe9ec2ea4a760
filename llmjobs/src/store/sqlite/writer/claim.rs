//! Claiming due pending jobs within the per-name, per-key and global limits.

use std::collections::HashMap;

use rusqlite::{Connection, ToSql};

use super::execute;
use crate::store::{ClaimRequest, ClaimedJob};
use crate::{JobId, Result};

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// How many jobs run now under each concurrency key that the candidates use.
fn running_by_key(conn: &Connection, candidates: &[Candidate]) -> Result<HashMap<String, u32>> {
    let mut keys: Vec<&str> = Vec::new();
    for candidate in candidates {
        if let (Some(key), Some(_)) = (&candidate.key, candidate.key_limit)
            && !keys.contains(&key.as_str())
        {
            keys.push(key);
        }
    }
    let mut counts = HashMap::new();
    for chunk in keys.chunks(256) {
        let sql = format!(
            "SELECT concurrency_key, count(*) FROM llmjobs_jobs \
             WHERE status = 'running' AND concurrency_key IN ({}) \
             GROUP BY concurrency_key",
            placeholders(chunk.len())
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(chunk))?;
        while let Some(row) = rows.next()? {
            counts.insert(row.get(0)?, row.get::<_, u32>(1)?);
        }
    }
    Ok(counts)
}

/// A pending job a claim may take.
struct Candidate {
    id: String,
    name: String,
    key: Option<String>,
    key_limit: Option<i64>,
}

/// Picks due pending jobs this worker can run, within the per-name and global limits counted
/// over the whole database (the write lock makes the count and the claim one atomic step across
/// processes), and marks them running.
pub(super) fn claim(conn: &Connection, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
    let mut slots = request.slots as usize;
    let limited = request.global_limit.is_some() || request.names.iter().any(|q| q.limit.is_some());
    let mut running_by_name = HashMap::<String, u32>::new();
    if limited {
        let mut stmt = conn.prepare_cached(
            "SELECT name, count(*) FROM llmjobs_jobs WHERE status = 'running' GROUP BY name",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            running_by_name.insert(row.get(0)?, row.get::<_, u32>(1)?);
        }
    }
    if let Some(global) = request.global_limit {
        let running: u32 = running_by_name.values().sum();
        slots = slots.min(global.saturating_sub(running) as usize);
    }
    // How many more of each name may start.
    let mut room: Vec<(&str, usize)> = request
        .names
        .iter()
        .map(|q| {
            let room = match q.limit {
                Some(limit) => {
                    let running = running_by_name.get(q.name).copied().unwrap_or(0);
                    limit.saturating_sub(running) as usize
                }
                None => usize::MAX,
            };
            (q.name, room)
        })
        .filter(|(_, room)| *room > 0)
        .collect();
    if slots == 0 || room.is_empty() {
        return Ok(Vec::new());
    }

    let sql = format!(
        "SELECT id, name, concurrency_key, key_limit FROM llmjobs_jobs \
         WHERE status = 'pending' AND run_at <= ? AND name IN ({}) \
         ORDER BY priority DESC, run_at, id LIMIT ?",
        placeholders(room.len())
    );
    // Look a little past the free slots, so a name at its limit does not hide others.
    let window = i64::try_from(slots.saturating_mul(2).min(4096)).unwrap_or(i64::MAX);
    let mut params: Vec<&dyn ToSql> = vec![&request.now];
    params.extend(room.iter().map(|(name, _)| name as &dyn ToSql));
    params.push(&window);
    let candidates: Vec<Candidate> = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params.as_slice())?;
        let mut candidates = Vec::new();
        while let Some(row) = rows.next()? {
            candidates.push(Candidate {
                id: row.get(0)?,
                name: row.get(1)?,
                key: row.get(2)?,
                key_limit: row.get(3)?,
            });
        }
        candidates
    };
    let running_by_key = running_by_key(conn, &candidates)?;
    let mut started_by_key = HashMap::<&str, u32>::new();
    let mut chosen = Vec::with_capacity(slots);
    for candidate in &candidates {
        if chosen.len() == slots {
            break;
        }
        let Some((_, left)) = room.iter_mut().find(|(n, _)| *n == candidate.name) else {
            continue;
        };
        if *left == 0 {
            continue;
        }
        if let (Some(key), Some(limit)) = (&candidate.key, candidate.key_limit) {
            let running = running_by_key.get(key).copied().unwrap_or(0);
            let started = started_by_key.entry(key).or_insert(0);
            if i64::from(running + *started) >= limit {
                continue;
            }
            *started += 1;
        }
        *left -= 1;
        chosen.push(candidate.id.as_str());
    }

    let mut claimed = Vec::with_capacity(chosen.len());
    for chunk in chosen.chunks(256) {
        let sql = format!(
            "UPDATE llmjobs_jobs SET status = 'running', owner = ?, lease_until = ?, \
             attempts = attempts + 1, started_at = coalesce(started_at, ?), cancel_requested = 0 \
             WHERE status = 'pending' AND id IN ({}) \
             RETURNING id, name, args, attempts, max_attempts",
            placeholders(chunk.len())
        );
        let owner: &str = &request.owner;
        let mut params: Vec<&dyn ToSql> = vec![&owner, &request.lease_until, &request.now];
        params.extend(chunk.iter().map(|id| id as &dyn ToSql));
        let mut corrupt = Vec::new();
        {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params.as_slice())?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let Ok(job_id) = id.parse::<JobId>() else {
                    corrupt.push(id);
                    continue;
                };
                claimed.push(ClaimedJob {
                    id: job_id,
                    name: row.get(1)?,
                    args: row.get(2)?,
                    attempts: row.get(3)?,
                    max_attempts: row.get(4)?,
                });
            }
        }
        // Not an id llmjobs wrote: fail the row so it is visible and never claimed again.
        for id in corrupt {
            execute(
                conn,
                "UPDATE llmjobs_jobs SET status = 'failed', completed_at = ?, \
                 error = 'corrupt row: the id is not a UUID' WHERE id = ?",
                rusqlite::params![request.now, id],
            )?;
        }
    }
    Ok(claimed)
}
