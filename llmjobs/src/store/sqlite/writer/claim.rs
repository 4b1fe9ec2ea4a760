//! Claiming due pending jobs within the per-name, per-key and global limits.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, ToSql};

use super::execute;
use super::tally::{Tally, recount_row};
use crate::status::JobState;
use crate::store::MIN_ATTEMPTS_AGAINST_CRASHES;
use crate::store::sqlite::columns::lenient;
use crate::store::{ClaimRequest, Claimed, ClaimedJob};
use crate::{JobId, Result};

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// How many jobs of each name run now, from the maintained counters: costs the same at 100
/// running jobs as at 100,000.
pub(super) fn running_by_name(conn: &Connection) -> Result<HashMap<String, u32>> {
    let mut stmt = conn
        .prepare_cached("SELECT name, n FROM llmjobs_counts WHERE status = 'running' AND n > 0")?;
    let mut rows = stmt.query([])?;
    let mut counts = HashMap::new();
    while let Some(row) = rows.next()? {
        counts.insert(row.get(0)?, row.get::<_, u32>(1)?);
    }
    Ok(counts)
}

/// How many jobs run now under `key`, from the maintained counters.
pub(super) fn running_with_key(conn: &Connection, key: &str) -> Result<u32> {
    let n: Option<u32> = conn
        .prepare_cached("SELECT n FROM llmjobs_running_keys WHERE concurrency_key = ?")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    Ok(n.unwrap_or(0))
}

/// A pending job the claim takes.
struct Chosen {
    rowid: i64,
    key: Option<String>,
    job: ClaimedJob,
}

/// What the claim does with a pending row it meets.
enum Verdict {
    Take(Chosen),
    /// Its name or key is at its limit: it waits.
    Wait,
    /// A column holds a value of the wrong type: it fails, named, so that it stops every claim
    /// no more.
    Corrupt {
        rowid: i64,
        problems: String,
    },
    /// Crashes used up its attempts before this version counted them: it fails.
    Exhausted {
        rowid: i64,
    },
}

/// Picks due pending jobs this worker can run, within the per-name and global limits counted
/// over the whole database (the write lock makes the count and the claim one atomic step across
/// processes), and marks them running.
pub(super) fn claim(
    conn: &Connection,
    request: &ClaimRequest,
    tally: &mut Tally,
) -> Result<Claimed> {
    let mut slots = request.slots as usize;
    let limited = request.global_limit.is_some() || request.names.iter().any(|q| q.limit.is_some());
    let running_by_name = if limited {
        running_by_name(conn)?
    } else {
        HashMap::new()
    };
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
        return Ok(Claimed::default());
    }
    // Names at their limit are not read: jobs of theirs may wait.
    let every_name = room.len() == request.names.len();

    // Walk the due jobs in order until the slots are filled, passing over those whose name or
    // key is at its limit: a saturated key never hides the jobs behind it.
    let sql = format!(
        "SELECT rowid, id, name, concurrency_key, key_limit, attempts, max_attempts, \
         started_at IS NULL, args FROM llmjobs_jobs \
         WHERE status = 'pending' AND run_at <= ? AND name IN ({}) \
         ORDER BY priority DESC, run_at, id",
        placeholders(room.len())
    );
    let mut params: Vec<&dyn ToSql> = vec![&request.now];
    params.extend(room.iter().map(|(name, _)| name as &dyn ToSql));
    let mut running_by_key: HashMap<String, u32> = HashMap::new();
    let mut chosen: Vec<Chosen> = Vec::with_capacity(slots);
    let mut corrupt = Vec::new();
    let mut exhausted = Vec::new();
    let mut drained = false;
    {
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params.as_slice())?;
        let mut passed_over = false;
        while chosen.len() < slots {
            let Some(row) = rows.next()? else {
                drained = every_name && !passed_over;
                break;
            };
            match judge(conn, row, &mut room, &mut running_by_key)? {
                Verdict::Take(job) => chosen.push(job),
                Verdict::Wait => passed_over = true,
                Verdict::Corrupt { rowid, problems } => corrupt.push((rowid, problems)),
                Verdict::Exhausted { rowid } => exhausted.push(rowid),
            }
        }
    }

    for chunk in chosen.chunks(256) {
        let sql = format!(
            "UPDATE llmjobs_jobs SET status = 'running', owner = ?, lease_until = ?, \
             attempts = attempts + 1, started_at = coalesce(started_at, ?) \
             WHERE status = 'pending' AND rowid IN ({})",
            placeholders(chunk.len())
        );
        let owner: &str = &request.owner;
        let mut params: Vec<&dyn ToSql> = vec![&owner, &request.lease_until, &request.now];
        params.extend(chunk.iter().map(|c| &c.rowid as &dyn ToSql));
        execute(conn, &sql, params.as_slice())?;
    }
    for chosen in &chosen {
        tally.moved(
            &chosen.job.name,
            chosen.key.as_deref(),
            Some(JobState::Pending),
            Some(JobState::Running),
        );
    }
    for (rowid, problems) in corrupt {
        tracing::warn!(%problems, "failing a corrupt job row");
        recount_row(conn, rowid, JobState::Failed)?;
        execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'failed', completed_at = ?, error = ? WHERE rowid = ?",
            rusqlite::params![request.now, format!("corrupt row: {problems}"), rowid],
        )?;
    }
    for rowid in exhausted {
        recount_row(conn, rowid, JobState::Failed)?;
        execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'failed', completed_at = ?, \
             error = printf('its %d attempts were interrupted (its workers died or lost their \
             lease); the job fails so that it cannot crash its workers again', attempts) \
             WHERE rowid = ?",
            rusqlite::params![request.now, rowid],
        )?;
    }
    Ok(Claimed {
        jobs: chosen.into_iter().map(|c| c.job).collect(),
        drained,
    })
}

