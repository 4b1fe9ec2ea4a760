//! The ticker: one task per process that runs jobs. It sleeps until the next tick of any
//! schedule (re-reading the schedules every few seconds, to see those other processes add),
//! then fires the ticks that came due.
//!
//! Which ticks a pass fires, for a schedule: those after the last one this process handled
//! (or, the first time, after the schedule was set) and at most [`LATE_LIMIT_MS`] old, all of
//! them, since some process was running when they came due; and, of the older ones after the
//! latest tick fired, what the schedule's catch-up says. Every process may try a tick; the
//! store fires it once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::CatchUp;
use super::expression::Cron;
use crate::runtime::Shared;
use crate::status::now_ms;
use crate::store::{Fired, NewJob, ScheduleRow, TickJobs};
use crate::{Error, JobCall};

/// How often the schedules are read again, at most: what another process added is seen
/// within this long.
const RELOAD: Duration = Duration::from_secs(2);

/// A tick older than this when a process gets to it is a missed one, subject to the
/// schedule's catch-up, rather than a late one (milliseconds).
const LATE_LIMIT_MS: i64 = 30_000;

/// At most this many on-time ticks of one schedule fire per pass.
const MAX_TICKS_PER_PASS: usize = 1000;

/// Runs the ticker until `stopped`, or until the runtime stops claiming. Ticks that came due
/// before `awake_since` were missed (no process of ours was running).
pub(crate) async fn tick(shared: Weak<Shared>, stopped: CancellationToken, awake_since: i64) {
    let mut ticker = Ticker {
        awake_since,
        handled: HashMap::new(),
        crons: HashMap::new(),
        reported: HashSet::new(),
    };
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.is_stopping() {
            return;
        }
        let wait = ticker.pass(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.schedules_changed.notified() => {}
            _ = stopped.cancelled() => return,
        }
    }
}

/// What one process's ticker remembers between passes.
struct Ticker {
    /// When this ticker started: ticks before were missed.
    awake_since: i64,
    /// Per schedule, the instant up to which this process handled its ticks.
    handled: HashMap<String, i64>,
    /// Parsed expressions, by schedule: the expression and zone they were parsed from, and
    /// the result.
    crons: HashMap<String, (String, String, Option<Cron>)>,
    /// Schedules (name and revision) whose problem has been logged.
    reported: HashSet<(String, i64)>,
}

/// What a pass did with one schedule's ticks.
enum Outcome {
    /// Fired (or found fired, or given up on): handled.
    Done { fired: usize },
    /// Not fired, for now: try again at the next pass.
    Again,
}

impl Ticker {
    /// Fires what is due; how long to sleep until the next pass.
    async fn pass(&mut self, shared: &Arc<Shared>) -> Duration {
        let rows = match shared.store.schedules().await {
            Ok(rows) => rows,
            Err(Error::Shutdown) => return RELOAD,
            Err(e) => {
                tracing::warn!(error = %e, "reading the schedules failed; trying again shortly");
                return RELOAD;
            }
        };
        self.handled
            .retain(|name, _| rows.iter().any(|row| &row.name == name));
        self.crons
            .retain(|name, _| rows.iter().any(|row| &row.name == name));
        let mut next: Option<i64> = None;
        let mut fired = 0;
        let mut again = false;
        for row in &rows {
            let Some(cron) = self.cron(row) else {
                continue;
            };
            let catch_up = self.catch_up(row);
            let now = now_ms();
            let boundary = self.awake_since.max(now - LATE_LIMIT_MS);
            let after = row
                .since
                .max(self.handled.get(&row.name).copied().unwrap_or(i64::MIN));
            let missed_after = after.max(row.last_tick.unwrap_or(i64::MIN));
            let mut ticks = match catch_up {
                CatchUp::Skip => Vec::new(),
                CatchUp::Once => cron.latest(missed_after, boundary, 1),
                CatchUp::All { max } => cron.latest(missed_after, boundary, max as usize),
            };
            let on_time = cron.between(after.max(boundary), now, MAX_TICKS_PER_PASS);
            let handled_until = match on_time.last() {
                Some(&last) if on_time.len() == MAX_TICKS_PER_PASS => last,
                _ => now,
            };
            ticks.extend(on_time);
            let outcome = if ticks.is_empty() {
                Outcome::Done { fired: 0 }
            } else {
                self.fire(shared, row, &ticks, now).await
            };
            match outcome {
                Outcome::Done { fired: n } => {
                    fired += n;
                    self.handled.insert(row.name.clone(), handled_until);
                }
                Outcome::Again => again = true,
            }
            let from = self.handled.get(&row.name).copied().unwrap_or(now);
            if let Some(tick) = cron.next_after(from) {
                next = Some(next.map_or(tick, |n| n.min(tick)));
            }
        }
        if fired > 0 {
            shared.wake_dispatcher();
        }
        if again {
            return Duration::from_millis(100);
        }
        let until_next = next.map_or(RELOAD, |tick| {
            Duration::from_millis(u64::try_from(tick - now_ms()).unwrap_or(0))
        });
        until_next.min(RELOAD)
    }

