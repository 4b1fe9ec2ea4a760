use std::fmt;
use std::time::Duration;

use crate::JobId;

/// The result type of every fallible llmjobs operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when using llmjobs (as opposed to inside a job body, which
/// returns [`JobError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database at `url` could not be opened or created.
    #[error("cannot open job database `{url}`: {source}")]
    Open {
        /// The URL or path that was given.
        url: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database URL is not one llmjobs understands.
    #[error("invalid database url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL that was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database refused or failed an operation. The source is the driver's own error.
    #[error("job database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The embedded schema migrations could not be applied.
    #[error("cannot migrate the job database: {0}")]
    Migrate(String),
    /// Two jobs were registered under the same name.
    #[error("job name `{name}` is registered twice ({first} and {second})")]
    DuplicateJobName {
        /// The clashing name.
        name: String,
        /// The type registered first.
        first: &'static str,
        /// The type registered second.
        second: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The arguments of a job call could not be serialized.
    #[error("cannot serialize the arguments of job `{name}`: {message}")]
    SerializeArgs {
        /// The job's name.
        name: String,
        /// The serializer's message.
        message: String,
    },
    /// No job with this id exists in the database.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job ended in the `failed` state.
    #[error("job {id} ({name}) failed: {error}")]
    JobFailed {
        /// The job's id.
        id: JobId,
        /// The job's name.
        name: String,
        /// The error recorded for the last attempt.
        error: String,
    },
    /// The job ended `failed` with an answer that never passed validation: a person should
    /// review it.
    #[error("job {id} ({name}) needs human review: {error}")]
    NeedsReview {
        /// The job's id.
        id: JobId,
        /// The job's name.
        name: String,
        /// Why its last answer was rejected.
        error: String,
    },
    /// The job ended in the `cancelled` state.
    #[error("job {id} ({name}) was cancelled")]
    JobCancelled {
        /// The job's id.
        id: JobId,
        /// The job's name.
        name: String,
    },
    /// The job's stored result does not deserialize into the type the handle asked for.
    #[error(
        "job {id} ({name}) completed, but its result does not deserialize as `{expected}`: {message}"
    )]
    ResultType {
        /// The job's id.
        id: JobId,
        /// The job's name.
        name: String,
        /// The Rust type the handle expected.
        expected: &'static str,
        /// The deserializer's message.
        message: String,
    },
    /// A row in the database is not one llmjobs wrote (or it was damaged).
    #[error("corrupt job row {id}: {reason}")]
    CorruptRow {
        /// The id column of the row, as stored.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime has been shut down; it accepts no more work.
    #[error("the job runtime is shut down")]
    Shutdown,
    /// An operation only a PostgreSQL job database can do (enqueueing in the application's
    /// own transaction: [`Jobs::spawn_in`](crate::Jobs::spawn_in)) on a runtime whose job
    /// database is not PostgreSQL. Nothing was recorded.
    #[error(
        "`{operation}` needs a PostgreSQL job database (`postgres://…`); this runtime's is not \
         one, so nothing was recorded"
    )]
    NotPostgres {
        /// The method called.
        operation: &'static str,
    },
    /// Waiting for the job took longer than the given timeout.
    #[error("timed out after {0:?} waiting for the job")]
    WaitTimeout(Duration),
    /// An I/O error outside the database (owner lock files, for instance).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A spawn's idempotency key is held by a job spawned with other arguments (or of another
    /// name): reusing a key for different work is a mistake, not a duplicate.
    #[error(
        "idempotency key `{key}` is held by job {existing} (`{name}`), spawned with different \
         arguments; use another key for different work"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The job that holds it.
        existing: JobId,
        /// That job's name.
        name: String,
    },
    /// `retry` of a job that is not failed or cancelled.
    #[error("job {id} is {state}: only a failed or cancelled job can be retried")]
    NotRetryable {
        /// The job.
        id: JobId,
        /// The state it is in.
        state: crate::JobState,
    },
    /// `handle_of::<J>` of a job of another name.
    #[error("job {id} is a `{found}` job, not `{expected}`")]
    WrongJob {
        /// The job.
        id: JobId,
        /// The name the caller expected.
        expected: &'static str,
        /// The name stored with the job.
        found: String,
    },
    /// [`Jobs::spawn_json`](crate::Jobs::spawn_json) of a name no job registered in this
    /// process has.
    #[error("no job named `{name}` is registered here (known: {})", known_names(.known))]
    UnknownJob {
        /// The name that was asked for.
        name: String,
        /// The names this process knows, sorted.
        known: Vec<String>,
    },
    /// JSON arguments that do not deserialize into the job's (see
    /// [`Jobs::spawn_json`](crate::Jobs::spawn_json)).
    #[error("arguments do not match job `{name}`: {}{message}", field_prefix(.path))]
    InvalidArgs {
        /// The job's name.
        name: String,
        /// The field path that failed (`words`, `items[2].text`); `None` for the arguments as
        /// a whole (not an object, say).
        path: Option<String>,
        /// What the deserializer said.
        message: String,
    },
    /// A schedule's cron expression or time zone is not valid.
    #[error("invalid schedule `{name}`: {reason}")]
    InvalidSchedule {
        /// The schedule's name.
        name: String,
        /// What is wrong, naming the expression or time zone.
        reason: String,
    },
}

