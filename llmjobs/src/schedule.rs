//! Cron schedules: jobs spawned on every tick of a cron expression, once per tick across every
//! process sharing the database.
//!
//! A schedule is a row in the database. Every process that runs jobs runs a ticker, which fires
//! the ticks that come due; a tick's row and its job are inserted in one transaction and the
//! tick's key is unique, so however many processes race on a tick, one job is spawned.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::runtime::Shared;
use crate::status::{from_ms, now_ms, to_ms};
use crate::store::{ScheduleDef, ScheduleRow};
use crate::{Error, JobCall, Jobs, Result};

mod expression;
mod ticker;

use expression::Cron;
pub(crate) use ticker::tick;

/// The time zone of a schedule that does not name one.
const UTC: &str = "UTC";

/// A cron schedule: a name, a cron expression with seconds, the time zone it is read in, and
/// what to do about ticks missed while no process ran. Hand it to [`Jobs::schedule`] with the
/// call to spawn on each tick.
///
/// ```
/// use llmjobs::{CatchUp, Schedule};
///
/// // Every five minutes, on the minute; weekdays at 09:00 in Paris.
/// let poll = Schedule::cron("poll-feeds", "0 */5 * * * *")?;
/// let digest = Schedule::cron("daily-digest", "0 0 9 * * Mon-Fri")?
///     .timezone("Europe/Paris")?
///     .catch_up(CatchUp::Once);
/// assert_eq!(digest.expression(), "0 0 9 * * Mon-Fri");
/// assert!(Schedule::cron("typo", "*/5 * * * *").is_err()); // no seconds field
/// # Ok::<(), llmjobs::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    expression: String,
    timezone: String,
    catch_up: CatchUp,
    cron: Cron,
}

impl Schedule {
    /// A schedule named `name` (unique in the database) on the cron `expression`, read in UTC.
    ///
    /// The expression has six or seven fields, seconds first: `second minute hour
    /// day-of-month month day-of-week [year]`, as in `"0 */5 * * * *"` (every five minutes);
    /// `@hourly`, `@daily`, `@weekly`, `@monthly` and `@yearly` work too. An expression that
    /// does not parse, or has no tick to come, is [`Error::InvalidSchedule`], naming it.
    pub fn cron(name: impl Into<String>, expression: impl Into<String>) -> Result<Schedule> {
        let name = name.into();
        let expression = expression.into();
        let invalid = |reason: String| Error::InvalidSchedule {
            name: name.clone(),
            reason,
        };
        if name.trim().is_empty() {
            return Err(invalid("a schedule's name cannot be empty".into()));
        }
        let cron = Cron::parse(&expression, UTC).map_err(invalid)?;
        if cron.next_after(now_ms()).is_none() {
            return Err(invalid(format!(
                "cron expression {expression:?} has no tick to come"
            )));
        }
        Ok(Schedule {
            name,
            expression,
            timezone: UTC.into(),
            catch_up: CatchUp::default(),
            cron,
        })
    }

    /// Reads the expression in the IANA time zone `timezone` (`"Europe/Paris"`,
    /// `"America/New_York"`; default `"UTC"`), daylight saving time included. An unknown zone
    /// is [`Error::InvalidSchedule`], naming it.
    pub fn timezone(mut self, timezone: &str) -> Result<Schedule> {
        self.cron =
            Cron::parse(&self.expression, timezone).map_err(|reason| Error::InvalidSchedule {
                name: self.name.clone(),
                reason,
            })?;
        self.timezone = timezone.to_string();
        Ok(self)
    }

    /// What to do, when a process starts, about the ticks that came due while no process ran
    /// (default [`CatchUp::Skip`]).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Schedule {
        self.catch_up = catch_up;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cron expression.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first tick after `time`, if any.
    pub fn next_after(&self, time: SystemTime) -> Option<SystemTime> {
        self.cron.next_after(to_ms(time)).map(from_ms)
    }
}

