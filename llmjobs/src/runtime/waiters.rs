//! Waiting for a job in this process: waiters are woken, and handed the outcome, when a job ends
//! here.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::Shared;
use crate::JobId;
use crate::store::Terminal;

/// What waiters of one job in this process share: a wake-up, and the outcome when the job
/// ended here, so they need not read it back from the database.
#[derive(Default)]
pub(crate) struct WaitSlot {
    notify: Notify,
    outcome: Mutex<Option<Terminal>>,
}

/// Keeps the waiter's slot registered while it waits.
pub(crate) struct Waiter {
    id: JobId,
    slot: Arc<WaitSlot>,
    shared: Arc<Shared>,
}

impl Waiter {
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.slot.notify.notified()
    }

    /// The job's outcome, if this process ended it while the waiter was registered.
    pub(crate) fn outcome(&self) -> Option<Terminal> {
        self.slot.outcome.lock().expect("outcome lock").clone()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.shared.waiters.lock().expect("waiters lock");
        // The map holds a weak reference; ours is the last strong one.
        if Arc::strong_count(&self.slot) == 1 {
            waiters.remove(&self.id);
        }
    }
}

impl Shared {
    /// The slot through which this process tells waiters of `id` that it finished the job.
    pub(crate) fn waiter(self: &Arc<Self>, id: JobId) -> Waiter {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let slot = match waiters.get(&id).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                let slot = Arc::new(WaitSlot::default());
                waiters.insert(id, Arc::downgrade(&slot));
                slot
            }
        };
        Waiter {
            id,
            slot,
            shared: self.clone(),
        }
    }

    /// The job ended (`outcome` is what this process committed, if it knows it): wakes its
    /// waiters and ends its progress streams.
    pub(crate) fn notify_finished(&self, id: JobId, outcome: Option<Terminal>) {
        self.progress_subscribers
            .lock()
            .expect("progress lock")
            .remove(&id);
        self.wake_waiters(id, outcome);
    }

    /// The job's row changed (an attempt ended and another is due, or the outcome could not be
    /// recorded here): its waiters read it again.
    pub(crate) fn notify_changed(&self, id: JobId) {
        self.wake_waiters(id, None);
    }

    /// Every waiter of this process reads its job's row again.
    pub(crate) fn wake_all_waiters(&self) {
        let slots: Vec<Arc<WaitSlot>> = self
            .waiters
            .lock()
            .expect("waiters lock")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for slot in slots {
            slot.notify.notify_waiters();
        }
    }

    fn wake_waiters(&self, id: JobId, outcome: Option<Terminal>) {
        let slot = self
            .waiters
            .lock()
            .expect("waiters lock")
            .get(&id)
            .and_then(Weak::upgrade);
        if let Some(slot) = slot {
            if let Some(outcome) = outcome {
                *slot.outcome.lock().expect("outcome lock") = Some(outcome);
            }
            slot.notify.notify_waiters();
        }
    }
}
