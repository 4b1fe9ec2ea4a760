//! Inserting jobs inside the application's own transaction (`Jobs::spawn_in`): the jobs exist
//! if and only if that transaction commits.
//!
//! The insert is the store's own ([`enqueue::insert_jobs`]: idempotency keys, counters,
//! budgets), run on the application's connection, inside a savepoint of its transaction, so
//! that a spawn that fails (a key held by different work) rolls back alone and leaves the
//! application's transaction usable. That connection is not one of the store's: its
//! `search_path` does not name llmjobs' schema, so the savepoint puts it first and gives the
//! application its own back before returning.
//!
//! The wake-up is a `NOTIFY` in the application's transaction: PostgreSQL delivers it at commit
//! (to this process's listener too), and drops it on rollback. This is the one place llmjobs
//! notifies inside a writing transaction (see [`notify::Notice::send`] for why it otherwise
//! does not): the application's commit is the only moment its jobs become visible.

use sqlx::{Connection, PgConnection};

use super::{enqueue, notify};
use crate::store::{Enqueued, NewJob};
use crate::{Error, Result};

/// Inserts `jobs` in the transaction open on `conn` (or, if none is open, in one of their
/// own, committed here); what each did, as [`enqueue::insert_jobs`] says.
pub(super) async fn enqueue_in(
    conn: &mut PgConnection,
    schema: &str,
    channel: &str,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>> {
    let mut savepoint = conn.begin().await?;
    match insert(&mut savepoint, schema, channel, jobs).await {
        Ok(replies) => {
            savepoint.commit().await?;
            Ok(replies)
        }
        Err(e) => {
            // Undoes the rows and the search_path; the application's transaction goes on.
            let _ = savepoint.rollback().await;
            Err(e)
        }
    }
}

async fn insert(
    conn: &mut PgConnection,
    schema: &str,
    channel: &str,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>> {
    let (search_path, migrated): (String, bool) = sqlx::query_as(
        "SELECT current_setting('search_path'), \
         to_regclass(format('%I.llmjobs_jobs', $1::text)) IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await?;
    if !migrated {
        return Err(Error::Database(
            format!(
                "the application's connection reaches no llmjobs tables in schema `{schema}`: \
                 it must be to the job runtime's database (the one `Jobs::open` was given)"
            )
            .into(),
        ));
    }
    // Local to the savepoint's transaction: a rollback undoes it by itself.
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(schema)
        .execute(&mut *conn)
        .await?;
    let replies = enqueue::insert_jobs(conn, jobs).await?;
    // None can run before the commit: every job inserted is pending. As for the store's own
    // spawns, the workers are woken for due jobs; a job due later is found by their poll.
    let now = crate::status::now_ms();
    let due = jobs
        .iter()
        .zip(&replies)
        .any(|(job, e)| matches!(e, Enqueued::Inserted { .. }) && job.run_at <= now);
    if due {
        let notice = notify::Notice {
            available: true,
            ..Default::default()
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(notice.payload())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(&search_path)
        .execute(&mut *conn)
        .await?;
    Ok(replies)
}
