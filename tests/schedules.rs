//! Cron schedules: declared in code or added at run time, each tick fired once across every
//! process sharing the database, missed ticks caught up as the schedule says.
//!
//! Runtimes here register their jobs by hand (`auto_register(false)`), except where a test is
//! about automatic registration: the `#[llm_job(cron = ...)]` job of this file would otherwise
//! be scheduled in every test's database.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmjobs::{
    CatchUp, Error, Job, JobContext, JobError, JobFilter, JobState, JobStatus, Jobs, Schedule,
    llm_job,
};
use llmjobs_testkit::TempDb;
use serde::{Deserialize, Serialize};

const EVERY_SECOND: &str = "* * * * * *";

#[llm_job]
async fn beat() -> Result<(), JobError> {
    Ok(())
}

#[llm_job(cron = "* * * * * *")]
async fn declared_every_second() -> Result<(), JobError> {
    Ok(())
}

/// The job above as it is once `cron` is removed from its code: same name, no schedule.
#[derive(Serialize, Deserialize)]
struct DeclaredEverySecondWithoutCron {}

impl Job for DeclaredEverySecondWithoutCron {
    const NAME: &'static str = "declared_every_second";
    type Output = ();

    async fn run(_ctx: JobContext, _args: Self) -> Result<(), JobError> {
        Ok(())
    }
}

/// A runtime that runs `beat` and no other job.
async fn open(db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .auto_register(false)
        .register::<beat>()
        .poll_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap()
}

/// A runtime that runs nothing and fires no ticks: to look at the database.
async fn observer(db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .auto_register(false)
        .run_jobs(false)
        .open()
        .await
        .unwrap()
}

async fn jobs_named(jobs: &Jobs, name: &str) -> Vec<JobStatus> {
    jobs.list(JobFilter::new().name(name).limit(10_000))
        .await
        .unwrap()
}

fn ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The tick a scheduled job was spawned for: its `run_at`.
fn tick_of(job: &JobStatus) -> u64 {
    ms(job.run_at)
}

/// Polls every 20 ms until `condition` holds of the jobs named `name`; panics after `timeout`.
async fn wait_for_jobs(
    jobs: &Jobs,
    name: &str,
    timeout: Duration,
    what: &str,
    condition: impl Fn(&[JobStatus]) -> bool,
) -> Vec<JobStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = jobs_named(jobs, name).await;
        if condition(&found) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runtimes_on_one_database_fire_each_tick_once() {
    let db = TempDb::new();
    let runtimes = [open(&db).await, open(&db).await, open(&db).await];
    let schedule = Schedule::cron("beat", EVERY_SECOND).unwrap();
    runtimes[0].schedule(schedule, beat()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5300)).await;
    for jobs in &runtimes {
        jobs.shutdown().await;
    }

    let observer = observer(&db).await;
    let fired = jobs_named(&observer, "beat").await;
    let ticks: BTreeSet<u64> = fired.iter().map(tick_of).collect();
    assert_eq!(fired.len(), ticks.len(), "one job per tick: {ticks:?}");
    assert!(ticks.len() >= 5, "about five ticks fired: {ticks:?}");
    let ticks: Vec<u64> = ticks.into_iter().collect();
    assert!(
        ticks.windows(2).all(|pair| pair[1] - pair[0] == 1000),
        "no tick skipped: {ticks:?}"
    );
    observer.shutdown().await;
}

/// Schedules `beat` every second with `catch_up`, lets it fire, stops for three ticks, starts
/// again and waits for the first tick after the restart: the ticks missed meanwhile that
/// fired.
async fn missed_ticks_fired(catch_up: CatchUp) -> Vec<u64> {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let schedule = Schedule::cron("beat", EVERY_SECOND)
        .unwrap()
        .catch_up(catch_up);
    jobs.schedule(schedule, beat()).await.unwrap();
    wait_for_jobs(
        &jobs,
        "beat",
        Duration::from_secs(3),
        "a first tick",
        |found| !found.is_empty(),
    )
    .await;
    jobs.shutdown().await;

    let observer = observer(&db).await;
    let last = observer.schedules().await.unwrap()[0]
        .last_tick
        .expect("a tick fired");
    observer.shutdown().await;

    // Down until 3.3 s after the last tick fired: three ticks come due meanwhile.
    let restart = last + Duration::from_millis(3300);
    tokio::time::sleep(restart.duration_since(SystemTime::now()).unwrap()).await;
    let jobs = open(&db).await;
    let first_after_restart = ms(last) + 4000;
    let fired = wait_for_jobs(
        &jobs,
        "beat",
        Duration::from_secs(3),
        "the first tick after the restart",
        |found| found.iter().any(|job| tick_of(job) >= first_after_restart),
    )
    .await;
    jobs.shutdown().await;
    let mut missed: Vec<u64> = fired
        .iter()
        .map(tick_of)
        .filter(|&tick| tick > ms(last) && tick < first_after_restart)
        .map(|tick| (tick - ms(last)) / 1000)
        .collect();
    missed.sort_unstable();
    missed
}

#[tokio::test]
async fn skip_fires_no_tick_missed_while_no_process_ran() {
    assert_eq!(missed_ticks_fired(CatchUp::Skip).await, Vec::<u64>::new());
}

