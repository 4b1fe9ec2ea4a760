//! The cancel signal of one attempt, kept in the attempt's context allocation: a flag, the
//! waker of the task that runs the attempt, and the body's own listeners.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Set once, never reset. Cheaper than a child `CancellationToken` (its own 112-byte
/// allocation per job, plus the parent's list): the runtime cancels the running attempts one by
/// one when it aborts them all.
#[derive(Default)]
pub(crate) struct CancelSignal {
    cancelled: AtomicBool,
    /// The attempt was stopped because its worker lost its liveness lock: it is handed back,
    /// not recorded as cancelled.
    unproven: AtomicBool,
    /// The task running the attempt, woken by a cancel.
    runner: Mutex<Option<Waker>>,
    /// [`JobContext::cancelled`](crate::JobContext::cancelled) futures.
    listeners: Notify,
}

impl CancelSignal {
    pub(crate) fn cancel(&self) {
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        // Taken under the lock the runner stores its waker under: either the runner stored it
        // first and is woken here, or it checks the flag after this and sees it set.
        let runner = self.runner.lock().expect("runner lock").take();
        if let Some(runner) = runner {
            runner.wake();
        }
        self.listeners.notify_waiters();
    }

    /// Cancels the attempt as its worker's liveness is lost (see [`CancelSignal::is_unproven`]).
    pub(crate) fn cancel_unproven(&self) {
        self.unproven.store(true, Ordering::SeqCst);
        self.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn is_unproven(&self) -> bool {
        self.unproven.load(Ordering::SeqCst)
    }

    /// Ready once cancelled; else the task of `cx` is woken by the cancel. For the one task
    /// that runs the attempt.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        {
            let mut runner = self.runner.lock().expect("runner lock");
            if !runner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *runner = Some(cx.waker().clone());
            }
        }
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once cancelled; any number of these may wait.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.listeners.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a cancel after the read wakes it.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
