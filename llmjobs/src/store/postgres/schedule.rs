//! Cron schedules: writing them, and firing their ticks. A tick's row and the job it spawns are
//! inserted in one transaction, and the tick's primary key lets only one process insert it: a
//! second process racing on a tick waits for the first's commit, then inserts nothing.

use sqlx::{PgConnection, PgPool};

use super::enqueue::insert_jobs;
use crate::Result;
use crate::store::{Enqueued, Fired, NewJob, ScheduleDef, ScheduleRow, TickJobs};

/// Ticks kept per schedule, at least: the newest ones.
const KEEP_TICKS: i64 = 100;

/// Ticks newer than this are kept whatever their number (milliseconds).
const KEEP_TICKS_FOR_MS: i64 = 10 * 60 * 1000;

/// Writes `put` (a definition unchanged is left as it is, its state included), then removes
/// the schedules in `undeclare` that code declared.
pub(super) async fn put_schedules(
    conn: &mut PgConnection,
    put: &[ScheduleDef],
    undeclare: &[String],
    now: i64,
) -> Result<()> {
    for def in put {
        // A changed expression or time zone starts afresh: its earlier ticks are not missed
        // ones. Any change moves the revision, so ticks computed from the old definition do
        // not fire.
        sqlx::query(
            "INSERT INTO llmjobs_schedules AS s (name, expression, timezone, job_name, call, \
             catch_up, catch_up_max, declared, since, revision, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $9, $9) \
             ON CONFLICT (name) DO UPDATE SET \
             since = CASE WHEN s.expression = excluded.expression \
                 AND s.timezone = excluded.timezone THEN s.since ELSE excluded.since END, \
             revision = s.revision + 1, expression = excluded.expression, \
             timezone = excluded.timezone, job_name = excluded.job_name, call = excluded.call, \
             catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max, \
             declared = excluded.declared, updated_at = excluded.updated_at \
             WHERE s.expression <> excluded.expression OR s.timezone <> excluded.timezone \
             OR s.job_name <> excluded.job_name OR s.call <> excluded.call \
             OR s.catch_up <> excluded.catch_up OR s.catch_up_max <> excluded.catch_up_max \
             OR s.declared <> excluded.declared",
        )
        .bind(&def.name)
        .bind(&def.expression)
        .bind(&def.timezone)
        .bind(&def.job_name)
        .bind(&def.call)
        .bind(def.catch_up)
        .bind(i64::from(def.catch_up_max))
        .bind(def.declared)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    for name in undeclare {
        let removed = sqlx::query("DELETE FROM llmjobs_schedules WHERE name = $1 AND declared")
            .bind(name)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if removed > 0 {
            forget_ticks(conn, name).await?;
        }
    }
    Ok(())
}

/// Removes a schedule and its ticks; whether there was one.
pub(super) async fn remove_schedule(conn: &mut PgConnection, name: &str) -> Result<bool> {
    let removed = sqlx::query("DELETE FROM llmjobs_schedules WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    forget_ticks(conn, name).await?;
    Ok(removed > 0)
}

async fn forget_ticks(conn: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM llmjobs_schedule_ticks WHERE schedule = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Fires the ticks no process fired yet, each with its job, if the schedule still has the
/// revision they were computed from.
pub(super) async fn fire_ticks(
    conn: &mut PgConnection,
    fire: &TickJobs,
    now: i64,
) -> Result<Fired> {
    // The lock the `last_tick` update below takes, taken first: a change of the definition
    // waits for this firing, and the other way round; and processes firing the same ticks
    // take turns, the later one finding them fired. (A shared lock here deadlocked them: each
    // waited on the other's tick row while holding the share that blocked the other's update.)
    let revision: Option<(i64,)> =
        sqlx::query_as("SELECT revision FROM llmjobs_schedules WHERE name = $1 FOR NO KEY UPDATE")
            .bind(&fire.schedule)
            .fetch_optional(&mut *conn)
            .await?;
    if revision.map(|(r,)| r) != Some(fire.revision) {
        return Ok(Fired::Stale);
    }
    let mut fired = Vec::with_capacity(fire.ticks.len());
    let mut jobs: Vec<(i64, NewJob)> = Vec::new();
    for (tick, job) in &fire.ticks {
        let inserted = sqlx::query(
            "INSERT INTO llmjobs_schedule_ticks (schedule, tick, job_id, fired_at) \
             VALUES ($1, $2, $3::uuid, $4) ON CONFLICT (schedule, tick) DO NOTHING",
        )
        .bind(&fire.schedule)
        .bind(tick)
        .bind(job.id.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        fired.push(inserted);
        if inserted {
            jobs.push((*tick, job.clone()));
        }
    }
    let Some(latest) = jobs.iter().map(|(tick, _)| *tick).max() else {
        return Ok(Fired::Ticks(fired));
    };
    let (ticks, new_jobs): (Vec<i64>, Vec<NewJob>) = jobs.into_iter().unzip();
    for (tick, enqueued) in ticks.iter().zip(insert_jobs(conn, &new_jobs).await?) {
        // The call's idempotency key named a job that holds it: the tick spawned that one.
        if let Enqueued::Existing(existing) = enqueued {
            sqlx::query(
                "UPDATE llmjobs_schedule_ticks SET job_id = $1::uuid \
                 WHERE schedule = $2 AND tick = $3",
            )
            .bind(existing.to_string())
            .bind(&fire.schedule)
            .bind(tick)
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query(
        "UPDATE llmjobs_schedules SET last_tick = greatest(coalesce(last_tick, $2), $2) \
         WHERE name = $1",
    )
    .bind(&fire.schedule)
    .bind(latest)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM llmjobs_schedule_ticks WHERE schedule = $1 AND tick < $2 AND tick < \
         (SELECT tick FROM llmjobs_schedule_ticks WHERE schedule = $1 \
          ORDER BY tick DESC LIMIT 1 OFFSET $3)",
    )
    .bind(&fire.schedule)
    .bind(now - KEEP_TICKS_FOR_MS)
    .bind(KEEP_TICKS - 1)
    .execute(&mut *conn)
    .await?;
    Ok(Fired::Ticks(fired))
}

/// Every schedule, by name.
pub(super) async fn read_schedules(pool: &PgPool) -> Result<Vec<ScheduleRow>> {
    type Columns = (
        String,
        String,
        String,
        String,
        String,
        String,
        i64,
        bool,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Columns> = sqlx::query_as(
        "SELECT name, expression, timezone, job_name, call, catch_up, catch_up_max, declared, \
         since, revision, last_tick FROM llmjobs_schedules ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                name,
                expression,
                timezone,
                job_name,
                call,
                catch_up,
                catch_up_max,
                declared,
                since,
                revision,
                last_tick,
            )| ScheduleRow {
                name,
                expression,
                timezone,
                job_name,
                call,
                catch_up,
                catch_up_max,
                declared,
                since,
                revision,
                last_tick,
                problems: Vec::new(),
            },
        )
        .collect())
}
