//! Stopping the runtime: gracefully, handing running jobs back, or at once.

use std::time::Duration;

use super::Shared;
use crate::store::Release;

impl Shared {
    /// Stops claiming, lets running jobs finish for up to the grace period, then drops the rest
    /// and hands them back so the next process resumes them at once.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop_claiming.cancel();
        self.close_running();
        self.wake.notify_one();
        // No claim may be in flight when the jobs are handed back, or a job claimed after the
        // hand-back would stay running under a departed owner.
        let dispatcher = self.dispatcher.lock().expect("dispatcher lock").take();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            tracing::info!(
                running = self.running_count(),
                "shutdown grace period over; handing the remaining jobs back"
            );
            self.abort_jobs();
            self.workers.wait().await;
        }
        let handed_back = self
            .store
            .release_owner(self.owner.to_string(), Release::HandBack)
            .await;
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
        self.close_running();
        self.abort_jobs();
        self.stopped.cancel();
        self.wake.notify_one();
        drop(self.owner_lock.lock().expect("owner lock").take());
    }

    /// Gives up the jobs of this worker because its database failed beyond repair (the writer
    /// thread died): drops them and releases the owner lock, so that another worker resumes
    /// them at once.
    pub(crate) fn give_up(&self, cause: &str) {
        tracing::error!(
            %cause,
            owner = %self.owner,
            running = self.running_count(),
            "the job database failed; this worker stops and gives its jobs up to other workers"
        );
        self.abandon();
    }

    /// No job starts here any more.
    fn close_running(&self) {
        self.running.lock().expect("running lock").closed = true;
    }

    /// Drops every running attempt, to be handed back. Runs after [`Shared::close_running`]:
    /// no attempt starts after this.
    fn abort_jobs(&self) {
        // Set first: a cancelled attempt reads it to tell a hand-back from a cancel.
        self.abort.cancel();
        for job in self.running.lock().expect("running lock").jobs.values() {
            job.cancel();
        }
    }
}

impl Shared {
    /// Drops every running attempt: this worker lost its liveness lock, so another may have
    /// found it dead and taken its jobs. Each attempt's row goes back to the queue, fenced by
    /// owner and attempt (a no-op where another worker took the job already).
    pub(crate) fn stop_unproven_jobs(&self) {
        let running = self.running.lock().expect("running lock");
        if running.jobs.is_empty() {
            return;
        }
        tracing::warn!(
            owner = %self.owner,
            running = running.jobs.len(),
            "this worker lost its liveness lock; stopping its jobs, which go back to the queue"
        );
        for job in running.jobs.values() {
            job.cancel_unproven();
        }
    }
}
