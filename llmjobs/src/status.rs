use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::JobId;

/// Where a job is in its life. `Completed`, `Failed` and `Cancelled` are terminal: once a job
/// reaches one, nothing changes it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed by a worker (new, retrying after a back-off, or handed back).
    Pending,
    /// An attempt is running in some worker.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error, after its last allowed attempt or a permanent error.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// The name stored in the database (`"pending"`, `"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => {
                return Err(format!(
                    "unknown job state `{other}` (expected pending, running, completed, failed or cancelled)"
                ));
            }
        })
    }
}

/// A snapshot of one job, as stored in the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id.
    pub id: JobId,
    /// The job's registered name.
    pub name: String,
    /// Where the job is.
    pub state: JobState,
    /// How many attempts have started (including one running now).
    pub attempts: u32,
    /// How many attempts the job may make in all (1 + retries). Attempts cut short by the death
    /// of their worker count too, and may go on until at least the third, so `attempts` can
    /// exceed this for a job whose workers died.
    pub max_attempts: u32,
    /// The error of the last failed attempt, if any.
    pub error: Option<String>,
    /// The latest progress report, as JSON, if the job reported any.
    pub progress: Option<serde_json::Value>,
    /// The worker that runs (or last ran) the job.
    pub owner: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// The concurrency key the job runs under, if any.
    pub concurrency_key: Option<String>,
    /// When the job was spawned.
    pub created_at: SystemTime,
    /// When its first attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached a terminal state.
    pub completed_at: Option<SystemTime>,
    /// For a pending job: when it becomes due (the next retry, after a back-off).
    pub run_at: SystemTime,
    /// Whether a cancellation was requested while it ran.
    pub cancel_requested: bool,
    /// For a `failed` job: it failed because its answer never passed validation, and a person
    /// should review it (see [`ErrorKind::NeedsReview`](crate::ErrorKind::NeedsReview)).
    pub needs_review: bool,
    /// The call's idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// How the job ended before each [`Jobs::retry`](crate::Jobs::retry), oldest first.
    pub earlier_runs: Vec<EarlierRun>,
    /// The error of each attempt of this run that ended in one (it failed, was retried, or its
    /// worker died), oldest first; [`error`](Self::error) is the newest. A
    /// [`Jobs::retry`](crate::Jobs::retry) moves them into the [`EarlierRun`] it records.
    pub attempt_errors: Vec<AttemptError>,
}

/// How one attempt ended in an error: kept in [`JobStatus::attempt_errors`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// What it failed with, cut to [`AttemptError::MAX_CHARS`] characters.
    pub error: String,
    /// When it ended (Unix milliseconds).
    pub ended_at_ms: i64,
}

impl AttemptError {
    /// The longest error text kept per attempt, in characters, so that a job with many
    /// attempts keeps a row of bounded size; the last attempt's error is also kept whole in
    /// [`JobStatus::error`].
    pub const MAX_CHARS: usize = 2000;
}

/// How a job ended before it was retried: kept in its [`JobStatus::earlier_runs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EarlierRun {
    /// `failed` or `cancelled`.
    pub state: JobState,
    /// How many attempts it had made.
    pub attempts: u32,
    /// Its last error.
    pub error: Option<String>,
    /// Whether it needed review.
    #[serde(default)]
    pub needs_review: bool,
    /// When it ended (Unix milliseconds).
    pub ended_at_ms: Option<i64>,
    /// The error of each of its attempts that ended in one, oldest first.
    #[serde(default)]
    pub attempt_errors: Vec<AttemptError>,
}

/// How many jobs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct JobCounts {
    /// Jobs waiting to run.
    pub pending: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs that completed.
    pub completed: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs that were cancelled.
    pub cancelled: u64,
}

impl JobCounts {
    /// Jobs not yet in a terminal state.
    pub fn unfinished(&self) -> u64 {
        self.pending + self.running
    }

    /// All jobs.
    pub fn total(&self) -> u64 {
        self.unfinished() + self.completed + self.failed + self.cancelled
    }

