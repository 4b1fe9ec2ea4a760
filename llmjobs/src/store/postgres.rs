//! The PostgreSQL backend: workers in any number of processes, on any number of machines,
//! sharing one database through sqlx.
//!
//! Each operation is one statement or one short transaction on a pooled connection. Claims take
//! pending rows with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait for each other
//! nor take a row twice; limits are made exact by transaction-scoped advisory locks on what they
//! count (the global limit, a name's `max_concurrency`, a concurrency key), so only claims that
//! share a limit are serialised. Each worker holds a session advisory lock for its owner id on
//! a connection of its own (see [`liveness`]): a worker that can take it knows the owner died.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::{
    CancelEffect, ClaimRequest, Enqueued, Finish, Fired, HintSink, JobRow, NewJob, Release,
    RetryEffect, ScheduleDef, ScheduleRow, StepRecord, Store, TickJobs,
};
use crate::status::{JobFilter, JobState};
use crate::{Durability, Error, JobId, Result};

mod batch;
mod budget;
mod cancel;
mod claim;
mod enqueue;
mod enqueue_in;
mod finish;
mod inspect;
mod list;
mod liveness;
mod locks;
mod migrate;
mod notify;
mod prune;
#[cfg(feature = "llm")]
mod rate;
mod read;
mod release;
mod retry;
mod schedule;
mod steps;
pub(crate) mod usage;

pub(crate) use inspect::PgReader;

/// The schema llmjobs' tables live in unless the URL names another.
const DEFAULT_SCHEMA: &str = "llmjobs";

/// The URL query parameter that names the schema; removed before the URL reaches sqlx.
const SCHEMA_PARAM: &str = "llmjobs_schema";

/// Connections in the pool of one process.
const MAX_CONNECTIONS: u32 = 16;

/// How long an operation waits for a pooled connection before failing: while the server is
/// down, a spawn fails after this long, saying so.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a transaction that lost a deadlock or a serialization race is run again.
const CONFLICT_RETRIES: u32 = 8;

/// A parsed `postgres://` URL.
#[derive(Debug, Clone)]
pub(crate) struct PgTarget {
    /// The URL without llmjobs' own parameters, as sqlx reads it.
    url: String,
    /// The schema llmjobs' tables live in.
    schema: String,
}

impl PgTarget {
    /// Parses `postgres://…` or `postgresql://…`, taking out `llmjobs_schema=NAME`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "expected `postgres://` or `postgresql://`".to_string(),
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut schema = DEFAULT_SCHEMA.to_string();
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((SCHEMA_PARAM, name)) => schema = name.to_string(),
                _ if pair == SCHEMA_PARAM => {
                    return Err(invalid(format!("`{SCHEMA_PARAM}` needs a value")));
                }
                _ => kept.push(pair),
            }
        }
        let valid = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(invalid(format!(
                "`{SCHEMA_PARAM}={schema}`: a schema name is lowercase letters, digits and `_`, \
                 starting with a letter or `_`, at most 63 characters"
            )));
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(PgTarget { url, schema })
    }

    /// The schema llmjobs' tables live in.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// The options of every connection: llmjobs' schema first on the search path, so that the
    /// SQL names its tables unqualified.
    fn connect_options(&self, durability: Durability) -> Result<PgConnectOptions> {
        let options: PgConnectOptions = self.url.parse().map_err(|e| Error::InvalidUrl {
            url: self.url.clone(),
            reason: format!("{e}"),
        })?;
        let mut settings = vec![("search_path", self.schema.clone())];
        if durability == Durability::Relaxed {
            settings.push(("synchronous_commit", "off".to_string()));
        }
        Ok(options.application_name("llmjobs").options(settings))
    }
}