/// What a schedule does about the ticks that came due while no process was running (or able to
/// fire them), when a process starts again.
///
/// Ticks more than about half a minute overdue count as missed. Ticks a running process is
/// only a little late for always fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUp {
    /// Fire none of them: the schedule resumes with its next tick.
    #[default]
    Skip,
    /// Fire the latest missed tick, once.
    Once,
    /// Fire every missed tick, oldest first, but at most the latest `max` of them.
    All {
        /// At most this many missed ticks fire.
        max: u32,
    },
}

impl CatchUp {
    /// How the database stores it.
    fn to_stored(self) -> (&'static str, u32) {
        match self {
            CatchUp::Skip => ("skip", 0),
            CatchUp::Once => ("once", 0),
            CatchUp::All { max } => ("all", max),
        }
    }

    /// From the database; `None` for a value this build does not know.
    fn from_stored(text: &str, max: i64) -> Option<CatchUp> {
        match text {
            "skip" => Some(CatchUp::Skip),
            "once" => Some(CatchUp::Once),
            "all" => Some(CatchUp::All {
                max: u32::try_from(max.max(0)).unwrap_or(u32::MAX),
            }),
            _ => None,
        }
    }
}

/// A schedule as [`Jobs::schedules`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's name: the job's name for one declared with `#[llm_job(cron = ...)]`.
    pub name: String,
    /// The cron expression.
    pub expression: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// The name of the job each tick spawns.
    pub job: String,
    /// What happens to ticks missed while no process ran.
    pub catch_up: CatchUp,
    /// Declared in code by `#[llm_job(cron = ...)]` (it follows the code), rather than added
    /// with [`Jobs::schedule`] (it stays until [`Jobs::unschedule`]).
    pub declared: bool,
    /// The next tick to come; `None` if the expression has none (or this build cannot read it).
    pub next_tick: Option<SystemTime>,
    /// The latest tick fired, by any process.
    pub last_tick: Option<SystemTime>,
}

impl Jobs {
    /// Spawns `call` on every tick of `schedule`, from now on, once per tick across every
    /// process sharing the database, until [`Jobs::unschedule`]. The schedule is stored: it
    /// outlives this process, and any process that runs jobs fires its ticks. A tick's job
    /// runs as a job spawned at the tick would (its `run_at` is the tick).
    ///
    /// Scheduling a name again replaces that schedule; with the same expression and time zone
    /// it keeps its place (the ticks already fired, the catch-up), so calling this at every
    /// start is the way to keep a schedule in code.
    pub async fn schedule<T>(&self, schedule: Schedule, call: JobCall<T>) -> Result<()> {
        let shared = self.shared();
        if shared.is_stopping() {
            return Err(Error::Shutdown);
        }
        let serialized = serde_json::to_string(&call).map_err(|e| Error::SerializeArgs {
            name: call.name().to_string(),
            message: e.to_string(),
        })?;
        let (catch_up, catch_up_max) = schedule.catch_up.to_stored();
        let def = ScheduleDef {
            name: schedule.name,
            expression: schedule.expression,
            timezone: schedule.timezone,
            job_name: call.name().to_string(),
            call: serialized,
            catch_up,
            catch_up_max,
            declared: false,
        };
        shared.store.put_schedules(vec![def], Vec::new()).await?;
        shared.schedules_changed.notify_one();
        Ok(())
    }

    /// Removes the schedule `name`: no tick fires after this returns, in any process. Whether
    /// there was one. (A schedule declared with `#[llm_job(cron = ...)]` comes back when a
    /// process that declares it opens the database: remove `cron` from the job instead.)
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        let shared = self.shared();
        let removed = shared.store.remove_schedule(name.to_string()).await?;
        shared.schedules_changed.notify_one();
        Ok(removed)
    }

    /// Every schedule in the database, by name, with its next and latest ticks.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let now = now_ms();
        let rows = self.shared().store.schedules().await?;
        Ok(rows.into_iter().map(|row| info(row, now)).collect())
    }
}

