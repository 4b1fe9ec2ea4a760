//! Scheduling: a cron job, a delayed job and a deduplicated one.
//!
//! `heartbeat` runs every two seconds (`#[llm_job(cron = ...)]`: declared by the code, fired
//! once per tick however many processes share the database); a reminder is spawned to run three
//! seconds later; the same invoice is spawned twice under one idempotency key and runs once.
//! Everything goes to `schedule.db` in the current folder: run the example again and invoice
//! 1042 is not charged again; run it twice at once, in two terminals, and the heartbeat still
//! fires once per tick.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example schedule
//! ```

use std::time::{Duration, Instant, SystemTime};

use llmjobs::{JobError, JobFilter, Jobs, Schedule, llm_job};

/// A job on a cron schedule: no arguments, fired every two seconds.
#[llm_job(cron = "*/2 * * * * *")]
async fn heartbeat() -> Result<String, JobError> {
    Ok(format!("alive at {:?}", SystemTime::now()))
}

/// A job to run later.
#[llm_job]
async fn remind(user: String) -> Result<String, JobError> {
    Ok(format!("reminded {user}"))
}

/// A job that must not run twice for one invoice: its key is the invoice number.
#[llm_job(idempotency_key = invoice)]
async fn charge(invoice: u32, cents: u64) -> Result<String, JobError> {
    Ok(format!("charged invoice {invoice}: {cents} cents"))
}

/// How far in the future `time` is, for people.
fn from_now(time: SystemTime) -> String {
    match time.duration_since(SystemTime::now()) {
        Ok(d) => format!("{:.1} s", d.as_secs_f64()),
        Err(_) => "0 s (due)".into(),
    }
}

#[tokio::main]
async fn main() -> llmjobs::Result<()> {
    let started = Instant::now();
    let jobs = Jobs::open("sqlite://schedule.db").await?;

    // Run later: pending until its time, holding no slot meanwhile.
    let reminder = jobs
        .spawn(remind("ada".into()).delay(Duration::from_secs(3)))
        .await?;
    let status = reminder.status().await?;
    println!(
        "reminder {} is {}, due in {}",
        reminder.id(),
        status.state,
        from_now(status.run_at)
    );

    // Once: the second spawn of the same invoice returns the first job.
    let first = jobs.spawn(charge(1042, 1999)).await?;
    let again = jobs.spawn(charge(1042, 1999)).await?;
    println!(
        "invoice 1042: first spawn new = {}, second spawn new = {}, same job = {}",
        first.is_new(),
        again.is_new(),
        first.id() == again.id()
    );
    println!("{}", again.wait().await?);

    // A schedule made at run time, beside the one the code declares.
    jobs.schedule(
        Schedule::cron("hourly-report", "0 0 * * * *")?.timezone("Europe/Paris")?,
        remind("the team".into()),
    )
    .await?;
    for schedule in jobs.schedules().await? {
        println!(
            "schedule `{}` ({}, {}): next tick in {}",
            schedule.name,
            schedule.expression,
            schedule.timezone,
            schedule.next_tick.map_or("(none)".into(), from_now)
        );
    }

    println!("{}", reminder.wait().await?);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let beats = jobs
        .list(JobFilter::new().name("heartbeat").limit(1000))
        .await?;
    println!(
        "heartbeat ran {} time(s) in this database so far; took {:.1?}",
        beats.len(),
        started.elapsed()
    );
    jobs.unschedule("hourly-report").await?;
    jobs.shutdown().await;
    Ok(())
}