/// The PostgreSQL store.
pub(crate) struct PgStore {
    pool: PgPool,
    /// The batched writes' own connections (see `batch::writes_options`).
    writes: PgPool,
    /// Spawns and outcomes, written in batches.
    batcher: batch::Batcher,
    /// The schema llmjobs' tables live in.
    schema: String,
    /// The channel this schema's wake-ups go out on.
    channel: String,
    /// For the listening connection.
    options: PgConnectOptions,
    /// Ends the listener.
    stop: CancellationToken,
    /// This worker's owner lock, on a connection of its own.
    liveness: liveness::OwnerHold,
    url: String,
    /// Set by `close`: later reads and writes fail with [`Error::Shutdown`].
    closed: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // sqlx's own words ("pool timed out while waiting for an open connection") do not
            // say that the likely cause is the server.
            sqlx::Error::PoolTimedOut => Error::Database(
                format!(
                    "no connection to the PostgreSQL server within {} s: it is down or \
                     unreachable, or all {MAX_CONNECTIONS} of this process's connections stayed \
                     busy",
                    ACQUIRE_TIMEOUT.as_secs()
                )
                .into(),
            ),
            e => Error::Database(Box::new(e)),
        }
    }
}

/// Whether `e` is a transaction that lost a race it can win by running again: a deadlock, a
/// serialization failure, or a unique key another transaction inserted meanwhile.
fn is_conflict(e: &Error) -> bool {
    let Error::Database(source) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    matches!(db.code().as_deref(), Some("40P01" | "40001"))
}

/// Runs `$body` (an expression using `$conn: &mut PgConnection`) in a transaction, again when
/// it loses a deadlock or a serialization race, and commits.
macro_rules! transaction {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            let mut tx = $store.begin().await?;
            let result = {
                let $conn: &mut sqlx::PgConnection = &mut *tx;
                $body.await
            };
            let result = match result {
                Ok(value) => tx.commit().await.map(|()| value).map_err(Error::from),
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match result {
                Err(e) if $crate::store::postgres::is_conflict(&e) && tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "a job database transaction lost a race; running it again");
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
                }
                other => break other,
            }
        }
    }};
}

impl PgStore {
    /// Connects and migrates the database.
    pub(crate) async fn open(url: &str, target: &PgTarget, durability: Durability) -> Result<Self> {
        let open_error = |e: sqlx::Error| Error::Open {
            url: url.to_string(),
            source: Box::new(e),
        };
        let options = target.connect_options(durability)?;
        migrate::run(&options, target.schema()).await?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        let writes = PgPoolOptions::new()
            .max_connections(batch::COMMITTERS as u32)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(batch::writes_options(&options));
        let channel = notify::channel(target.schema());
        Ok(PgStore {
            batcher: batch::Batcher::start(writes.clone(), pool.clone(), channel.clone()),
            writes,
            channel,
            schema: target.schema().to_string(),
            stop: CancellationToken::new(),
            pool,
            liveness: liveness::OwnerHold::new(options.clone()),
            options,
            url: url.to_string(),
            closed: AtomicBool::new(false),
        })
    }

