//! Spawning inside the application's own PostgreSQL transaction (the transactional outbox):
//! the job exists if and only if the application's transaction commits.

use sqlx::PgConnection;

use super::Jobs;
use crate::{Error, JobCall, JobHandle, Result};

impl Jobs {
    /// Records a job inside the application's own transaction on the job database: the job
    /// exists if and only if that transaction commits, so a row the application writes and the
    /// job that processes it are never one without the other. Workers, in this process and in
    /// the others, are woken when the transaction commits (a `NOTIFY` in it, which PostgreSQL
    /// delivers at commit and drops on rollback).
    ///
    /// `conn` is the application's connection with its transaction open: pass
    /// `&mut tx` for a [`sqlx::Transaction<'_, Postgres>`](sqlx::Transaction) (it derefs to
    /// `PgConnection`). It must reach the database this runtime was opened on (llmjobs' tables,
    /// in their schema, need not be on its `search_path`). Why a connection and not any
    /// `PgExecutor`: the insert is several statements (the idempotency key's lock and lookup,
    /// the rows, the budgets) that must run on one connection inside one transaction, which a
    /// pool cannot promise. On a connection with no transaction open, the job is committed at
    /// once, as [`Jobs::spawn`] would.
    ///
    /// Everything else is [`Jobs::spawn`]'s: the call's arguments, priority, `run_at`,
    /// concurrency key and budget, and its [idempotency key](JobCall::idempotency_key) (a key
    /// another job holds gives that job's handle; the key stays locked until the application's
    /// transaction ends, so a concurrent spawn with it waits for that and then sees this job,
    /// or none if it rolled back). The job always goes in `pending`: no worker can see it
    /// before the commit.
    ///
    /// The handle is the normal one, for use **after the commit**: before it, and forever if
    /// the transaction rolls back, no other connection sees the job, and
    /// [`JobHandle::wait`] and [`Jobs::status`] fail at once with [`Error::NotFound`].
    ///
    /// The spawn runs in a savepoint: if it fails (an
    /// [`IdempotencyConflict`](Error::IdempotencyConflict), say), nothing of it stays and the
    /// application's transaction can go on. It holds the row locks of the job counters it
    /// changes until the application commits; keep the transaction short after it, as with
    /// any write.
    ///
    /// A runtime whose job database is not PostgreSQL refuses with [`Error::NotPostgres`].
    ///
    /// ```no_run
    /// # use llmjobs::{llm_job, JobError, Jobs};
    /// #[llm_job]
    /// async fn send_welcome(user_id: i64) -> Result<(), JobError> {
    ///     Ok(())
    /// }
    ///
    /// # async fn demo(jobs: Jobs, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// let (user_id,): (i64,) =
    ///     sqlx::query_as("INSERT INTO users (email) VALUES ($1) RETURNING id")
    ///         .bind("ada@example.com")
    ///         .fetch_one(&mut *tx)
    ///         .await?;
    /// let handle = jobs.spawn_in(&mut tx, send_welcome(user_id)).await?;
    /// tx.commit().await?; // the user and the job, or neither
    /// handle.wait().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_in<T>(
        &self,
        conn: &mut PgConnection,
        call: JobCall<T>,
    ) -> Result<JobHandle<T>> {
        let mut handles = self.insert_in(conn, "spawn_in", [call]).await?;
        Ok(handles.pop().expect("one handle per call"))
    }

    /// [`Jobs::spawn_in`] for many calls: all of them are recorded inside the application's
    /// transaction, or, if any fails (an idempotency key held by different work, say), none of
    /// them (the application's transaction goes on). The handles are in the order of the calls.
    pub async fn spawn_many_in<T>(
        &self,
        conn: &mut PgConnection,
        calls: impl IntoIterator<Item = JobCall<T>>,
    ) -> Result<Vec<JobHandle<T>>> {
        self.insert_in(conn, "spawn_many_in", calls).await
    }

    async fn insert_in<T>(
        &self,
        conn: &mut PgConnection,
        operation: &'static str,
        calls: impl IntoIterator<Item = JobCall<T>>,
    ) -> Result<Vec<JobHandle<T>>> {
        let (jobs, ids) = self.new_jobs(calls)?;
        let enqueued = match self.shared.store.enqueue_in(conn, jobs).await {
            Err(Error::NotPostgres { .. }) => return Err(Error::NotPostgres { operation }),
            other => other?,
        };
        Ok(ids
            .into_iter()
            .zip(enqueued)
            .map(|(id, enqueued)| self.spawned(id, enqueued))
            .collect())
    }
}
