//! Progress reports: the global callback and the in-process subscribers of each job.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Shared;
use crate::{JobId, Progress};

/// A callback that sees every progress report of every job this process runs.
pub(crate) type ProgressCallback = Arc<dyn Fn(&ProgressEvent<'_>) + Send + Sync>;

/// One progress report, as the builder's [`on_progress`](crate::JobsBuilder::on_progress)
/// callback sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProgressEvent<'a> {
    /// The job that reported.
    pub id: JobId,
    /// Its name.
    pub name: &'a str,
    /// The report.
    pub progress: &'a Progress,
}

impl Shared {
    /// Hands a report to the global callback and to the job's in-process subscribers.
    pub(crate) fn publish_progress(&self, id: JobId, name: &str, progress: &Progress) {
        if let Some(callback) = &self.settings.on_progress {
            callback(&ProgressEvent { id, name, progress });
        }
        let mut subscribers = self.progress_subscribers.lock().expect("progress lock");
        if let Some(list) = subscribers.get_mut(&id) {
            list.retain(|tx| tx.send(progress.clone()).is_ok());
            if list.is_empty() {
                subscribers.remove(&id);
            }
        }
    }

    /// A channel that receives every later progress report of `id` made in this process; it
    /// closes when the job ends here.
    pub(crate) fn subscribe_progress(&self, id: JobId) -> mpsc::UnboundedReceiver<Progress> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.progress_subscribers
            .lock()
            .expect("progress lock")
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    /// Forgets the subscribers of `id` whose receivers are gone.
    pub(crate) fn prune_progress_subscribers(&self, id: JobId) {
        let mut subscribers = self.progress_subscribers.lock().expect("progress lock");
        if let Some(list) = subscribers.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                subscribers.remove(&id);
            }
        }
    }
}
