//! Turning a panicking job body into a job error instead of a dead worker.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::JobError;

/// Polls `body`, turning a panic into a retryable [`JobError`].
///
/// A body that panicked must not be polled again: the caller drops it, so no broken invariant
/// of it can be observed.
pub(super) fn poll_caught<F>(
    body: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<String, JobError>>
where
    F: Future<Output = Result<String, JobError>> + ?Sized,
{
    match catch_unwind(AssertUnwindSafe(|| body.poll(cx))) {
        Ok(poll) => poll,
        Err(payload) => {
            let message = crate::error::panic_message(&*payload);
            Poll::Ready(Err(JobError::msg(format_args!(
                "the job panicked: {message}"
            ))))
        }
    }
}
