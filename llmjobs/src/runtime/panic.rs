//! Turning a panicking job body into a job error instead of a dead worker.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::JobError;

/// Runs `body`, turning a panic into a retryable [`JobError`].
pub(crate) async fn catch<F>(body: F) -> Result<String, JobError>
where
    F: Future<Output = Result<String, JobError>> + Unpin,
{
    CatchPanic { body }.await
}

struct CatchPanic<F> {
    body: F,
}

impl<F: Future<Output = Result<String, JobError>> + Unpin> Future for CatchPanic<F> {
    type Output = Result<String, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let body = Pin::new(&mut self.body);
        // The body is dropped after a panic and never polled again, so no broken invariant of
        // it can be observed.
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
}
