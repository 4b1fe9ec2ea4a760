//! Storage: a small set of job-level operations, one implementation per backend.

use std::sync::Arc;

use crate::status::{JobFilter, JobState, JobStatus, from_ms};
use crate::{Error, JobId, Result};

pub(crate) mod budget;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
// Shared LLM rate limits: only the LLM client uses them.
#[cfg(feature = "llm")]
pub(crate) mod rate;
mod schedule;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
pub(crate) mod usage;

pub(crate) use schedule::{Fired, ScheduleDef, ScheduleRow, TickJobs};

/// A job to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) args: String,
    pub(crate) priority: i32,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) key_limit: Option<u32>,
    pub(crate) max_attempts: u32,
    pub(crate) run_at: i64,
    pub(crate) created_at: i64,
    /// Inserted already claimed by this worker (a local hand-off), rather than pending.
    pub(crate) claimed_by: Option<LocalClaim>,
    /// Spawning returns the job that holds this key, if one does.
    pub(crate) idempotency_key: Option<String>,
    /// How long after its job ends a key still holds (milliseconds); `None`: until the job is
    /// pruned.
    pub(crate) idempotency_window: Option<i64>,
    /// The LLM budget the call set (JSON of a [`crate::Budget`]), kept beside the job.
    pub(crate) budget: Option<String>,
}

/// What inserting a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// A new job: running under its local claim (`true`) or pending.
    Inserted { running: bool },
    /// The job that holds the idempotency key; nothing was inserted.
    Existing(JobId),
}

/// The job that holds an idempotency key, as a spawn with that key meets it.
pub(crate) struct KeyHolder {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) args: String,
}

impl KeyHolder {
    /// A job of the same batch that took the key first.
    pub(crate) fn of(job: &NewJob) -> KeyHolder {
        KeyHolder {
            id: job.id.to_string(),
            name: job.name.clone(),
            args: job.args.clone(),
        }
    }

    /// The holder's id, if `job` is the same work (same name, same arguments); else the error
    /// that names the key.
    pub(crate) fn check(self, key: &str, job: &NewJob) -> Result<JobId> {
        let id: JobId = self.id.parse().map_err(|e| Error::CorruptRow {
            id: self.id.clone(),
            reason: format!("{e}"),
        })?;
        let same_args = self.args == job.args
            || serde_json::from_str::<serde_json::Value>(&self.args).ok()
                == serde_json::from_str::<serde_json::Value>(&job.args).ok();
        if self.name == job.name && same_args {
            Ok(id)
        } else {
            Err(Error::IdempotencyConflict {
                key: key.to_string(),
                existing: id,
                name: self.name,
            })
        }
    }
}

/// What `retry` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryEffect {
    /// The job is pending again.
    Retried,
    /// The job is in this state, which cannot be retried.
    NotRetryable(JobState),
    /// No such job.
    NotFound,
}

/// A job handed straight to a local worker at spawn: it is inserted `running`, with its first
/// attempt started, so no claim round trip is needed. Under limits, the insert checks them
/// (atomically, in the write transaction) and inserts the job `pending` when one is reached.
#[derive(Debug, Clone)]
pub(crate) struct LocalClaim {
    pub(crate) owner: Arc<str>,
    pub(crate) lease_until: i64,
    /// The job's `max_concurrency`, counted over every process.
    pub(crate) name_limit: Option<u32>,
    /// The job's key limit, for its concurrency key.
    pub(crate) key_limit: Option<u32>,
    /// The runtime's `global_concurrency`.
    pub(crate) global_limit: Option<u32>,
}

/// How many jobs of one name a claim may take.
#[derive(Debug, Clone)]
pub(crate) struct NameQuota {
    pub(crate) name: &'static str,
    /// The job's `max_concurrency`, counted over every process sharing the database.
    pub(crate) limit: Option<u32>,
}

