use std::sync::Arc;

use crate::JobId;

/// What a running job knows about itself: its id, which attempt this is, and the runtime's
/// services (progress, journaled steps, cancellation).
///
/// Cheap to clone; every clone refers to the same attempt.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    id: JobId,
    name: Box<str>,
    attempt: u32,
}

impl JobContext {
    pub(crate) fn new(id: JobId, name: &str, attempt: u32) -> Self {
        JobContext {
            inner: Arc::new(ContextInner {
                id,
                name: name.into(),
                attempt,
            }),
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.inner.id
    }

    /// The job's registered name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("attempt", &self.inner.attempt)
            .finish()
    }
}
