//! The embedded SQLite backend: WAL, one batching writer connection, a pool of readers.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{
    CancelEffect, ClaimRequest, ClaimedJob, Finish, JOB_ROW_COLUMNS, JobRow, NewJob, StepRecord,
    Store,
};
use crate::status::JobState;
use crate::{Durability, Error, JobId, Result};

mod writer;

use writer::{Reply, WriteOp};

/// The name of the table that records which of llmjobs' migrations ran, kept apart from the
/// host application's own `_sqlx_migrations`.
const MIGRATIONS_TABLE: &str = "llmjobs_migrations";

/// How long a connection waits for another process's write lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `sqlite:` URL.
#[derive(Debug, Clone)]
pub(crate) struct SqliteTarget {
    options: SqliteConnectOptions,
    /// The database file, or `None` for an in-memory database.
    path: Option<PathBuf>,
}

impl SqliteTarget {
    /// Parses `sqlite://path`, `sqlite:path`, `sqlite::memory:` or a bare file path.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?
        } else if url.contains("://") {
            return Err(invalid(
                "expected `sqlite://PATH`, `sqlite::memory:` or a file path".into(),
            ));
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let path = (!in_memory).then(|| options.get_filename().to_path_buf());
        if let Some(p) = &path
            && p.as_os_str().is_empty()
        {
            return Err(invalid("the database path is empty".into()));
        }
        Ok(SqliteTarget { options, path })
    }

    /// The database file, or `None` for an in-memory database.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// The SQLite store.
pub(crate) struct SqliteStore {
    writer: mpsc::UnboundedSender<writer::Request>,
    readers: SqlitePool,
    url: String,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, and starts the writer.
    pub(crate) async fn open(
        url: &str,
        target: &SqliteTarget,
        durability: Durability,
    ) -> Result<Self> {
        let open_error = |e: sqlx::Error| Error::Open {
            url: url.to_string(),
            source: Box::new(e),
        };
        let synchronous = match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Relaxed => SqliteSynchronous::Normal,
        };
        let options = target
            .options
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(256)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));

        let mut conn = options.connect().await.map_err(open_error)?;
        {
            // Two processes opening a new database at once must not both create the tables:
            // the second waits for the first's migrations, then finds them applied.
            let _guard = match target.path() {
                Some(path) => Some(
                    crate::owner::lock_exclusive(&crate::owner::lock_path(path, "migrate")).await?,
                ),
                None => None,
            };
            migrate(&mut conn).await?;
        }

        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(open_error)?;

        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(conn, rx));
        Ok(SqliteStore {
            writer: tx,
            readers,
            url: url.to_string(),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(writer::Request { op, reply })
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Applies the embedded migrations, recording them in llmjobs' own table.
async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.run(&mut *conn).await?;
    Ok(())
}

fn unexpected(reply: Reply) -> Error {
    Error::Database(sqlx::Error::Protocol(format!(
        "internal error: the writer answered with {reply:?}"
    )))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, job: NewJob) -> Result<()> {
        match self.write(WriteOp::Enqueue(job)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        match self.write(WriteOp::Claim(request)).await? {
            Reply::Claimed(jobs) => Ok(jobs),
            other => Err(unexpected(other)),
        }
    }

    async fn finish(
        &self,
        id: JobId,
        owner: Arc<str>,
        finish: Finish,
        progress: Option<String>,
    ) -> Result<bool> {
        let op = WriteOp::Finish {
            id,
            owner,
            finish,
            progress,
        };
        match self.write(op).await? {
            Reply::Changed(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel(&self, id: JobId) -> Result<CancelEffect> {
        match self.write(WriteOp::Cancel { id }).await? {
            Reply::Cancel(effect) => Ok(effect),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs WHERE id = ?"
        ));
        Ok(sqlx::query_as::<_, JobRow>(sql)
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn list(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs \
             WHERE (?1 IS NULL OR status = ?1) ORDER BY created_at DESC, id DESC LIMIT ?2"
        ));
        Ok(sqlx::query_as::<_, JobRow>(sql)
            .bind(state.map(JobState::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?)
    }

    async fn counts(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM llmjobs_jobs GROUP BY status")
                .fetch_all(&self.readers)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(status, n)| (status, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn heartbeat(&self, owner: Arc<str>, lease_until: i64) -> Result<()> {
        match self
            .write(WriteOp::Heartbeat { owner, lease_until })
            .await?
        {
            Reply::Count(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn running_owners(&self, except: Arc<str>) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT owner FROM llmjobs_jobs \
             WHERE status = 'running' AND owner IS NOT NULL AND owner <> ?",
        )
        .bind(&*except)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn release_owner(&self, owner: String) -> Result<u64> {
        match self.write(WriteOp::ReleaseOwner { owner }).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn release_expired(&self, now: i64) -> Result<u64> {
        match self.write(WriteOp::ReleaseExpired { now }).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel_requests(&self, owner: Arc<str>) -> Result<Vec<JobId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM llmjobs_jobs \
             WHERE status = 'running' AND owner = ? AND cancel_requested = 1",
        )
        .bind(&*owner)
        .fetch_all(&self.readers)
        .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn load_steps(&self, id: JobId) -> Result<Vec<StepRecord>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, name, output FROM llmjobs_steps WHERE job_id = ? ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, name, output)| StepRecord {
                seq: u32::try_from(seq).unwrap_or(u32::MAX),
                name,
                output,
            })
            .collect())
    }

    async fn append_step(&self, id: JobId, owner: Arc<str>, step: StepRecord) -> Result<bool> {
        match self.write(WriteOp::AppendStep { id, owner, step }).await? {
            Reply::Changed(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    async fn save_progress(&self, id: JobId, progress: String) -> Result<()> {
        match self.write(WriteOp::SaveProgress { id, progress }).await? {
            Reply::Changed(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        match self.write(WriteOp::Prune { before }).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn close(&self) {
        // The writer drains what it has queued; an empty op that round-trips proves it.
        let _ = self.write(WriteOp::Flush).await;
        self.readers.close().await;
    }
}
