#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod context;
mod duration;
mod error;
mod id;
mod job;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::JobContext;
pub use error::{Error, ErrorKind, JobError, Result};
pub use id::{JobId, ParseJobIdError};
pub use job::{Job, JobCall, JobConfig};
#[cfg(feature = "macros")]
pub use llmjobs_macros::llm_job;