#[tokio::test]
async fn once_fires_the_latest_missed_tick() {
    // Ticks are numbered in seconds after the last one fired before the stop.
    assert_eq!(missed_ticks_fired(CatchUp::Once).await, [3]);
}

#[tokio::test]
async fn all_fires_every_missed_tick() {
    assert_eq!(
        missed_ticks_fired(CatchUp::All { max: 10 }).await,
        [1, 2, 3]
    );
}

#[tokio::test]
async fn all_fires_at_most_max_of_the_latest_missed_ticks() {
    assert_eq!(missed_ticks_fired(CatchUp::All { max: 2 }).await, [2, 3]);
}

#[tokio::test]
async fn unschedule_stops_the_ticks() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let schedule = Schedule::cron("beat", EVERY_SECOND).unwrap();
    jobs.schedule(schedule, beat()).await.unwrap();
    wait_for_jobs(
        &jobs,
        "beat",
        Duration::from_secs(3),
        "a first tick",
        |found| !found.is_empty(),
    )
    .await;
    assert!(jobs.unschedule("beat").await.unwrap());
    let fired = jobs_named(&jobs, "beat").await.len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(jobs_named(&jobs, "beat").await.len(), fired);
    assert!(jobs.schedules().await.unwrap().is_empty());
    assert!(!jobs.unschedule("beat").await.unwrap(), "nothing to remove");
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_cron_job_declared_in_code_is_scheduled_at_open_and_runs() {
    let db = TempDb::new();
    // Every `#[llm_job]` of this program is registered, as by default.
    let jobs = Jobs::builder()
        .url(db.url())
        .poll_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    let schedules = jobs.schedules().await.unwrap();
    assert_eq!(schedules.len(), 1, "{schedules:?}");
    let declared = &schedules[0];
    assert_eq!(declared.name, "declared_every_second");
    assert_eq!(declared.job, "declared_every_second");
    assert_eq!(declared.expression, EVERY_SECOND);
    assert_eq!(declared.timezone, "UTC");
    assert!(declared.declared);
    wait_for_jobs(
        &jobs,
        "declared_every_second",
        Duration::from_secs(3),
        "a declared tick's job to complete",
        |found| found.iter().any(|job| job.state == JobState::Completed),
    )
    .await;
    jobs.shutdown().await;
}

#[tokio::test]
async fn removing_cron_from_a_jobs_code_removes_its_schedule() {
    let db = TempDb::new();
    let declaring = Jobs::builder()
        .url(db.url())
        .auto_register(false)
        .register::<declared_every_second>()
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    assert_eq!(declaring.schedules().await.unwrap().len(), 1);
    declaring.shutdown().await;

    let without_cron = Jobs::builder()
        .url(db.url())
        .auto_register(false)
        .register::<DeclaredEverySecondWithoutCron>()
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    assert!(without_cron.schedules().await.unwrap().is_empty());
    without_cron.shutdown().await;
}

#[tokio::test]
async fn a_runtime_schedule_stays_until_unscheduled() {
    let db = TempDb::new();
    let jobs = observer(&db).await;
    let schedule = Schedule::cron("nightly-beat", "0 0 3 * * *").unwrap();
    jobs.schedule(schedule, beat()).await.unwrap();
    jobs.shutdown().await;

    // A process that registers `beat` without a schedule leaves it: it was not declared.
    let jobs = open(&db).await;
    let names: Vec<String> = jobs
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["nightly-beat"]);
    assert!(jobs.unschedule("nightly-beat").await.unwrap());
    jobs.shutdown().await;
}

#[tokio::test]
async fn schedules_lists_each_schedule_with_its_next_tick() {
    let db = TempDb::new();
    let jobs = observer(&db).await;
    let schedule = Schedule::cron("digest", "0 0 9 * * *")
        .unwrap()
        .timezone("Europe/Paris")
        .unwrap()
        .catch_up(CatchUp::Once);
    let expected_next = schedule.next_after(SystemTime::now()).unwrap();
    jobs.schedule(schedule, beat()).await.unwrap();

    let listed = jobs.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    let digest = &listed[0];
    assert_eq!(digest.name, "digest");
    assert_eq!(digest.expression, "0 0 9 * * *");
    assert_eq!(digest.timezone, "Europe/Paris");
    assert_eq!(digest.job, "beat");
    assert_eq!(digest.catch_up, CatchUp::Once);
    assert!(!digest.declared);
    assert_eq!(digest.next_tick, Some(expected_next));
    let ahead = expected_next.duration_since(SystemTime::now()).unwrap();
    assert!(ahead <= Duration::from_secs(25 * 3600), "{ahead:?}");
    assert_eq!(digest.last_tick, None);
    jobs.shutdown().await;
}

#[test]
fn a_bad_expression_is_an_error_naming_it() {
    let err = Schedule::cron("report", "0 0 25 * * *").unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("`report`"), "{message}");
    assert!(message.contains("\"0 0 25 * * *\""), "{message}");
    assert!(message.contains("Hours"), "{message}");

    let message = Schedule::cron("report", "*/5 * * * *")
        .unwrap_err()
        .to_string();
    assert!(message.contains("has 5 fields"), "{message}");
}

#[test]
fn a_bad_time_zone_is_an_error_naming_it() {
    let err = Schedule::cron("report", "0 0 9 * * *")
        .unwrap()
        .timezone("Europe/Pariss")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("unknown time zone \"Europe/Pariss\""),
        "{message}"
    );
}