/// A request to move due pending jobs to `running` under `owner`.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    pub(crate) owner: Arc<str>,
    pub(crate) now: i64,
    pub(crate) lease_until: i64,
    /// At most this many jobs.
    pub(crate) slots: u32,
    /// Only jobs of these names (the ones this process can run).
    pub(crate) names: Arc<[NameQuota]>,
    /// At most this many running jobs over the whole database.
    pub(crate) global_limit: Option<u32>,
}

/// A job a claim handed to this worker.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedJob {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) args: String,
    /// The attempt number this claim started (1 for the first).
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    /// The job never started before: its journal is empty.
    pub(crate) fresh: bool,
}

/// What a claim took, and whether it saw the queue empty.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub(crate) jobs: Vec<ClaimedJob>,
    /// The claim read every due pending job of the names it asked for and left none behind
    /// (none passed over for a limit, none beyond its slots): until a job is spawned, put back
    /// or comes due, another claim would find nothing. `false` whenever it cannot tell.
    pub(crate) drained: bool,
}

/// How many attempts a job may make in all when attempts are cut short by crashes: its own
/// `max_attempts`, but at least this many, so that a job without retries survives a restart or
/// two (a deploy, a neighbour's OOM) while a body that kills its process still ends `failed`
/// instead of crash-looping.
pub(crate) const MIN_ATTEMPTS_AGAINST_CRASHES: u32 = 3;

/// Why running jobs go back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Their owner stops gracefully and hands them back: the interrupted attempt is given back.
    HandBack,
    /// Their owner died or lost its lease: the interrupted attempt counts (the poison-job guard).
    Dead,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum Finish {
    Completed { result: String },
    Failed { error: String, needs_review: bool },
    Retry { error: String, run_at: i64 },
    Cancelled,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelEffect {
    /// The job was pending and is now cancelled.
    Cancelled,
    /// The job is running; its owner has been asked to stop it.
    Requested,
    /// The job had already ended in this state; nothing changed.
    AlreadyFinal(JobState),
    /// No such job.
    NotFound,
}

/// A journaled step's stored output.
#[derive(Debug, Clone)]
pub(crate) struct StepRecord {
    pub(crate) seq: u32,
    pub(crate) name: String,
    pub(crate) output: String,
}

/// A job row as read back, with its columns still raw.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) progress: Option<String>,
    pub(crate) priority: i64,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) attempts: i64,
    pub(crate) max_attempts: i64,
    pub(crate) owner: Option<String>,
    pub(crate) cancel_requested: i64,
    pub(crate) needs_review: i64,
    pub(crate) run_at: i64,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) earlier_runs: Option<String>,
    pub(crate) attempt_errors: Option<String>,
    /// Columns that held a value of the wrong type (read as their default), described.
    pub(crate) problems: Vec<String>,
}

/// The columns [`JobRow`] reads, for `SELECT`s.
pub(crate) const JOB_ROW_COLUMNS: &str = "id, name, status, result, error, progress, priority, \
     concurrency_key, attempts, max_attempts, owner, cancel_requested, needs_review, run_at, created_at, started_at, completed_at, \
     idempotency_key, earlier_runs, attempt_errors";

impl JobRow {
    pub(crate) fn state(&self) -> Result<JobState> {
        self.status.parse().map_err(|reason| Error::CorruptRow {
            id: self.id.clone(),
            reason,
        })
    }

