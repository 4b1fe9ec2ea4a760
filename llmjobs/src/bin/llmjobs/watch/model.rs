//! What the live view shows: a snapshot read from the database, and the viewer's own state
//! (filters, selection, the job opened, a confirmation awaited).

use std::collections::BTreeMap;
use std::time::SystemTime;

use llmjobs::{Inspector, JobCounts, JobFilter, JobId, JobRecord, JobState, JobStatus, StepInfo};

/// Rows read for the job list: more than any terminal shows.
const LIST_ROWS: u32 = 200;

/// Failures shown at the bottom.
const FAILURES: u32 = 5;

/// One reading of the database.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) at: SystemTime,
    pub(crate) by_name: BTreeMap<String, JobCounts>,
    /// The jobs of the list, as the view's filters select them.
    pub(crate) jobs: Vec<JobStatus>,
    /// The newest failures.
    pub(crate) failures: Vec<JobStatus>,
    /// The job opened, with its journal.
    pub(crate) detail: Option<(JobRecord, Vec<StepInfo>)>,
}

impl Snapshot {
    /// Reads what `view` shows.
    pub(crate) async fn load(db: &Inspector, view: &View) -> llmjobs::Result<Snapshot> {
        let mut filter = JobFilter::new().limit(LIST_ROWS);
        if let Some(state) = view.state {
            filter = filter.state(state);
        }
        let mut failures = JobFilter::new().state(JobState::Failed).limit(FAILURES);
        if let Some(name) = &view.name {
            filter = filter.name(name);
            failures = failures.name(name);
        }
        let mut by_name = db.counts_by_name().await?;
        if let Some(name) = &view.name {
            by_name.retain(|n, _| n == name);
        }
        let detail = match view.open {
            Some(id) => match db.job(id).await {
                Ok(record) => Some((record, db.steps(id).await?)),
                Err(llmjobs::Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Snapshot {
            at: SystemTime::now(),
            by_name,
            jobs: db.list(filter).await?,
            failures: db.list(failures).await?,
            detail,
        })
    }
}

/// An action waiting for the viewer to confirm it with `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    Cancel(JobId),
    Retry(JobId),
}

/// The viewer's state.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The database, as given.
    pub(crate) url: String,
    /// The list's state filter; `None`: every state.
    pub(crate) state: Option<JobState>,
    /// Only jobs of this name.
    pub(crate) name: Option<String>,
    /// The selected row of the list.
    pub(crate) selected: usize,
    /// The job opened in full.
    pub(crate) open: Option<JobId>,
    /// Lines scrolled in the opened job.
    pub(crate) scroll: u16,
    /// A name filter being typed.
    pub(crate) typing: Option<String>,
    /// An action awaiting `y`.
    pub(crate) confirm: Option<Pending>,
    /// What the last action did, or why it failed.
    pub(crate) message: Option<String>,
}

/// The state filters `s` cycles through.
const STATE_CYCLE: [Option<JobState>; 6] = [
    Some(JobState::Running),
    Some(JobState::Pending),
    Some(JobState::Failed),
    Some(JobState::Completed),
    Some(JobState::Cancelled),
    None,
];

impl View {
    pub(crate) fn new(url: &str, name: Option<String>) -> View {
        View {
            url: url.to_string(),
            state: Some(JobState::Running),
            name,
            selected: 0,
            open: None,
            scroll: 0,
            typing: None,
            confirm: None,
            message: None,
        }
    }

    /// The next state filter.
    pub(crate) fn cycle_state(&mut self) {
        let at = STATE_CYCLE
            .iter()
            .position(|s| *s == self.state)
            .unwrap_or(0);
        self.state = STATE_CYCLE[(at + 1) % STATE_CYCLE.len()];
        self.selected = 0;
    }

    /// The selected job of `snapshot`'s list.
    pub(crate) fn selected_job<'a>(&self, snapshot: &'a Snapshot) -> Option<&'a JobStatus> {
        snapshot.jobs.get(self.selected)
    }

    /// Keeps the selection on the list after it changed length.
    pub(crate) fn clamp(&mut self, snapshot: &Snapshot) {
        self.selected = self.selected.min(snapshot.jobs.len().saturating_sub(1));
    }

    /// What the list shows, in words.
    pub(crate) fn filter_label(&self) -> String {
        let state = self.state.map_or("all states", JobState::as_str);
        match &self.name {
            Some(name) => format!("{state}, name {name}"),
            None => state.to_string(),
        }
    }
}
