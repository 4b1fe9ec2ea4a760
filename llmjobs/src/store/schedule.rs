//! What the store keeps of cron schedules, and the firing of their ticks.

use super::NewJob;

/// A schedule as it is defined: what [`Store::put_schedules`](super::Store::put_schedules)
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleDef {
    pub(crate) name: String,
    pub(crate) expression: String,
    /// An IANA time zone name.
    pub(crate) timezone: String,
    /// The name of the job each tick spawns.
    pub(crate) job_name: String,
    /// The `JobCall` each tick spawns, serialized.
    pub(crate) call: String,
    /// `skip`, `once` or `all`.
    pub(crate) catch_up: &'static str,
    /// For `all`: at most this many missed ticks.
    pub(crate) catch_up_max: u32,
    /// Declared by `#[llm_job(cron = ...)]` (removed when the code no longer declares it), not
    /// by `Jobs::schedule`.
    pub(crate) declared: bool,
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleRow {
    pub(crate) name: String,
    pub(crate) expression: String,
    pub(crate) timezone: String,
    pub(crate) job_name: String,
    pub(crate) call: String,
    pub(crate) catch_up: String,
    pub(crate) catch_up_max: i64,
    pub(crate) declared: bool,
    /// Ticks at or before this instant never fire: when the expression (or time zone) was set.
    pub(crate) since: i64,
    /// Changes with every change of the definition: a tick fires only under the revision it
    /// was computed from.
    pub(crate) revision: i64,
    /// The latest tick fired.
    pub(crate) last_tick: Option<i64>,
    /// Columns that held a value of the wrong type (read as their default), described.
    pub(crate) problems: Vec<String>,
}

/// Ticks of one schedule to fire, each with the job it spawns.
#[derive(Debug, Clone)]
pub(crate) struct TickJobs {
    pub(crate) schedule: String,
    /// The revision the ticks were computed from: under another one (or with the schedule
    /// gone), nothing fires.
    pub(crate) revision: i64,
    pub(crate) ticks: Vec<(i64, NewJob)>,
}

/// What firing ticks did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fired {
    /// For each tick, whether this call fired it (`false`: another process had).
    Ticks(Vec<bool>),
    /// The schedule was removed or changed since the ticks were computed: nothing fired.
    Stale,
}
