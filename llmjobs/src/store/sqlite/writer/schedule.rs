//! Cron schedules: writing them, and firing their ticks. A tick's row and the job it spawns are
//! inserted in one transaction, and the tick's primary key lets only one process insert it: two
//! processes racing on a tick insert one job.

use rusqlite::{Connection, OptionalExtension};

use super::enqueue::insert_jobs;
use super::execute;
use super::tally::Tally;
use crate::Result;
use crate::store::sqlite::columns::lenient;
use crate::store::{Enqueued, Fired, NewJob, ScheduleDef, ScheduleRow, TickJobs};

/// Ticks kept per schedule, at least: the newest ones.
const KEEP_TICKS: i64 = 100;

/// Ticks newer than this are kept whatever their number (milliseconds). A process fires a
/// tick at most a little over half a minute late, or after the latest tick fired: a pruned tick
/// is never fired again.
const KEEP_TICKS_FOR_MS: i64 = 10 * 60 * 1000;

/// Writes `put` (a definition unchanged is left as it is, its state included), then removes
/// the schedules in `undeclare` that code declared.
pub(super) fn put_schedules(
    conn: &Connection,
    put: &[ScheduleDef],
    undeclare: &[String],
    now: i64,
) -> Result<()> {
    for def in put {
        // A changed expression or time zone starts afresh: its earlier ticks are not missed
        // ones. Any change moves the revision, so ticks computed from the old definition do
        // not fire.
        execute(
            conn,
            "INSERT INTO llmjobs_schedules (name, expression, timezone, job_name, call, \
             catch_up, catch_up_max, declared, since, revision, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?9, ?9) \
             ON CONFLICT (name) DO UPDATE SET \
             since = CASE WHEN expression = excluded.expression \
                 AND timezone = excluded.timezone THEN since ELSE excluded.since END, \
             revision = revision + 1, expression = excluded.expression, \
             timezone = excluded.timezone, job_name = excluded.job_name, call = excluded.call, \
             catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max, \
             declared = excluded.declared, updated_at = excluded.updated_at \
             WHERE expression <> excluded.expression OR timezone <> excluded.timezone \
             OR job_name <> excluded.job_name OR call <> excluded.call \
             OR catch_up <> excluded.catch_up OR catch_up_max <> excluded.catch_up_max \
             OR declared <> excluded.declared",
            rusqlite::params![
                def.name,
                def.expression,
                def.timezone,
                def.job_name,
                def.call,
                def.catch_up,
                def.catch_up_max,
                def.declared,
                now,
            ],
        )?;
    }
    for name in undeclare {
        let removed = execute(
            conn,
            "DELETE FROM llmjobs_schedules WHERE name = ? AND declared = 1",
            [name],
        )?;
        if removed > 0 {
            forget_ticks(conn, name)?;
        }
    }
    Ok(())
}

/// Removes a schedule and its ticks; whether there was one.
pub(super) fn remove_schedule(conn: &Connection, name: &str) -> Result<bool> {
    let removed = execute(conn, "DELETE FROM llmjobs_schedules WHERE name = ?", [name])?;
    forget_ticks(conn, name)?;
    Ok(removed > 0)
}

fn forget_ticks(conn: &Connection, name: &str) -> Result<()> {
    execute(
        conn,
        "DELETE FROM llmjobs_schedule_ticks WHERE schedule = ?",
        [name],
    )?;
    Ok(())
}

