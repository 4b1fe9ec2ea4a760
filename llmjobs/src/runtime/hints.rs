//! Wake-ups from other processes: a job spawned elsewhere wakes the dispatcher, a job that
//! ended elsewhere wakes its waiters here, and a cancel requested elsewhere of a job running
//! here stops it, instead of at their next poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Shared;
use crate::store::Hint;

impl Shared {
    /// Asks the store for hints; records whether it gives them, so waiters poll slowly.
    pub(super) fn listen_for_hints(self: &Arc<Self>) {
        let shared = Arc::downgrade(self);
        let hinted = self.store.listen(Arc::new(move |hint| {
            if let Some(shared) = shared.upgrade() {
                shared.on_hint(hint);
            }
        }));
        self.hinted.store(hinted, Ordering::Release);
    }

    /// Whether another process's changes wake this one (then a waiter's poll is only a safety
    /// net).
    pub(crate) fn is_hinted(&self) -> bool {
        self.hinted.load(Ordering::Acquire)
    }

    fn on_hint(self: &Arc<Self>, hint: Hint) {
        match hint {
            Hint::Available => self.wake_dispatcher(),
            Hint::Ended(ids) => {
                for id in ids {
                    self.notify_changed(id);
                }
                // Their slots are free: jobs waiting for a limit may start.
                self.slot_freed();
            }
            Hint::CancelRequested(ids) => {
                if ids.iter().any(|&id| self.runs_here(id)) {
                    self.stop_cancel_requested();
                }
            }
            Hint::Missed => {
                self.wake_dispatcher();
                self.wake_all_waiters();
                self.stop_cancel_requested();
            }
        }
    }

    /// Reads this worker's cancel requests and stops the jobs they name, in a task of its own
    /// (a hint is never the truth: the rows are).
    fn stop_cancel_requested(self: &Arc<Self>) {
        if self.running_count() == 0 {
            return;
        }
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(shared) = shared.upgrade() {
                shared.read_cancel_requests().await;
            }
        });
    }
}
