//! The embedded SQLite backend: WAL, one batching writer thread, a few reader connections.
//!
//! SQLite is called in-process through rusqlite. Every write of the process goes to one writer
//! thread, which commits whatever is waiting in one transaction (see [`writer`]); reads run on
//! tokio's blocking pool with connections of their own, so they never wait for a commit. An
//! in-memory database has one connection only, so its reads go through the writer thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use super::{
    CancelEffect, ClaimRequest, Enqueued, Finish, JOB_ROW_COLUMNS, JobRow, NewJob, Release,
    RetryEffect, StepRecord, Store,
};
use crate::status::{JobFilter, JobState};
use crate::{Durability, Error, JobId, Result};

mod columns;
mod inspect;
mod list;
mod migrate;
#[cfg(feature = "llm")]
mod rate;
mod usage;
mod writer;

use columns::lenient;
pub(crate) use inspect::SqliteReader;

use writer::{Reply, WriteOp};

/// How long a connection waits for another process's write lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle reader connections kept open.
const IDLE_READERS: usize = 2;

/// Reads running at once, each on a connection of its own. A burst of status calls waits its
/// turn rather than opening a connection (three file descriptors) per call.
const MAX_READERS: usize = 8;

/// The page cache of a reader connection, in SQLite's notation (negative: KiB).
const READER_CACHE_KIB: i64 = -256;

/// The page cache of the writer connection (negative: KiB).
const WRITER_CACHE_KIB: i64 = -256;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

/// A parsed `sqlite:` URL.
#[derive(Debug, Clone)]
pub(crate) struct SqliteTarget {
    /// The database file, or `None` for an in-memory database.
    path: Option<PathBuf>,
    /// Create the file when it does not exist (`mode=rwc`, the default) or not (`mode=rw`).
    create: bool,
}

impl SqliteTarget {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or a bare file path, with an
    /// optional `?mode=rwc|rw|memory`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let rest = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(invalid(
                "expected `sqlite://PATH`, `sqlite::memory:` or a file path".into(),
            ));
        } else {
            url
        };
        let (file, query) = match rest.split_once('?') {
            Some((file, query)) => (file, Some(query)),
            None => (rest, None),
        };
        let mut in_memory = file == ":memory:";
        let mut create = true;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair {
                "" | "mode=rwc" => {}
                "mode=rw" => create = false,
                "mode=memory" => in_memory = true,
                other => {
                    return Err(invalid(format!(
                        "unknown option `{other}` (llmjobs understands mode=rwc, mode=rw and \
                         mode=memory)"
                    )));
                }
            }
        }
        if !in_memory && file.is_empty() {
            return Err(invalid("the database path is empty".into()));
        }
        Ok(SqliteTarget {
            path: (!in_memory).then(|| PathBuf::from(file)),
            create,
        })
    }

    /// The database file, or `None` for an in-memory database.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Opens a connection with the settings every llmjobs connection shares.
    fn connect(&self, durability: Durability, read_only: bool) -> rusqlite::Result<Connection> {
        let conn = match &self.path {
            None => Connection::open_in_memory()?,
            Some(path) => {
                let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI;
                if self.create && !read_only {
                    flags |= OpenFlags::SQLITE_OPEN_CREATE;
                }
                Connection::open_with_flags(path, flags)?
            }
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        if self.path.is_some() && !read_only {
            // Persistent: set once by the writer, seen by every later connection.
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        }
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Relaxed => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        if !read_only {
            // The writer touches the right edges of a few indexes and the rows of running jobs:
            // 256 KiB (64 pages) holds them. W1 and W10 ran no slower than with 1 MiB, and a
            // process with 5,000 jobs in flight (W3) holds 150–200 bytes less per job.
            conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        }
        if read_only {
            conn.pragma_update(None, "query_only", true)?;
            // Reads are status lookups and counts; the OS caches the file for them. A big page
            // cache per reader would only multiply the process's memory by the reader count.
            conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
        }
        Ok(conn)
    }
}