fn known_names(known: &[String]) -> String {
    if known.is_empty() {
        "none".into()
    } else {
        known.join(", ")
    }
}

fn field_prefix(path: &Option<String>) -> String {
    path.as_ref()
        .map(|path| format!("field `{path}`: "))
        .unwrap_or_default()
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(Box::new(e))
    }
}

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// May be retried with the job's back-off, if attempts remain.
    Retryable,
    /// Never retried: the job fails at once (bad request, authentication, invalid input).
    Permanent,
    /// May be retried, but not before the given delay (a provider's `Retry-After`).
    RetryAfter(Duration),
    /// Never retried, and a person should look at it: the job produced an answer that never
    /// passed validation. The job ends `failed` with [`JobStatus::needs_review`](crate::JobStatus::needs_review) set.
    NeedsReview,
}

/// The error a job body returns.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?`, as a retryable
/// error. [`JobError::permanent`] marks an error that no retry can fix, and
/// [`JobError::retry_after`] asks for the next attempt to wait at least a given time.
///
/// Like `anyhow::Error`, `JobError` does not itself implement `std::error::Error`, which is what
/// lets every error type convert into it.
pub struct JobError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl JobError {
    /// A retryable error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        JobError {
            kind: ErrorKind::Retryable,
            message: message.to_string(),
            source: None,
        }
    }

    /// An error that is never retried: the job fails with it at once.
    pub fn permanent(error: impl Into<JobError>) -> Self {
        error.into().with_kind(ErrorKind::Permanent)
    }

    /// A retryable error whose next attempt must wait at least `delay`.
    pub fn retry_after(delay: Duration, error: impl Into<JobError>) -> Self {
        error.into().with_kind(ErrorKind::RetryAfter(delay))
    }

    /// Changes how the error is treated.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// How the error is treated.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// An error that is never retried and marks the job as needing human review.
    pub fn needs_review(error: impl Into<JobError>) -> Self {
        error.into().with_kind(ErrorKind::NeedsReview)
    }

    /// Whether the job fails at once, without retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self.kind, ErrorKind::Permanent | ErrorKind::NeedsReview)
    }

    /// The error this one wraps, if it was converted from another error.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The top-level message already is the wrapped error's Display; add the causes it
        // does not already state (errors such as `LlmError` include their cause's text, and
        // repeating it would say the same thing two or three times).
        let mut text = self.message.clone();
        let mut cause = self.source.as_deref().and_then(std::error::Error::source);
        while let Some(c) = cause {
            let said = c.to_string();
            if !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        // Errors that know whether a retry can help say so (an LLM provider's 401 never will;
        // its 429 asks for a delay).
        #[cfg(feature = "llm")]
        let kind = match (&error as &dyn std::any::Any).downcast_ref::<crate::llm::LlmError>() {
            Some(llm) => llm.job_error_kind(),
            None => ErrorKind::Retryable,
        };
        #[cfg(not(feature = "llm"))]
        let kind = ErrorKind::Retryable;
        JobError {
            kind,
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

/// The message of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_error_display_includes_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e: JobError = Outer(std::io::Error::other("inner")).into();
        assert_eq!(e.to_string(), "outer: inner");
        assert_eq!(e.kind(), ErrorKind::Retryable);
    }

    #[test]
    fn permanent_and_retry_after_set_the_kind() {
        assert!(JobError::permanent(JobError::msg("bad request")).is_permanent());
        let e = JobError::retry_after(Duration::from_secs(2), JobError::msg("429"));
        assert_eq!(e.kind(), ErrorKind::RetryAfter(Duration::from_secs(2)));
        assert_eq!(e.to_string(), "429");
    }
}