    /// A new transaction, unless the store is closed.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.check_open()?;
        Ok(self.pool.begin().await?)
    }

    /// The pool, unless the store is closed.
    fn pool(&self) -> Result<&PgPool> {
        self.check_open()?;
        Ok(&self.pool)
    }

    /// `Shutdown` for an error of a write that raced `close`.
    fn after_close(&self, e: Error) -> Error {
        if self.closed.load(Ordering::Acquire) {
            Error::Shutdown
        } else {
            e
        }
    }

    /// Tells the other processes, in a statement of its own (after the change committed).
    async fn notify(&self, notice: notify::Notice) {
        notify::tell(&self.pool, &notice, &self.channel).await;
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        self.check_open()?;
        let mut enqueued =
            (self.batcher.enqueue(vec![job]).await).map_err(|e| self.after_close(e))?;
        Ok(enqueued.pop().expect("one reply per job"))
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.check_open()?;
        self.batcher
            .enqueue(jobs)
            .await
            .map_err(|e| self.after_close(e))
    }

    async fn enqueue_in(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        self.check_open()?;
        enqueue_in::enqueue_in(conn, &self.schema, &self.channel, &jobs).await
    }

    async fn retry(&self, id: JobId, clear_journal: bool) -> Result<RetryEffect> {
        let now = crate::status::now_ms();
        let effect = transaction!(self, |conn| retry::retry(conn, id, clear_journal, now))?;
        if effect == RetryEffect::Retried {
            self.notify(notify::Notice {
                available: true,
                ..Default::default()
            })
            .await;
        }
        Ok(effect)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<super::Claimed> {
        transaction!(self, |conn| claim::claim(conn, &request))
    }

    async fn finish(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        finish: Finish,
        progress: Option<String>,
    ) -> Result<Option<JobState>> {
        self.check_open()?;
        let outcome = finish::Outcome {
            id,
            owner,
            attempt,
            finish,
            progress,
        };
        self.batcher
            .finish(outcome)
            .await
            .map_err(|e| self.after_close(e))
    }

    async fn cancel(&self, id: JobId) -> Result<CancelEffect> {
        let now = crate::status::now_ms();
        let effect = cancel::cancel(self.pool()?, id, now).await?;
        match effect {
            CancelEffect::Cancelled => {
                self.notify(notify::Notice {
                    ended: vec![id],
                    ..Default::default()
                })
                .await;
            }
            // Its owner, in whichever process, stops it now rather than at its next look at
            // the requests.
            CancelEffect::Requested => {
                self.notify(notify::Notice {
                    cancel_requested: vec![id],
                    ..Default::default()
                })
                .await;
            }
            CancelEffect::AlreadyFinal(_) | CancelEffect::NotFound => {}
        }
        Ok(effect)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRow>> {
        read::get(self.pool()?, id).await
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRow>> {
        list::list(self.pool()?, &filter).await
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>> {
        read::counts(self.pool()?).await
    }

    async fn heartbeat(&self, owner: Arc<str>, lease_until: i64) -> Result<()> {
        release::heartbeat(self.pool()?, &owner, lease_until).await
    }

    async fn running_owners(&self, except: Arc<str>) -> Result<Vec<String>> {
        read::running_owners(self.pool()?, &except).await
    }

    async fn release_owner(&self, owner: String, why: Release) -> Result<u64> {
        let now = crate::status::now_ms();
        let released = release::release_owner(self.pool()?, &owner, why, now).await?;
        if released > 0 {
            self.notify(notify::Notice::released()).await;
        }
        Ok(released)
    }

    async fn release_expired(&self, owners: Vec<String>, now: i64) -> Result<u64> {
        let released = release::release_expired(self.pool()?, &owners, now).await?;
        if released > 0 {
            self.notify(notify::Notice::released()).await;
        }
        Ok(released)
    }

    async fn cancel_requests(&self, owner: Arc<str>) -> Result<Vec<JobId>> {
        read::cancel_requests(self.pool()?, &owner).await
    }

    async fn record_usage(&self, entries: Vec<super::LedgerEntry>) -> Result<()> {
        usage::record(self.pool()?, &entries).await
    }

    async fn job_budget(&self, id: JobId) -> Result<Option<String>> {
        usage::job_budget(self.pool()?, id).await
    }

    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        usage::aggregate(self.pool()?, &filter).await
    }

    async fn cached_answer(&self, key: String, now: i64) -> Result<Option<String>> {
        usage::cached(self.pool()?, &key, now).await
    }

    async fn cache_answer(&self, entry: super::CacheEntry) -> Result<()> {
        usage::cache(self.pool()?, &entry, crate::status::now_ms()).await
    }

    async fn reserve_budget(
        &self,
        claim: super::budget::BudgetClaim,
    ) -> Result<super::budget::BudgetDecision> {
        transaction!(self, |conn| budget::reserve(conn, &claim))
    }

    async fn renew_budget(&self, id: String, lease_ms: i64) -> Result<()> {
        budget::renew(&mut *self.pool()?.acquire().await?, &id, lease_ms).await
    }

    async fn settle_budget(&self, id: String, entries: Vec<super::LedgerEntry>) -> Result<()> {
        transaction!(self, |conn| budget::settle(conn, &id, &entries))
    }

    async fn load_steps(&self, id: JobId) -> Result<Vec<StepRecord>> {
        read::load_steps(self.pool()?, id).await
    }

    async fn append_step(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        step: StepRecord,
    ) -> Result<bool> {
        let now = crate::status::now_ms();
        steps::append_step(self.pool()?, id, &owner, attempt, &step, now).await
    }

    async fn save_progress(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        progress: String,
    ) -> Result<()> {
        steps::save_progress(self.pool()?, id, &owner, attempt, &progress).await
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let n = prune::prune_chunk(self.pool()?, before, prune::PRUNE_CHUNK).await?;
            deleted += n;
            if n < u64::from(prune::PRUNE_CHUNK) {
                return Ok(deleted);
            }
        }
    }

    async fn put_schedules(&self, put: Vec<ScheduleDef>, undeclare: Vec<String>) -> Result<()> {
        let now = crate::status::now_ms();
        transaction!(self, |conn| schedule::put_schedules(
            conn, &put, &undeclare, now
        ))
    }

    async fn remove_schedule(&self, name: String) -> Result<bool> {
        transaction!(self, |conn| schedule::remove_schedule(conn, &name))
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        schedule::read_schedules(self.pool()?).await
    }

    async fn fire_ticks(&self, ticks: TickJobs) -> Result<Fired> {
        let now = crate::status::now_ms();
        transaction!(self, |conn| schedule::fire_ticks(conn, &ticks, now))
    }

    async fn owner_liveness(&self, owner: &str) -> Result<Option<bool>> {
        liveness::is_alive(self.pool()?, owner).await.map(Some)
    }

    async fn hold_owner(&self, owner: &str) -> Result<bool> {
        self.check_open()?;
        self.liveness.hold(owner).await
    }

    fn listen(&self, sink: HintSink) -> bool {
        notify::spawn_listener(
            self.options.clone(),
            self.channel.clone(),
            sink,
            self.stop.clone(),
        );
        true
    }

    async fn close(&self) {
        // Every write was committed before it returned: nothing waits to be made durable.
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        self.pool.close().await;
        self.writes.close().await;
        self.liveness.release().await;
    }

    #[cfg(feature = "llm")]
    fn rate_store(&self) -> Option<Arc<dyn super::rate::RateStore>> {
        Some(Arc::new(rate::PgRates::new(self.pool.clone())))
    }

    fn failure(&self) -> Option<String> {
        // sqlx reconnects by itself: the pool fails for good only once it is closed, which
        // llmjobs does only in `close`.
        ((self.pool.is_closed() || self.writes.is_closed()) && !self.closed.load(Ordering::Acquire))
            .then(|| "the PostgreSQL connection pool was closed".to_string())
    }

    #[cfg(feature = "_fault-injection")]
    async fn inject(&self, fault: super::Fault) -> Result<()> {
        Err(Error::Database(
            format!("fault injection ({fault:?}) is not implemented for PostgreSQL").into(),
        ))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_taken_out_of_the_url() {
        let target =
            PgTarget::parse("postgres://u@h/db?sslmode=require&llmjobs_schema=q1").unwrap();
        assert_eq!(target.schema(), "q1");
        assert_eq!(target.url, "postgres://u@h/db?sslmode=require");
        let target = PgTarget::parse("postgresql://h/db?llmjobs_schema=jobs").unwrap();
        assert_eq!(
            (target.schema(), target.url.as_str()),
            ("jobs", "postgresql://h/db")
        );
        let target = PgTarget::parse("postgres://h/db").unwrap();
        assert_eq!(target.schema(), "llmjobs");
    }

    #[test]
    fn a_schema_name_that_would_need_quoting_is_refused() {
        for bad in ["Jobs", "a b", "1x", "x;drop", ""] {
            let url = format!("postgres://h/db?llmjobs_schema={bad}");
            let err = PgTarget::parse(&url).unwrap_err().to_string();
            assert!(err.contains("schema name"), "{bad}: {err}");
        }
    }
}