    /// How many are in `state`.
    pub fn of(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Running => self.running,
            JobState::Completed => self.completed,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
        }
    }

    pub(crate) fn add_state(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Pending => &mut self.pending,
            JobState::Running => &mut self.running,
            JobState::Completed => &mut self.completed,
            JobState::Failed => &mut self.failed,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    pub(crate) fn add(&mut self, other: &JobCounts) {
        self.pending += other.pending;
        self.running += other.running;
        self.completed += other.completed;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
    }

    /// The counts per name from a store's counter rows `(name, state, n)`.
    pub(crate) fn by_name(
        rows: Vec<(String, String, u64)>,
    ) -> crate::Result<std::collections::BTreeMap<String, JobCounts>> {
        let mut by_name = std::collections::BTreeMap::<String, JobCounts>::new();
        for (name, status, n) in rows {
            let state = status
                .parse::<JobState>()
                .map_err(|reason| crate::Error::CorruptRow {
                    id: format!("({n} jobs named `{name}`)"),
                    reason,
                })?;
            by_name.entry(name).or_default().add_state(state, n);
        }
        Ok(by_name)
    }

    /// The counts of all names together.
    pub(crate) fn sum<'a>(counts: impl IntoIterator<Item = &'a JobCounts>) -> JobCounts {
        let mut total = JobCounts::default();
        for counts in counts {
            total.add(counts);
        }
        total
    }
}

/// Which jobs [`Jobs::list`](crate::Jobs::list) returns: newest first, optionally only one
/// state or one name, a page at a time.
///
/// A listing costs what it returns, however many jobs the database holds. Page on with
/// [`JobFilter::after`], passing the id of the last job of the previous page:
///
/// ```
/// # async fn demo(jobs: &llmjobs::Jobs) -> llmjobs::Result<()> {
/// use llmjobs::{JobFilter, JobState};
/// let mut filter = JobFilter::new().state(JobState::Failed).limit(100);
/// loop {
///     let page = jobs.list(filter.clone()).await?;
///     for job in &page {
///         println!("{} {}: {:?}", job.id, job.name, job.error);
///     }
///     match page.last() {
///         Some(last) if page.len() == 100 => filter = filter.after(last.id),
///         _ => break,
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this name.
    pub name: Option<String>,
    /// Only jobs past this one in the listing's order: spawned before it (newest first), or
    /// after it ([`JobFilter::oldest_first`]).
    pub after: Option<JobId>,
    /// At most this many jobs (default 50).
    pub limit: u32,
    /// Only jobs that need review (`Some(true)`), or only those that do not.
    pub needs_review: Option<bool>,
    /// Only jobs spawned at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only jobs spawned before this time.
    pub created_before: Option<SystemTime>,
    /// Only jobs under this concurrency key.
    pub concurrency_key: Option<String>,
    /// Only the job that holds this idempotency key.
    pub idempotency_key: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            state: None,
            name: None,
            after: None,
            limit: 50,
            needs_review: None,
            created_after: None,
            created_before: None,
            concurrency_key: None,
            idempotency_key: None,
            oldest_first: false,
        }
    }
}

impl JobFilter {
    /// Every job, newest first, 50 at a time.
    pub fn new() -> Self {
        JobFilter::default()
    }

    /// Only jobs in `state`.
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs named `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// At most `limit` jobs.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// The next page after a page that ended with `id`: a keyset cursor, stable while jobs
    /// are being spawned.
    pub fn after(mut self, id: JobId) -> Self {
        self.after = Some(id);
        self
    }

    /// Only jobs that need review (`true`) or only those that do not (`false`).
    pub fn needs_review(mut self, needs_review: bool) -> Self {
        self.needs_review = Some(needs_review);
        self
    }

    /// Only jobs spawned in `[from, until)`.
    pub fn created_between(mut self, from: SystemTime, until: SystemTime) -> Self {
        self.created_after = Some(from);
        self.created_before = Some(until);
        self
    }

    /// Only jobs spawned at or after `time`.
    pub fn created_after(mut self, time: SystemTime) -> Self {
        self.created_after = Some(time);
        self
    }

    /// Only jobs under concurrency key `key`.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Only the job holding idempotency key `key`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Oldest first (the order jobs were spawned in) instead of newest first.
    pub fn oldest_first(mut self) -> Self {
        self.oldest_first = true;
        self
    }
}

impl From<JobState> for JobFilter {
    fn from(state: JobState) -> Self {
        JobFilter::new().state(state)
    }
}

pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub(crate) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in [
            JobState::Pending,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("done".parse::<JobState>().unwrap_err().contains("done"));
    }
}
