#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod context;
mod duration;
mod error;
mod handle;
mod id;
mod job;
mod jobs;
mod owner;
mod runtime;
mod status;
mod store;
#[cfg(feature = "llm")]
pub mod llm;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::{JobContext, Progress};
pub use error::{Error, ErrorKind, JobError, Result};
pub use handle::{CancelOutcome, JobHandle, Outcome};
pub use id::{JobId, ParseJobIdError};
pub use job::{Job, JobCall, JobConfig};
pub use jobs::{Durability, Jobs, JobsBuilder};
pub use runtime::Backoff;
pub use status::{JobState, JobStatus};
#[cfg(feature = "macros")]
pub use llmjobs_macros::llm_job;