/// Connections for reads, opened as needed and kept while idle.
struct ReadPool {
    target: SqliteTarget,
    durability: Durability,
    idle: Mutex<Vec<Connection>>,
    /// At most [`MAX_READERS`] reads at once.
    permits: tokio::sync::Semaphore,
}

impl ReadPool {
    /// Runs `read` on an idle connection (or a new one), then keeps the connection.
    fn with<R>(&self, read: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let idle = self.idle.lock().expect("reader pool lock").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.target.connect(self.durability, true)?,
        };
        let result = read(&conn);
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// Where reads run.
enum Readers {
    /// Connections of their own (a database file).
    Pool(Arc<ReadPool>),
    /// The writer's connection, the only one an in-memory database has.
    Writer,
}

/// The SQLite store.
pub(crate) struct SqliteStore {
    writer: mpsc::UnboundedSender<writer::Request>,
    /// Set by the writer thread if it dies: why.
    failure: Arc<OnceLock<String>>,
    readers: Readers,
    url: String,
    /// Set by `close`: later reads and writes fail with [`Error::Shutdown`].
    closed: AtomicBool,
    /// The shared rate limits' connection, opened when first asked for (file databases only).
    #[cfg(feature = "llm")]
    target: SqliteTarget,
    #[cfg(feature = "llm")]
    rates: OnceLock<Option<Arc<rate::SqliteRates>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, and starts the writer thread.
    pub(crate) async fn open(
        url: &str,
        target: &SqliteTarget,
        durability: Durability,
    ) -> Result<Self> {
        let open_error = |e: rusqlite::Error| Error::Open {
            url: url.to_string(),
            source: Box::new(e),
        };
        let conn = {
            let target = target.clone();
            tokio::task::spawn_blocking(move || target.connect(durability, false))
                .await
                .map_err(|_| Error::Shutdown)?
                .map_err(open_error)?
        };
        // Two processes opening a new database at once must not both create the tables: the
        // second waits for the first's migrations, then finds them applied.
        let guard = match target.path() {
            Some(path) => {
                Some(crate::owner::lock_exclusive(&crate::owner::lock_path(path, "migrate")).await?)
            }
            None => None,
        };
        let conn = tokio::task::spawn_blocking(move || {
            let result = migrate::run(&conn);
            drop(guard);
            result.map(|()| conn)
        })
        .await
        .map_err(|_| Error::Shutdown)??;

        let (tx, rx) = mpsc::unbounded_channel();
        let failure = Arc::new(OnceLock::new());
        {
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("llmjobs-writer".into())
                .spawn(move || writer::run(conn, rx, &failure))?;
        }
        let readers = match target.path() {
            Some(_) => Readers::Pool(Arc::new(ReadPool {
                target: target.clone(),
                durability,
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(MAX_READERS),
            })),
            None => Readers::Writer,
        };
        Ok(SqliteStore {
            writer: tx,
            failure,
            readers,
            url: url.to_string(),
            closed: AtomicBool::new(false),
            #[cfg(feature = "llm")]
            target: target.clone(),
            #[cfg(feature = "llm")]
            rates: OnceLock::new(),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<Reply> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if let Some(failure) = self.failure.get() {
            return Err(Error::Database(failure.clone().into()));
        }
        let (reply, rx) = oneshot::channel();
        if self.writer.send(writer::Request { op, reply }).is_err() {
            return Err(self.writer_gone().await);
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(self.writer_gone().await),
        }
    }

    /// The error for a write that the writer thread dropped unanswered: it died (its failure
    /// says why), unless the store was closed.
    async fn writer_gone(&self) -> Error {
        // The writer records why it died right after its panic unwound, which dropped the
        // requests it held: give it a moment to say so.
        for _ in 0..200 {
            if self.closed.load(Ordering::Acquire) {
                return Error::Shutdown;
            }
            if let Some(failure) = self.failure.get() {
                return Error::Database(failure.clone().into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Error::Database("the database writer thread stopped unexpectedly".into())
    }

    /// Runs `read` on a reader connection.
    async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        match &self.readers {
            Readers::Pool(pool) => {
                let _permit = pool.permits.acquire().await.map_err(|_| Error::Shutdown)?;
                let pool = pool.clone();
                match tokio::task::spawn_blocking(move || pool.with(read)).await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(Error::Shutdown),
                }
            }
            Readers::Writer => {
                let (tx, rx) = oneshot::channel();
                let op = WriteOp::Read(writer::ReadFn(Box::new(move |conn| {
                    let _ = tx.send(read(conn));
                })));
                self.write(op).await?;
                rx.await.map_err(|_| Error::Shutdown)?
            }
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish()
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Database(format!("internal error: the writer answered with {reply:?}").into())
}

/// Reads a job row selected with [`JOB_ROW_COLUMNS`]. A column holding a value of the wrong
/// type is read as its default and named in the row's `problems`: one bad row fails alone.
fn job_row(row: &rusqlite::Row<'_>) -> Result<JobRow> {
    let mut problems = Vec::new();
    let id: String = row
        .get::<_, rusqlite::types::Value>(0)
        .map(|v| match v {
            rusqlite::types::Value::Text(id) => id,
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|_| "?".into());
    let p = &mut problems;
    let text = "text";
    let int = "an integer";
    Ok(JobRow {
        name: lenient(row, 1, text, p),
        status: lenient(row, 2, text, p),
        result: lenient(row, 3, text, p),
        error: lenient(row, 4, text, p),
        progress: lenient(row, 5, text, p),
        priority: lenient(row, 6, int, p),
        concurrency_key: lenient(row, 7, text, p),
        attempts: lenient(row, 8, int, p),
        max_attempts: lenient(row, 9, int, p),
        owner: lenient(row, 10, text, p),
        cancel_requested: lenient(row, 11, int, p),
        needs_review: lenient(row, 12, int, p),
        run_at: lenient(row, 13, int, p),
        created_at: lenient(row, 14, int, p),
        started_at: lenient(row, 15, int, p),
        completed_at: lenient(row, 16, int, p),
        idempotency_key: lenient(row, 17, text, p),
        earlier_runs: lenient(row, 18, text, p),
        attempt_errors: lenient(row, 19, text, p),
        id,
        problems,
    })
}

/// Runs `sql` with `params` and reads every row with `map`.
/// The maintained counters: `(name, state, n)` for every name and state with jobs.
fn counter_rows(conn: &Connection) -> Result<Vec<(String, String, u64)>> {
    query_all(
        conn,
        "SELECT name, status, n FROM llmjobs_counts WHERE n <> 0",
        [],
        |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, i64>(2)?.unsigned_abs(),
            ))
        },
    )
}

impl SqliteStore {
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn llm_write(&self, write: writer::LlmWrite) -> Result<()> {
        match self.write(WriteOp::Llm(write)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut map: impl FnMut(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        match self.write(WriteOp::Enqueue(job)).await? {
            Reply::Enqueued(enqueued) => Ok(enqueued),
            other => Err(unexpected(other)),
        }
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        match self.write(WriteOp::EnqueueMany(jobs)).await? {
            Reply::EnqueuedMany(enqueued) => Ok(enqueued),
            other => Err(unexpected(other)),
        }
    }

    async fn retry(&self, id: JobId, clear_journal: bool) -> Result<RetryEffect> {
        match self.write(WriteOp::Retry { id, clear_journal }).await? {
            Reply::Retry(effect) => Ok(effect),
            other => Err(unexpected(other)),
        }
    }

    async fn claim(&self, request: ClaimRequest) -> Result<super::Claimed> {
        match self.write(WriteOp::Claim(request)).await? {
            Reply::Claimed(claimed) => Ok(claimed),
            other => Err(unexpected(other)),
        }
    }

    async fn finish(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        finish: Finish,
        progress: Option<String>,
    ) -> Result<Option<JobState>> {
        let op = WriteOp::Finish {
            id,
            owner,
            attempt,
            finish,
            progress,
        };
        match self.write(op).await? {
            Reply::Finished(state) => Ok(state),
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
        self.read(move |conn| {
            let sql = format!("SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs WHERE id = ?");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([id.to_string()])?;
            match rows.next()? {
                Some(row) => job_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRow>> {
        self.read(move |conn| {
            let (sql, params) = list::query(&filter);
            query_all(conn, &sql, rusqlite::params_from_iter(params), job_row)
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.read(counter_rows).await
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
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT DISTINCT owner FROM llmjobs_jobs \
                 WHERE status = 'running' AND owner IS NOT NULL AND owner <> ?",
                [&*except],
                |row| Ok(row.get(0)?),
            )
        })
        .await
    }

    async fn release_owner(&self, owner: String, why: Release) -> Result<u64> {
        match self.write(WriteOp::ReleaseOwner { owner, why }).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn release_expired(&self, owners: Vec<String>, now: i64) -> Result<u64> {
        match self.write(WriteOp::ReleaseExpired { owners, now }).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel_requests(&self, owner: Arc<str>) -> Result<Vec<JobId>> {
        let ids: Vec<String> = self
            .read(move |conn| {
                query_all(
                    conn,
                    "SELECT id FROM llmjobs_jobs \
                     WHERE status = 'running' AND owner = ? AND cancel_requested = 1",
                    [&*owner],
                    |row| Ok(row.get(0)?),
                )
            })
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn record_usage(&self, entries: Vec<super::LedgerEntry>) -> Result<()> {
        self.llm_write(writer::LlmWrite::Record(entries)).await
    }

    async fn job_budget(&self, id: JobId) -> Result<Option<String>> {
        self.read(move |conn| usage::job_budget(conn, id)).await
    }

    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        self.read(move |conn| usage::aggregate(conn, &filter)).await
    }

    async fn cached_answer(&self, key: String, now: i64) -> Result<Option<String>> {
        self.read(move |conn| usage::cached(conn, &key, now)).await
    }

    async fn cache_answer(&self, entry: super::CacheEntry) -> Result<()> {
        self.llm_write(writer::LlmWrite::Cache(entry)).await
    }

    async fn reserve_budget(
        &self,
        claim: super::budget::BudgetClaim,
    ) -> Result<super::budget::BudgetDecision> {
        match self
            .write(WriteOp::Llm(writer::LlmWrite::Reserve(claim)))
            .await?
        {
            Reply::Budget(decision) => Ok(decision),
            other => Err(unexpected(other)),
        }
    }

    async fn renew_budget(&self, id: String, lease_ms: i64) -> Result<()> {
        self.llm_write(writer::LlmWrite::Renew { id, lease_ms })
            .await
    }

    async fn settle_budget(&self, id: String, entries: Vec<super::LedgerEntry>) -> Result<()> {
        self.llm_write(writer::LlmWrite::Settle { id, entries })
            .await
    }

    async fn load_steps(&self, id: JobId) -> Result<Vec<StepRecord>> {
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT seq, name, output FROM llmjobs_steps WHERE job_id = ? ORDER BY seq",
                [id.to_string()],
                |row| {
                    Ok(StepRecord {
                        seq: row.get(0)?,
                        name: row.get(1)?,
                        output: row.get(2)?,
                    })
                },
            )
        })
        .await
    }

    async fn append_step(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        step: StepRecord,
    ) -> Result<bool> {
        let op = WriteOp::AppendStep {
            id,
            owner,
            attempt,
            step,
        };
        match self.write(op).await? {
            Reply::Changed(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    async fn save_progress(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        progress: String,
    ) -> Result<()> {
        let op = WriteOp::SaveProgress {
            id,
            owner,
            attempt,
            progress,
        };
        match self.write(op).await? {
            Reply::Changed(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let limit = writer::PRUNE_CHUNK;
            let n = match self.write(WriteOp::Prune { before, limit }).await? {
                Reply::Count(n) => n,
                other => return Err(unexpected(other)),
            };
            deleted += n;
            if n < u64::from(limit) {
                break;
            }
        }
        if deleted > 0 {
            self.write(WriteOp::Checkpoint).await?;
            let mut free = u64::MAX;
            loop {
                let pages = writer::VACUUM_PAGES;
                match self.write(WriteOp::Vacuum { pages }).await? {
                    // Done, or no longer shrinking (another process holds pages back).
                    Reply::Count(left) if left == 0 || left >= free => break,
                    Reply::Count(left) => free = left,
                    other => return Err(unexpected(other)),
                }
            }
            // The vacuum's own pages went through the log: empty it again.
            self.write(WriteOp::Checkpoint).await?;
        }
        Ok(deleted)
    }

    async fn put_schedules(
        &self,
        put: Vec<super::ScheduleDef>,
        undeclare: Vec<String>,
    ) -> Result<()> {
        match self.write(WriteOp::PutSchedules { put, undeclare }).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn remove_schedule(&self, name: String) -> Result<bool> {
        match self.write(WriteOp::RemoveSchedule { name }).await? {
            Reply::Changed(removed) => Ok(removed),
            other => Err(unexpected(other)),
        }
    }

    async fn schedules(&self) -> Result<Vec<super::ScheduleRow>> {
        self.read(writer::read_schedules).await
    }

    async fn fire_ticks(&self, ticks: super::TickJobs) -> Result<super::Fired> {
        match self.write(WriteOp::FireTicks(ticks)).await? {
            Reply::Fired(fired) => Ok(fired),
            other => Err(unexpected(other)),
        }
    }

    async fn close(&self) {
        // The writer drains what it has queued; an empty op that round-trips proves it.
        let _ = self.write(WriteOp::Flush).await;
        self.closed.store(true, Ordering::Release);
        if let Readers::Pool(pool) = &self.readers {
            pool.idle.lock().expect("reader pool lock").clear();
        }
    }

    #[cfg(feature = "llm")]
    fn rate_store(&self) -> Option<Arc<dyn super::rate::RateStore>> {
        let rates = self.rates.get_or_init(|| {
            self.target.path()?;
            match rate::SqliteRates::open(&self.target) {
                Ok(rates) => Some(Arc::new(rates)),
                Err(error) => {
                    tracing::warn!(%error, "cannot open the shared rate limits; keeping them per process");
                    None
                }
            }
        });
        rates.clone().map(|r| r as Arc<dyn super::rate::RateStore>)
    }

    fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    #[cfg(feature = "_fault-injection")]
    async fn inject(&self, fault: super::Fault) -> Result<()> {
        match self.write(WriteOp::Inject(fault)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// Whether a driver error is SQLite's "busy" or "locked".
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_name_the_file_or_memory() {
        let path = |url: &str| SqliteTarget::parse(url).unwrap().path.clone();
        assert_eq!(path("sqlite://jobs.db"), Some("jobs.db".into()));
        assert_eq!(
            path("sqlite:///var/lib/jobs.db"),
            Some("/var/lib/jobs.db".into())
        );
        assert_eq!(path("sqlite:jobs.db?mode=rwc"), Some("jobs.db".into()));
        assert_eq!(path("data/jobs.db"), Some("data/jobs.db".into()));
        assert_eq!(path("sqlite::memory:"), None);
        assert_eq!(path("sqlite://:memory:"), None);
        assert_eq!(path("sqlite://jobs?mode=memory"), None);
        assert!(
            !SqliteTarget::parse("sqlite://jobs.db?mode=rw")
                .unwrap()
                .create
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |url: &str| SqliteTarget::parse(url).unwrap_err().to_string();
        assert!(err("postgres://localhost/jobs").contains("expected `sqlite://PATH`"));
        assert!(err("sqlite://").contains("path is empty"));
        assert!(err("sqlite://jobs.db?cache=shared").contains("unknown option `cache=shared`"));
    }
}
