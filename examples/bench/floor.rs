//! W1's floor: what SQLite alone takes for W1's writes, with no runtime, no threads and no
//! channels. One connection, called inline, writes 10,000 jobs in transactions of W1's best
//! case: 32 jobs inserted running (W1 spawns from 32 tasks and runs 32 at once) and the previous
//! 32 completed, with the lookup that fences each completion and the counter updates, then one
//! commit, as the library's writer would with perfect batches. The statements are the writer's
//! own shapes (multi-row `INSERT`, `VALUES` join, multi-row `UPDATE … FROM`, counter upserts), on
//! the schema llmjobs created. W1 cannot beat this figure on the same disk: its ratio to it is
//! what the runtime costs, and the figure itself what SQLite allows.

use std::path::Path;
use std::time::Instant;

use llmjobs::Durability;
use rusqlite::ToSql;

use super::{now_ms, raw_connection, uuid_v7_text};

/// Jobs per transaction: W1's spawning tasks and worker slots.
const BATCH: usize = 32;
const JOBS: usize = 10_000;

/// Jobs per second that SQLite itself allows W1 on the database at `path` (created by llmjobs).
pub(crate) fn w1_floor_jobs_per_s(path: &Path, durability: Durability) -> f64 {
    let conn = raw_connection(path);
    let synchronous = match durability {
        Durability::Full => "FULL",
        _ => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .expect("synchronous");
    let values = |n: usize, row: &str| vec![row; n].join(", ");
    let insert = format!(
        "INSERT INTO llmjobs_jobs (id, name, status, args, priority, concurrency_key, key_limit, \
         max_attempts, run_at, created_at, owner, attempts, started_at, lease_until, \
         idempotency_key) VALUES {}",
        values(
            BATCH,
            "(?, 'noop', 'running', '{}', 0, NULL, NULL, 1, ?, ?, 'floor', 1, ?, ?, NULL)"
        )
    );
    let fence = format!(
        "SELECT a.column1, j.rowid, j.name, j.concurrency_key, j.cancel_requested \
         FROM (VALUES {}) AS a CROSS JOIN llmjobs_jobs AS j \
         WHERE j.id = a.column2 AND j.status = 'running' AND j.owner = a.column3 \
         AND j.attempts = a.column4",
        values(BATCH, "(?, ?, 'floor', 1)")
    );
    let complete = format!(
        "UPDATE llmjobs_jobs SET status = 'completed', result = c.column2, error = NULL, \
         completed_at = ?, lease_until = NULL, progress = coalesce(c.column3, progress) \
         FROM (VALUES {}) AS c WHERE llmjobs_jobs.rowid = c.column1",
        values(BATCH, "(?, 'null', NULL)")
    );
    let count = "INSERT INTO llmjobs_counts (name, status, n) VALUES ('noop', ?1, ?2) \
                 ON CONFLICT (name, status) DO UPDATE SET n = n + excluded.n";
    let mut previous: Vec<String> = Vec::new();
    let start = Instant::now();
    for round in 0..=JOBS / BATCH {
        let ms = now_ms() as i64;
        let ids: Vec<String> = (0..BATCH)
            .map(|i| uuid_v7_text(ms as u64, (round * BATCH + i) as u64))
            .collect();
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        if round < JOBS / BATCH {
            let mut params: Vec<&dyn ToSql> = Vec::with_capacity(BATCH * 5);
            for id in &ids {
                params.extend([id as &dyn ToSql, &ms, &ms, &ms, &ms]);
            }
            conn.prepare_cached(&insert)
                .expect("prepare the insert")
                .execute(params.as_slice())
                .expect("insert");
            conn.prepare_cached(count)
                .expect("prepare the count")
                .execute(rusqlite::params!["running", BATCH as i64])
                .expect("count");
        }
        if !previous.is_empty() {
            let positions: Vec<i64> = (0..BATCH as i64).collect();
            let mut params: Vec<&dyn ToSql> = Vec::with_capacity(BATCH * 2);
            for (position, id) in positions.iter().zip(&previous) {
                params.extend([position as &dyn ToSql, id]);
            }
            let mut rowids: Vec<i64> = conn
                .prepare_cached(&fence)
                .expect("prepare the fence")
                .query_map(params.as_slice(), |row| row.get(1))
                .expect("fence")
                .collect::<rusqlite::Result<_>>()
                .expect("fenced rows");
            assert_eq!(rowids.len(), BATCH, "every job of the floor's batch found");
            rowids.sort_unstable();
            let mut params: Vec<&dyn ToSql> = vec![&ms];
            params.extend(rowids.iter().map(|r| r as &dyn ToSql));
            conn.prepare_cached(&complete)
                .expect("prepare the completion")
                .execute(params.as_slice())
                .expect("complete");
            let mut count = conn.prepare_cached(count).expect("prepare the count");
            count
                .execute(rusqlite::params!["running", -(BATCH as i64)])
                .expect("count");
            count
                .execute(rusqlite::params!["completed", BATCH as i64])
                .expect("count");
        }
        conn.execute_batch("COMMIT").expect("commit");
        previous = ids;
    }
    (JOBS / BATCH * BATCH) as f64 / start.elapsed().as_secs_f64()
}
