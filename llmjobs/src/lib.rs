//! Durable, resumable jobs for slow, costly, flaky work — LLM calls first of all.
//!
//! An `async fn` annotated [`#[llm_job]`](llm_job) becomes a durable job. [`Jobs::spawn`]
//! records it in the database before it runs; a runtime inside your process runs it under
//! concurrency limits, with timeouts, retries, progress reports and cancellation;
//! [`JobHandle::wait_timeout`] gives the result or, past the timeout, a handle to poll while the
//! same attempt keeps running. When the process dies, the next one resumes every unfinished job,
//! and journaled steps ([`JobContext::step`]) are replayed, not paid for again.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use llmjobs::{llm_job, JobContext, JobError, Jobs, Outcome};
//!
//! #[llm_job(max_concurrency = 4)]
//! async fn summarize(ctx: JobContext, text: String, words: u32) -> Result<String, JobError> {
//!     ctx.progress(0.1, "drafting").await;
//!     let draft: String = ctx
//!         .step("draft", async {
//!             // A paid LLM call would go here; its result is journaled.
//!             Ok::<_, JobError>(text.split_whitespace().take(words as usize).collect::<Vec<_>>().join(" "))
//!         })
//!         .await?;
//!     Ok(draft)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> llmjobs::Result<()> {
//! let jobs = Jobs::open("sqlite::memory:").await?;
//! let handle = jobs.spawn(summarize("one two three four".into(), 2)).await?;
//! match handle.wait_timeout(Duration::from_secs(30)).await? {
//!     Outcome::Ready(summary) => assert_eq!(summary, "one two"),
//!     Outcome::Pending(_handle) => unreachable!("a 30 s wait is plenty here"),
//! }
//! jobs.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Use `sqlite://path/to/jobs.db` for a database that outlives the process. The README of the
//! repository has a tour of the API and the exact durability guarantees.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
mod error;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod id;
mod inspect;
mod job;
mod jobs;
#[cfg(feature = "llm")]
pub mod llm;
mod owner;
mod runtime;
mod schedule;
mod status;
mod store;
mod usage;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::{JobContext, Progress};
pub use error::{Error, ErrorKind, JobError, Result};
pub use handle::{CancelOutcome, JobHandle, Outcome, ProgressStream};
pub use id::{JobId, ParseJobIdError};
pub use inspect::{Compatibility, Inspector, JobRecord, SchemaInfo, StepInfo};
pub use job::{Job, JobCall, JobConfig};
pub use jobs::{Durability, Jobs, JobsBuilder};
#[cfg(feature = "macros")]
pub use llmjobs_macros::llm_job;
pub use runtime::{Backoff, CallInfo, ProgressEvent};
pub use schedule::{CatchUp, Schedule, ScheduleInfo};
pub use status::{AttemptError, EarlierRun, JobCounts, JobFilter, JobState, JobStatus};
pub use usage::{Budget, CallOutcome, UsageFilter, UsageGroup, UsageKey};
