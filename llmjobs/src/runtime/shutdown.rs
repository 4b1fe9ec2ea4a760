//! Stopping the runtime: gracefully, handing running jobs back, or at once.

use std::time::Duration;

use super::Shared;

impl Shared {
    /// Stops claiming, lets running jobs finish for up to the grace period, then drops the rest
    /// and hands them back so the next process resumes them at once.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop_claiming.cancel();
        self.wake.notify_one();
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            tracing::info!(
                running = self.running_count(),
                "shutdown grace period over; handing the remaining jobs back"
            );
            self.abort.cancel();
            self.workers.wait().await;
        }
        let handed_back = self.store.release_owner(self.owner.to_string()).await;
        self.stopped.cancel();
        self.store.close().await;
        match handed_back {
            Ok(_) => {
                if let Some(lock) = self.owner_lock.lock().expect("owner lock").take() {
                    lock.remove();
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not hand running jobs back; the next process will resume them"
            ),
        }
    }

    /// Stops everything at once, without waiting: what dropping the last `Jobs` does. Running
    /// jobs stay `running` under this owner; its lock is released, so any other worker resumes
    /// them right away.
    pub(crate) fn abandon(&self) {
        self.stop_claiming.cancel();
        self.abort.cancel();
        self.stopped.cancel();
        self.wake.notify_one();
        drop(self.owner_lock.lock().expect("owner lock").take());
    }
}