/// Decides what the claim does with one pending row, and counts it against its name's and
/// key's room when it takes it.
fn judge(
    conn: &Connection,
    row: &rusqlite::Row<'_>,
    room: &mut [(&str, usize)],
    running_by_key: &mut HashMap<String, u32>,
) -> Result<Verdict> {
    let mut problems = Vec::new();
    let rowid: i64 = row.get(0)?;
    let id: String = lenient(row, 1, "text", &mut problems);
    let name: String = lenient(row, 2, "text", &mut problems);
    let key: Option<String> = lenient(row, 3, "text", &mut problems);
    let key_limit: Option<i64> = lenient(row, 4, "an integer", &mut problems);
    let attempts: u32 = lenient(row, 5, "a count", &mut problems);
    let max_attempts: u32 = lenient(row, 6, "a count", &mut problems);
    let fresh: bool = lenient(row, 7, "a flag", &mut problems);
    let job_id = id.parse::<JobId>();
    if !problems.is_empty() || job_id.is_err() {
        if job_id.is_err() {
            problems.push("the id is not a UUID".into());
        }
        return Ok(Verdict::Corrupt {
            rowid,
            problems: problems.join("; "),
        });
    }
    if attempts >= max_attempts.max(MIN_ATTEMPTS_AGAINST_CRASHES) {
        return Ok(Verdict::Exhausted { rowid });
    }
    let Some((_, left)) = room.iter_mut().find(|(n, _)| *n == name) else {
        return Ok(Verdict::Wait);
    };
    if *left == 0 {
        return Ok(Verdict::Wait);
    }
    if let (Some(key), Some(limit)) = (&key, key_limit) {
        let running = match running_by_key.get_mut(key) {
            Some(running) => running,
            None => running_by_key
                .entry(key.clone())
                .or_insert(running_with_key(conn, key)?),
        };
        if i64::from(*running) >= limit {
            return Ok(Verdict::Wait);
        }
        // Taken: it runs under its key from now on.
        *running += 1;
    }
    let args: String = lenient(row, 8, "text", &mut problems);
    if !problems.is_empty() {
        return Ok(Verdict::Corrupt {
            rowid,
            problems: problems.join("; "),
        });
    }
    *left -= 1;
    Ok(Verdict::Take(Chosen {
        rowid,
        key,
        job: ClaimedJob {
            id: job_id.expect("checked above"),
            name,
            args,
            attempts: attempts + 1,
            max_attempts,
            fresh,
        },
    }))
}