/// Fires the ticks no process fired yet, each with its job, if the schedule still has the
/// revision they were computed from.
pub(super) fn fire_ticks(
    conn: &Connection,
    fire: &TickJobs,
    now: i64,
    tally: &mut Tally,
) -> Result<Fired> {
    let revision: Option<i64> = conn
        .prepare_cached("SELECT revision FROM llmjobs_schedules WHERE name = ?")?
        .query_row([&fire.schedule], |row| row.get(0))
        .optional()?;
    if revision != Some(fire.revision) {
        return Ok(Fired::Stale);
    }
    let mut fired = Vec::with_capacity(fire.ticks.len());
    let mut jobs: Vec<(i64, &NewJob)> = Vec::new();
    for (tick, job) in &fire.ticks {
        let inserted = execute(
            conn,
            "INSERT INTO llmjobs_schedule_ticks (schedule, tick, job_id, fired_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (schedule, tick) DO NOTHING",
            rusqlite::params![fire.schedule, tick, job.id.to_string(), now],
        )? == 1;
        fired.push(inserted);
        if inserted {
            jobs.push((*tick, job));
        }
    }
    let Some(latest) = jobs.iter().map(|(tick, _)| *tick).max() else {
        return Ok(Fired::Ticks(fired));
    };
    let new_jobs: Vec<&NewJob> = jobs.iter().map(|(_, job)| *job).collect();
    for ((tick, _), enqueued) in jobs.iter().zip(insert_jobs(conn, &new_jobs, tally)?) {
        // The call's idempotency key named a job that holds it: the tick spawned that one.
        if let Enqueued::Existing(existing) = enqueued {
            execute(
                conn,
                "UPDATE llmjobs_schedule_ticks SET job_id = ? WHERE schedule = ? AND tick = ?",
                rusqlite::params![existing.to_string(), fire.schedule, tick],
            )?;
        }
    }
    execute(
        conn,
        "UPDATE llmjobs_schedules SET last_tick = max(coalesce(last_tick, ?2), ?2) \
         WHERE name = ?1",
        rusqlite::params![fire.schedule, latest],
    )?;
    execute(
        conn,
        "DELETE FROM llmjobs_schedule_ticks WHERE schedule = ?1 AND tick < ?2 AND tick < \
         (SELECT tick FROM llmjobs_schedule_ticks WHERE schedule = ?1 \
          ORDER BY tick DESC LIMIT 1 OFFSET ?3)",
        rusqlite::params![fire.schedule, now - KEEP_TICKS_FOR_MS, KEEP_TICKS - 1],
    )?;
    Ok(Fired::Ticks(fired))
}

