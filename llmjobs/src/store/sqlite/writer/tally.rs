//! The counters that make `counts` and limits cost the same whatever the history: jobs per name
//! and state (`llmjobs_counts`) and running jobs per concurrency key (`llmjobs_running_keys`).
//!
//! The writer keeps them in the same transaction as the changes they count. What the frequent
//! writes (inserts, claims, completions) change is summed in memory, per transaction, and
//! written as one upsert per name and key before the counters are next read and before the
//! commit; a few rare writes adjust them in SQL from the row itself ([`recount_row`]). Triggers
//! did this before, at two or three upserts per row and a statement journal per statement: a
//! quarter of the writer's work per job.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::Result;
use crate::status::JobState;

const STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Running,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

fn slot(state: JobState) -> usize {
    match state {
        JobState::Pending => 0,
        JobState::Running => 1,
        JobState::Completed => 2,
        JobState::Failed => 3,
        JobState::Cancelled => 4,
    }
}

/// A transaction's changes to the counters, not yet written.
#[derive(Debug, Default)]
pub(in crate::store::sqlite) struct Tally {
    by_name: HashMap<String, [i64; 5]>,
    by_key: HashMap<String, i64>,
}

impl Tally {
    /// Counts a job of `name` (under `key`, if any) that went from `from` to `to`: `None` for a
    /// job inserted or deleted.
    pub(super) fn moved(
        &mut self,
        name: &str,
        key: Option<&str>,
        from: Option<JobState>,
        to: Option<JobState>,
    ) {
        if from == to {
            return;
        }
        let counts = match self.by_name.get_mut(name) {
            Some(counts) => counts,
            None => self.by_name.entry(name.to_owned()).or_default(),
        };
        for (state, delta) in [(from, -1), (to, 1)] {
            if let Some(state) = state {
                counts[slot(state)] += delta;
            }
        }
        if let Some(key) = key {
            let delta = i64::from(to == Some(JobState::Running))
                - i64::from(from == Some(JobState::Running));
            if delta != 0 {
                match self.by_key.get_mut(key) {
                    Some(n) => *n += delta,
                    None => {
                        self.by_key.insert(key.to_owned(), delta);
                    }
                }
            }
        }
    }

    /// Writes what was counted so far into the counter tables, and starts again from nothing.
    pub(super) fn flush(&mut self, conn: &Connection) -> Result<()> {
        if !self.by_name.is_empty() {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO llmjobs_counts (name, status, n) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name, status) DO UPDATE SET n = n + excluded.n",
            )?;
            for (name, counts) in self.by_name.drain() {
                for (state, delta) in STATES.iter().zip(counts) {
                    if delta != 0 {
                        stmt.execute(rusqlite::params![name, state.as_str(), delta])?;
                    }
                }
            }
        }
        if !self.by_key.is_empty() {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO llmjobs_running_keys (concurrency_key, n) VALUES (?1, ?2) \
                 ON CONFLICT (concurrency_key) DO UPDATE SET n = n + excluded.n",
            )?;
            for (key, delta) in self.by_key.drain() {
                if delta != 0 {
                    stmt.execute(rusqlite::params![key, delta])?;
                }
            }
        }
        Ok(())
    }
}

/// Moves the row `rowid`, as it is now, to state `to` in the counters: call it just before the
/// statement that changes its state. It reads the name, state and key from the row, whatever
/// their type, so it serves rows that a claim found corrupt too.
pub(super) fn recount_row(conn: &Connection, rowid: i64, to: JobState) -> Result<()> {
    let to = to.as_str();
    for sql in [
        "UPDATE llmjobs_counts SET n = n - 1 WHERE (name, status) = \
         (SELECT name, status FROM llmjobs_jobs WHERE rowid = ?1 AND status <> ?2)",
        "INSERT INTO llmjobs_counts (name, status, n) \
         SELECT name, ?2, 1 FROM llmjobs_jobs WHERE rowid = ?1 AND status <> ?2 \
         ON CONFLICT (name, status) DO UPDATE SET n = n + 1",
        "UPDATE llmjobs_running_keys SET n = n - 1 WHERE concurrency_key = \
         (SELECT concurrency_key FROM llmjobs_jobs \
          WHERE rowid = ?1 AND status = 'running' AND ?2 <> 'running')",
        "INSERT INTO llmjobs_running_keys (concurrency_key, n) \
         SELECT concurrency_key, 1 FROM llmjobs_jobs WHERE rowid = ?1 \
         AND concurrency_key IS NOT NULL AND status <> 'running' AND ?2 = 'running' \
         ON CONFLICT (concurrency_key) DO UPDATE SET n = n + 1",
    ] {
        conn.prepare_cached(sql)?
            .execute(rusqlite::params![rowid, to])?;
    }
    Ok(())
}