    /// The row as a status. Only an id that is not a UUID makes it an error: a column with a
    /// value of the wrong type is reported in the status's `error`, so that one bad row never
    /// hides the others.
    pub(crate) fn to_status(&self) -> Result<JobStatus> {
        let id = self.id.parse::<JobId>().map_err(|e| Error::CorruptRow {
            id: self.id.clone(),
            reason: e.to_string(),
        })?;
        let mut problems = self.problems.clone();
        let progress = match &self.progress {
            None => None,
            Some(text) => match serde_json::from_str(text) {
                Ok(value) => Some(value),
                Err(e) => {
                    problems.push(format!("column `progress` is not JSON: {e}"));
                    None
                }
            },
        };
        let earlier_runs = match &self.earlier_runs {
            None => Vec::new(),
            Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
                problems.push(format!("column `earlier_runs` is not a list of runs: {e}"));
                Vec::new()
            }),
        };
        let attempt_errors = match &self.attempt_errors {
            None => Vec::new(),
            Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
                problems.push(format!(
                    "column `attempt_errors` is not a list of attempt errors: {e}"
                ));
                Vec::new()
            }),
        };
        let corrupt = format!("corrupt row: {}", problems.join("; "));
        let error = match &self.error {
            _ if problems.is_empty() => self.error.clone(),
            Some(stored) if stored.contains(&corrupt) => Some(stored.clone()),
            Some(stored) => Some(format!("{stored} ({corrupt})")),
            None => Some(corrupt),
        };
        Ok(JobStatus {
            id,
            name: self.name.clone(),
            state: self.state()?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(0),
            error,
            progress,
            owner: self.owner.clone(),
            priority: i32::try_from(self.priority).unwrap_or(0),
            concurrency_key: self.concurrency_key.clone(),
            created_at: from_ms(self.created_at),
            started_at: self.started_at.map(from_ms),
            completed_at: self.completed_at.map(from_ms),
            run_at: from_ms(self.run_at),
            cancel_requested: self.cancel_requested != 0,
            needs_review: self.needs_review != 0,
            idempotency_key: self.idempotency_key.clone(),
            earlier_runs,
            attempt_errors,
        })
    }
}

/// How a job ended, as its waiters need it: from its row, or from the outcome this process
/// just committed.
#[derive(Debug, Clone)]
pub(crate) struct Terminal {
    pub(crate) name: String,
    pub(crate) state: JobState,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) needs_review: bool,
}

impl Terminal {
    /// The end an attempt's outcome makes; `None` for a retry, which is no end.
    pub(crate) fn of(name: &str, finish: &Finish) -> Option<Terminal> {
        let (state, result, error, needs_review) = match finish {
            Finish::Completed { result } => {
                (JobState::Completed, Some(result.clone()), None, false)
            }
            Finish::Failed {
                error,
                needs_review,
            } => (JobState::Failed, None, Some(error.clone()), *needs_review),
            Finish::Cancelled => (JobState::Cancelled, None, None, false),
            Finish::Retry { .. } => return None,
        };
        Some(Terminal {
            name: name.to_string(),
            state,
            result,
            error,
            needs_review,
        })
    }

    /// A job that ended cancelled.
    pub(crate) fn cancelled(name: &str) -> Terminal {
        Terminal {
            name: name.to_string(),
            state: JobState::Cancelled,
            result: None,
            error: None,
            needs_review: false,
        }
    }

    /// The end recorded in a row; `None` while the job has not ended.
    pub(crate) fn from_row(row: JobRow) -> Result<Option<Terminal>> {
        let state = row.state()?;
        Ok(state.is_terminal().then_some(Terminal {
            name: row.name,
            state,
            result: row.result,
            error: row.error,
            needs_review: row.needs_review != 0,
        }))
    }
}

/// A hint, from another process, that jobs changed: a wake-up, never the truth (the rows are).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Hint {
    /// Jobs may be waiting to be claimed.
    Available,
    /// These jobs ended (or changed state): their waiters read their rows again.
    Ended(Vec<JobId>),
    /// Cancellation of these running jobs was requested: their owner reads its cancel
    /// requests now.
    CancelRequested(Vec<JobId>),
    /// Hints may have been missed (the listening connection was lost, or one commit ended more
    /// jobs than a hint names): look at everything again.
    Missed,
}

/// Where a store delivers [`Hint`]s.
pub(crate) type HintSink = Arc<dyn Fn(Hint) + Send + Sync>;

