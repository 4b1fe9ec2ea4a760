//! Reads without a runtime (see [`crate::Inspector`]): one read-only connection, opened with
//! `SQLITE_OPEN_READ_ONLY`, so that it can neither create nor change the file, take no write
//! lock, and in WAL mode never holds up the application's writer.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{BUSY_TIMEOUT, SqliteTarget, counter_rows, job_row, list, query_all};
use crate::inspect::{Reader, RowWithArgs, SchemaRow, StepRow};
use crate::status::JobFilter;
use crate::store::JOB_ROW_COLUMNS;
use crate::{Error, JobId, Result};

/// A read-only connection to a SQLite job database.
pub(crate) struct SqliteReader {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteReader {
    /// Opens `target` read-only. An in-memory database lives in its own process only, and a
    /// file that does not exist is not created: both are errors.
    pub(crate) async fn open(url: &str, target: SqliteTarget) -> Result<SqliteReader> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            url: url.to_string(),
            source,
        };
        let Some(path) = target.path().map(|p| p.to_path_buf()) else {
            return Err(open_error(
                "an in-memory database exists only inside the process that made it".into(),
            ));
        };
        if !path.is_file() {
            return Err(open_error(
                format!("no database file at {}", path.display()).into(),
            ));
        }
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let conn = Connection::open_with_flags(&path, flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "query_only", true)?;
            // Fails here, not at the first read, on a file that is not a database.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(conn)
        })
        .await
        .map_err(|_| Error::Shutdown)?
        .map_err(|e| open_error(Box::new(e)))?;
        Ok(SqliteReader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let conn = self.conn.clone();
        match tokio::task::spawn_blocking(move || read(&conn.lock().expect("reader lock"))).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Shutdown),
        }
    }
}

/// A job row selected with [`JOB_ROW_COLUMNS`] followed by `args`.
fn row_with_args(row: &rusqlite::Row<'_>) -> Result<RowWithArgs> {
    let args = row
        .get::<_, rusqlite::types::Value>(20)
        .map(|v| match v {
            rusqlite::types::Value::Text(text) => text,
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    Ok(RowWithArgs {
        row: job_row(row)?,
        args,
    })
}

#[async_trait::async_trait]
impl Reader for SqliteReader {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn supported(&self) -> i64 {
        super::migrate::newest_version()
    }

    async fn schema(&self) -> Result<SchemaRow> {
        self.read(|conn| {
            let table: Option<String> = conn
                .query_row(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name = 'llmjobs_migrations'",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            if table.is_none() {
                return Ok(SchemaRow {
                    version: None,
                    failed: false,
                });
            }
            let (version, failed): (Option<i64>, Option<i64>) = conn.query_row(
                "SELECT max(version), sum(NOT success) FROM llmjobs_migrations",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok(SchemaRow {
                version,
                failed: failed.unwrap_or(0) > 0,
            })
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<RowWithArgs>> {
        self.read(move |conn| {
            let sql = format!("SELECT {JOB_ROW_COLUMNS}, args FROM llmjobs_jobs WHERE id = ?");
            let mut rows = query_all(conn, &sql, [id.to_string()], row_with_args)?;
            Ok(rows.pop())
        })
        .await
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<RowWithArgs>> {
        self.read(move |conn| {
            // The listing's own statement (its index walks), with the arguments read as well.
            let (sql, params) = list::query(&filter);
            let sql = sql.replace(JOB_ROW_COLUMNS, &format!("{JOB_ROW_COLUMNS}, args"));
            query_all(
                conn,
                &sql,
                rusqlite::params_from_iter(params),
                row_with_args,
            )
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.read(counter_rows).await
    }

    async fn steps(&self, id: JobId) -> Result<Vec<StepRow>> {
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT seq, name, length(CAST(output AS BLOB)), created_at FROM llmjobs_steps \
                 WHERE job_id = ? ORDER BY seq",
                [id.to_string()],
                |row| {
                    Ok(StepRow {
                        seq: row.get(0)?,
                        name: row.get(1)?,
                        size: row.get::<_, i64>(2)?.unsigned_abs(),
                        created_at: row.get(3)?,
                    })
                },
            )
        })
        .await
    }

    async fn prunable(&self, before: i64) -> Result<u64> {
        self.read(move |conn| {
            // The condition of the prune itself (writer/prune.rs), on the retention index.
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM llmjobs_jobs WHERE completed_at <= ?1 \
                 AND status <> 'pending' AND status <> 'running'",
                [before],
                |row| row.get(0),
            )?;
            Ok(n.unsigned_abs())
        })
        .await
    }

    async fn finished_since(&self, since: i64, limit: u32) -> Result<Vec<RowWithArgs>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {JOB_ROW_COLUMNS}, args FROM llmjobs_jobs \
                 WHERE completed_at >= ?1 ORDER BY completed_at DESC LIMIT ?2"
            );
            query_all(conn, &sql, rusqlite::params![since, limit], row_with_args)
        })
        .await
    }

    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        self.read(move |conn| super::usage::aggregate(conn, &filter))
            .await
    }
}