/// Every schedule, by name. A column holding a value of the wrong type is read as its default
/// and described in the row's `problems`: one bad row does not hide the others.
pub(crate) fn read_schedules(conn: &Connection) -> Result<Vec<ScheduleRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, expression, timezone, job_name, call, catch_up, catch_up_max, declared, \
         since, revision, last_tick FROM llmjobs_schedules ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    let mut schedules = Vec::new();
    while let Some(row) = rows.next()? {
        let mut problems = Vec::new();
        let p = &mut problems;
        let (text, int) = ("text", "an integer");
        schedules.push(ScheduleRow {
            name: lenient(row, 0, text, p),
            expression: lenient(row, 1, text, p),
            timezone: lenient(row, 2, text, p),
            job_name: lenient(row, 3, text, p),
            call: lenient(row, 4, text, p),
            catch_up: lenient(row, 5, text, p),
            catch_up_max: lenient(row, 6, int, p),
            declared: lenient::<i64>(row, 7, int, p) != 0,
            since: lenient(row, 8, int, p),
            revision: lenient(row, 9, int, p),
            last_tick: lenient(row, 10, int, p),
            problems,
        });
    }
    Ok(schedules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    fn connection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::migrate::run(&conn).unwrap();
        conn
    }

    fn def(name: &str, expression: &str) -> ScheduleDef {
        ScheduleDef {
            name: name.into(),
            expression: expression.into(),
            timezone: "UTC".into(),
            job_name: "report".into(),
            call: r#"{"name":"report","args":{}}"#.into(),
            catch_up: "skip",
            catch_up_max: 0,
            declared: false,
        }
    }

    fn job(run_at: i64) -> NewJob {
        NewJob {
            id: JobId::new(),
            name: "report".into(),
            args: "{}".into(),
            priority: 0,
            concurrency_key: None,
            key_limit: None,
            max_attempts: 1,
            run_at,
            created_at: run_at,
            claimed_by: None,
            idempotency_key: None,
            idempotency_window: None,
            budget: None,
        }
    }

    fn row(conn: &Connection, name: &str) -> ScheduleRow {
        read_schedules(conn)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    fn fire(conn: &Connection, revision: i64, ticks: &[i64]) -> Fired {
        let fire = TickJobs {
            schedule: "s".into(),
            revision,
            ticks: ticks.iter().map(|&t| (t, job(t))).collect(),
        };
        fire_ticks(conn, &fire, 1_000_000_000, &mut Tally::default()).unwrap()
    }

    fn jobs(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM llmjobs_jobs", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_tick_fires_once_whoever_fires_it() {
        let conn = connection();
        put_schedules(&conn, &[def("s", "* * * * * *")], &[], 0).unwrap();
        assert_eq!(
            fire(&conn, 1, &[1000, 2000]),
            Fired::Ticks(vec![true, true])
        );
        assert_eq!(
            fire(&conn, 1, &[2000, 3000]),
            Fired::Ticks(vec![false, true])
        );
        assert_eq!(jobs(&conn), 3);
        assert_eq!(row(&conn, "s").last_tick, Some(3000));
    }

    #[test]
    fn ticks_of_an_old_revision_or_a_removed_schedule_do_not_fire() {
        let conn = connection();
        put_schedules(&conn, &[def("s", "* * * * * *")], &[], 0).unwrap();
        put_schedules(&conn, &[def("s", "*/2 * * * * *")], &[], 500).unwrap();
        assert_eq!(row(&conn, "s").revision, 2);
        assert_eq!(fire(&conn, 1, &[1000]), Fired::Stale);
        assert!(remove_schedule(&conn, "s").unwrap());
        assert_eq!(fire(&conn, 2, &[2000]), Fired::Stale);
        assert_eq!(jobs(&conn), 0);
        assert!(!remove_schedule(&conn, "s").unwrap());
    }

    #[test]
    fn writing_the_same_definition_keeps_its_state() {
        let conn = connection();
        put_schedules(&conn, &[def("s", "* * * * * *")], &[], 10).unwrap();
        fire(&conn, 1, &[1000]);
        put_schedules(&conn, &[def("s", "* * * * * *")], &[], 20).unwrap();
        let same = row(&conn, "s");
        assert_eq!(
            (same.revision, same.since, same.last_tick),
            (1, 10, Some(1000))
        );
        put_schedules(&conn, &[def("s", "*/2 * * * * *")], &[], 30).unwrap();
        let changed = row(&conn, "s");
        assert_eq!((changed.revision, changed.since), (2, 30));
    }

    #[test]
    fn undeclaring_removes_only_schedules_that_code_declared() {
        let conn = connection();
        let declared = ScheduleDef {
            declared: true,
            ..def("declared", "* * * * * *")
        };
        put_schedules(&conn, &[declared, def("runtime", "* * * * * *")], &[], 0).unwrap();
        put_schedules(&conn, &[], &["declared".into(), "runtime".into()], 0).unwrap();
        let names: Vec<String> = read_schedules(&conn)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["runtime"]);
    }

    #[test]
    fn old_ticks_are_pruned_down_to_the_newest() {
        let conn = connection();
        put_schedules(&conn, &[def("s", "* * * * * *")], &[], 0).unwrap();
        let ticks: Vec<i64> = (1..=250).map(|t| t * 1000).collect();
        fire(&conn, 1, &ticks);
        let (kept, oldest): (i64, i64) = conn
            .query_row(
                "SELECT count(*), min(tick) FROM llmjobs_schedule_ticks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((kept, oldest), (KEEP_TICKS, 151_000));
    }
}