/// The job-level operations every backend implements. Every state change is conditional on the
/// state it expects, so a late writer never overwrites a terminal row.
#[async_trait::async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Inserts a job, unless its idempotency key is held; returns once it is durable.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued>;

    /// Inserts every job in one transaction: all of them or, on an error, none.
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Inserts every job inside the transaction open on `conn`, a connection of the
    /// application's own (not this store's) to the same database, as [`Store::enqueue_many`]
    /// would: the jobs exist if and only if that transaction commits, and the other processes
    /// are woken when it does. Nothing is committed here. Only PostgreSQL can.
    #[cfg(feature = "postgres")]
    async fn enqueue_in(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let _ = (conn, jobs);
        Err(crate::Error::NotPostgres {
            operation: "spawn_in",
        })
    }

    /// Puts a failed or cancelled job back to `pending` with a fresh attempt budget, its earlier
    /// run kept in its history; its journal is cleared when `clear_journal`.
    async fn retry(&self, id: JobId, clear_journal: bool) -> Result<RetryEffect>;

    /// Moves due pending jobs to `running` for `request.owner`, honouring the limits.
    async fn claim(&self, request: ClaimRequest) -> Result<Claimed>;

    /// Records how attempt `attempt` of `owner` ended; the state the job is in now. A cancel
    /// requested meanwhile wins: the job ends `cancelled` whatever the outcome. `None` when the
    /// row was no longer this attempt's (cancelled, or recovered by another worker), in which
    /// case nothing changed. `progress` is the attempt's last progress report.
    async fn finish(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        finish: Finish,
        progress: Option<String>,
    ) -> Result<Option<JobState>>;

    /// Cancels a pending job, or asks the owner of a running one to stop it.
    async fn cancel(&self, id: JobId) -> Result<CancelEffect>;

    /// One job's row.
    async fn get(&self, id: JobId) -> Result<Option<JobRow>>;

    /// Jobs, newest first, as `filter` selects them, at a cost of the rows returned.
    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRow>>;

    /// How many jobs of each name are in each state: `(name, state, count)`.
    async fn counts(&self) -> Result<Vec<(String, String, u64)>>;

    /// Renews the lease of every running job of `owner`.
    async fn heartbeat(&self, owner: Arc<str>, lease_until: i64) -> Result<()>;

    /// Owners (other than `except`) that have running jobs.
    async fn running_owners(&self, except: Arc<str>) -> Result<Vec<String>>;

    /// Hands every running job of `owner` back to `pending` (a departing or dead owner). A job
    /// whose cancellation was requested ends `cancelled` instead; with [`Release::Dead`], one
    /// whose interrupted attempt was its last ends `failed`.
    async fn release_owner(&self, owner: String, why: Release) -> Result<u64>;

    /// Hands back, as [`Release::Dead`], the running jobs of `owners` whose lease expired
    /// before `now`. Never the jobs of other owners.
    async fn release_expired(&self, owners: Vec<String>, now: i64) -> Result<u64>;

    /// Running jobs of `owner` whose cancellation was requested.
    async fn cancel_requests(&self, owner: Arc<str>) -> Result<Vec<JobId>>;

    /// The journal of a job, in call order.
    async fn load_steps(&self, id: JobId) -> Result<Vec<StepRecord>>;

    /// Appends a step's output to the journal of a job whose attempt `attempt` `owner` runs.
    /// Returns `false` when the job is no longer that attempt's (nothing is written then).
    async fn append_step(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        step: StepRecord,
    ) -> Result<bool>;

    /// Stores the latest progress report of attempt `attempt` of a job `owner` runs.
    async fn save_progress(
        &self,
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        progress: String,
    ) -> Result<()>;

    /// Deletes terminal jobs (and their journals) that ended before `before`.
    async fn prune(&self, before: i64) -> Result<u64>;

    /// Writes schedules (a definition unchanged keeps its state: the ticks it fired and where
    /// its catch-up starts), and removes the schedules in `undeclare` that code declared.
    async fn put_schedules(&self, put: Vec<ScheduleDef>, undeclare: Vec<String>) -> Result<()>;

    /// Removes a schedule; whether there was one.
    async fn remove_schedule(&self, name: String) -> Result<bool>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleRow>>;

    /// Fires ticks of a schedule: each tick not fired yet, by any process, is recorded and its
    /// job inserted in the same transaction, so every tick fires once.
    async fn fire_ticks(&self, ticks: TickJobs) -> Result<Fired>;

    /// Whether `owner` is alive, if the backend can tell by itself (PostgreSQL: its advisory
    /// lock is held); `None` to ask the lock files beside the database.
    async fn owner_liveness(&self, owner: &str) -> Result<Option<bool>> {
        let _ = owner;
        Ok(None)
    }

    /// Holds `owner`'s liveness lock for as long as the store lives, if the backend keeps one
    /// (PostgreSQL); taken again if it was lost. Cheap once it is held. `Ok(false)` when it
    /// had been lost (and is held again now): another worker may have taken this owner's jobs
    /// meanwhile, so the attempts that started before cannot be proven this worker's.
    async fn hold_owner(&self, owner: &str) -> Result<bool> {
        let _ = owner;
        Ok(true)
    }

    /// Delivers hints of what other processes changed to `sink` until the store closes, if the
    /// backend can (PostgreSQL: `LISTEN`); `false` when it cannot, and the runtime polls.
    fn listen(&self, sink: HintSink) -> bool {
        let _ = sink;
        false
    }

    /// Appends rows to the usage ledger.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn record_usage(&self, entries: Vec<LedgerEntry>) -> Result<()>;

    /// The LLM budget a call set on job `id` (JSON), if it set one.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn job_budget(&self, id: JobId) -> Result<Option<String>>;

    /// The usage ledger's sums that `filter` asks for.
    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>>;

    /// The completion cache's answer under `key`, unless it expired by `now`.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn cached_answer(&self, key: String, now: i64) -> Result<Option<String>>;

    /// Puts an answer in the completion cache, replacing any under its key.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn cache_answer(&self, entry: CacheEntry) -> Result<()>;

    /// Reserves a call's most possible cost against its budgets, in one transaction that
    /// takes turns with every other reservation of the same budgets, or says which budget it
    /// does not fit in.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn reserve_budget(&self, claim: budget::BudgetClaim) -> Result<budget::BudgetDecision>;

    /// Extends a budget reservation by `lease_ms` from now.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn renew_budget(&self, id: String, lease_ms: i64) -> Result<()>;

    /// Replaces a budget reservation with the ledger rows of what was really spent, in one
    /// transaction.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    async fn settle_budget(&self, id: String, entries: Vec<LedgerEntry>) -> Result<()>;

    /// Waits until every write accepted so far is durable, then stops accepting writes.
    async fn close(&self);

    /// The rate limits this store shares between processes; `None` when no other process can
    /// open the database (in-memory SQLite).
    #[cfg(feature = "llm")]
    fn rate_store(&self) -> Option<Arc<dyn rate::RateStore>> {
        None
    }

    /// Why the store can no longer write, if it failed beyond repair (its writer died).
    fn failure(&self) -> Option<String>;

    /// Makes the database fail for real, for llmjobs' own tests.
    #[cfg(feature = "_fault-injection")]
    async fn inject(&self, fault: Fault) -> Result<()>;
}

pub(crate) use crate::usage::LedgerEntry;

/// An answer for the completion cache.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "llm"), allow(dead_code))] // made by the LLM bridge
pub(crate) struct CacheEntry {
    /// The hash of the normalised request.
    pub(crate) key: String,
    pub(crate) model: String,
    /// The answer, as JSON.
    pub(crate) response: String,
    /// When it expires, in milliseconds since the epoch.
    pub(crate) expires_at: i64,
}

/// A failure [`Store::inject`] causes.
#[cfg(feature = "_fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The database file may not grow (`true`) or may again (`false`): writes that need a new
    /// page fail with the database's own "disk full" error.
    DiskFull(bool),
    /// The writer thread panics.
    KillWriter,
}