    /// The schedule's parsed expression, or `None` (logged once) if this build cannot read it.
    fn cron(&mut self, row: &ScheduleRow) -> Option<Cron> {
        let parsed = match self.crons.get(&row.name) {
            Some((expression, timezone, parsed))
                if *expression == row.expression && *timezone == row.timezone =>
            {
                parsed.clone()
            }
            _ => {
                let parsed = match Cron::parse(&row.expression, &row.timezone) {
                    Ok(cron) => Some(cron),
                    Err(reason) => {
                        self.report(row, &reason);
                        None
                    }
                };
                self.crons.insert(
                    row.name.clone(),
                    (row.expression.clone(), row.timezone.clone(), parsed.clone()),
                );
                parsed
            }
        };
        if !row.problems.is_empty() {
            self.report(row, &format!("corrupt row: {}", row.problems.join("; ")));
            return None;
        }
        parsed
    }

    fn catch_up(&mut self, row: &ScheduleRow) -> CatchUp {
        CatchUp::from_stored(&row.catch_up, row.catch_up_max).unwrap_or_else(|| {
            self.report(
                row,
                &format!(
                    "unknown catch-up {:?}; missed ticks are skipped",
                    row.catch_up
                ),
            );
            CatchUp::Skip
        })
    }

    /// Logs a schedule's problem once per revision.
    fn report(&mut self, row: &ScheduleRow, problem: &str) {
        if self.reported.insert((row.name.clone(), row.revision)) {
            tracing::warn!(schedule = %row.name, %problem, "a schedule cannot fire");
        }
    }

    /// Fires `ticks` of `row`'s schedule, each with a job of its call.
    async fn fire(
        &mut self,
        shared: &Shared,
        row: &ScheduleRow,
        ticks: &[i64],
        now: i64,
    ) -> Outcome {
        let call: JobCall<serde_json::Value> = match serde_json::from_str(&row.call) {
            Ok(call) => call,
            Err(e) => {
                self.report(row, &format!("its stored call does not parse: {e}"));
                return Outcome::Done { fired: 0 };
            }
        };
        let jobs: crate::Result<Vec<(i64, NewJob)>> = ticks
            .iter()
            .map(|&tick| {
                // Due at its tick, as a job spawned then would have been.
                let mut job = shared.new_job(&call, now)?;
                job.run_at = tick;
                Ok((tick, job))
            })
            .collect();
        let ticks = match jobs {
            Ok(ticks) => ticks,
            Err(e) => {
                self.report(row, &format!("its stored call cannot be spawned: {e}"));
                return Outcome::Done { fired: 0 };
            }
        };
        let fire = TickJobs {
            schedule: row.name.clone(),
            revision: row.revision,
            ticks,
        };
        match shared.store.fire_ticks(fire).await {
            Ok(Fired::Ticks(fired)) => {
                let n = fired.iter().filter(|&&f| f).count();
                if n > 0 {
                    tracing::debug!(schedule = %row.name, ticks = n, "fired schedule ticks");
                }
                Outcome::Done { fired: n }
            }
            // Changed or removed meanwhile: read it again.
            Ok(Fired::Stale) | Err(Error::Shutdown) => Outcome::Again,
            Err(e @ Error::Database(_)) => {
                tracing::warn!(schedule = %row.name, error = %e, "firing schedule ticks failed; trying again");
                Outcome::Again
            }
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "a schedule's ticks cannot fire; skipping them");
                Outcome::Done { fired: 0 }
            }
        }
    }
}
