//! What an [`LlmError`] means to the job that met it: the client's errors know nothing of
//! jobs, and this bridge gives each its [`ErrorKind`].

use crate::llm::LlmError;
use crate::{ErrorKind, JobError};

impl LlmError {
    /// How a job that failed with this error should be treated.
    ///
    /// Permanent: bad requests, authentication, unknown models, context length, configuration
    /// errors, and [`LlmError::NeedsReview`] (retrying the job would pay for the same answers
    /// again). Retry-after: rate limits that said how long to wait. Retryable: everything else.
    pub fn job_error_kind(&self) -> ErrorKind {
        if self.needs_review() {
            ErrorKind::NeedsReview
        } else if !self.is_retryable() {
            ErrorKind::Permanent
        } else if let Some(delay) = self.retry_after() {
            ErrorKind::RetryAfter(delay)
        } else {
            ErrorKind::Retryable
        }
    }

    /// Converts into a [`JobError`] whose kind follows [`LlmError::job_error_kind`].
    ///
    /// (`?` also converts an `LlmError` into a `JobError`, through the blanket conversion for
    /// every error type, but that conversion always makes the error retryable.)
    pub fn into_job_error(self) -> JobError {
        let kind = self.job_error_kind();
        JobError::from(self).with_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn http(status: u16, retry_after: Option<Duration>) -> LlmError {
        LlmError::Http {
            provider: "openai".into(),
            model: "openai/gpt-4o".into(),
            status,
            message: "nope".into(),
            retry_after,
        }
    }

    #[test]
    fn job_error_kind_follows_the_classification() {
        assert_eq!(http(401, None).job_error_kind(), ErrorKind::Permanent);
        assert_eq!(http(500, None).job_error_kind(), ErrorKind::Retryable);
        let d = Duration::from_secs(2);
        assert_eq!(
            http(429, Some(d)).job_error_kind(),
            ErrorKind::RetryAfter(d)
        );
        assert!(http(400, None).into_job_error().is_permanent());
    }
}