fn info(row: ScheduleRow, now: i64) -> ScheduleInfo {
    let next_tick = Cron::parse(&row.expression, &row.timezone)
        .ok()
        .and_then(|cron| cron.next_after(now))
        .map(from_ms);
    ScheduleInfo {
        catch_up: CatchUp::from_stored(&row.catch_up, row.catch_up_max).unwrap_or_default(),
        name: row.name,
        expression: row.expression,
        timezone: row.timezone,
        job: row.job_name,
        declared: row.declared,
        next_tick,
        last_tick: row.last_tick.map(from_ms),
    }
}

/// Writes the schedules the registered jobs declare (`#[llm_job(cron = ...)]`), and removes
/// the declared schedules of registered jobs that no longer declare one: a schedule follows
/// its job's code. Writes nothing when the database already agrees.
pub(crate) async fn declare(shared: &Shared) -> Result<()> {
    let stored: HashMap<String, ScheduleRow> = shared
        .store
        .schedules()
        .await?
        .into_iter()
        .map(|row| (row.name.clone(), row))
        .collect();
    let mut put = Vec::new();
    let mut undeclare = Vec::new();
    let mut names: Vec<&&'static str> = shared.registry.keys().collect();
    names.sort();
    for name in names {
        let config = &shared.registry[*name].config;
        let Some(expression) = config.cron else {
            if stored.get(*name).is_some_and(|row| row.declared) {
                undeclare.push(name.to_string());
            }
            continue;
        };
        let timezone = config.cron_timezone.unwrap_or(UTC);
        Cron::parse(expression, timezone).map_err(|reason| Error::InvalidSchedule {
            name: name.to_string(),
            reason: format!("job `{name}` declares {reason}"),
        })?;
        // A cron job takes no arguments: its calls are the empty object.
        let call = JobCall::<()>::from_json(*name, serde_json::json!({})).priority(config.priority);
        let (catch_up, catch_up_max) = CatchUp::Skip.to_stored();
        let def = ScheduleDef {
            name: name.to_string(),
            expression: expression.to_string(),
            timezone: timezone.to_string(),
            job_name: name.to_string(),
            call: serde_json::to_string(&call).map_err(|e| Error::SerializeArgs {
                name: name.to_string(),
                message: e.to_string(),
            })?,
            catch_up,
            catch_up_max,
            declared: true,
        };
        if stored.get(*name).is_none_or(|row| !matches(row, &def)) {
            put.push(def);
        }
    }
    if put.is_empty() && undeclare.is_empty() {
        return Ok(());
    }
    shared.store.put_schedules(put, undeclare).await
}

/// Whether `row` is stored as `def` defines it.
fn matches(row: &ScheduleRow, def: &ScheduleDef) -> bool {
    row.expression == def.expression
        && row.timezone == def.timezone
        && row.job_name == def.job_name
        && row.call == def.call
        && row.catch_up == def.catch_up
        && row.catch_up_max == i64::from(def.catch_up_max)
        && row.declared == def.declared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_is_stored_and_read_back() {
        for catch_up in [CatchUp::Skip, CatchUp::Once, CatchUp::All { max: 7 }] {
            let (text, max) = catch_up.to_stored();
            assert_eq!(CatchUp::from_stored(text, i64::from(max)), Some(catch_up));
        }
        assert_eq!(CatchUp::from_stored("later", 0), None);
    }

    #[test]
    fn an_expression_without_a_tick_to_come_is_refused() {
        let err = Schedule::cron("past", "0 0 0 1 1 * 2001").unwrap_err();
        assert!(err.to_string().contains("no tick to come"), "{err}");
    }

    #[test]
    fn an_empty_name_is_refused() {
        assert!(Schedule::cron(" ", "* * * * * *").is_err());
    }
}
