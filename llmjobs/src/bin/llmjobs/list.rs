//! `llmjobs list`: jobs newest first, filtered, a page at a time.

use std::time::SystemTime;

use llmjobs::{Inspector, JobFilter, JobState, JobStatus};

use crate::args::ListArgs;
use crate::output::{FULL_HINT, ProgressFigures, ago, between, clip, duration, short, width};
use crate::{Outcome, json};

pub(crate) async fn run(url: &str, args: ListArgs) -> Outcome {
    let db = Inspector::open(url).await?;
    let filter = filter(&args);
    let records = db.records(filter).await?;
    if args.json {
        let all: Vec<_> = records.iter().map(json::record).collect();
        outln!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(());
    }
    if args.jsonl {
        for record in &records {
            outln!("{}", json::record(record));
        }
        return Ok(());
    }
    let statuses: Vec<&JobStatus> = records.iter().map(|r| &r.status).collect();
    let (table, truncated) = table(&statuses, SystemTime::now(), width(), args.full);
    out!("{table}");
    if records.is_empty() {
        eprintln!("no jobs match");
    }
    if truncated {
        eprintln!("some values were cut{}", FULL_HINT.trim_start_matches('…'));
    }
    if let Some(last) = records.last()
        && records.len() == args.limit as usize
    {
        eprintln!("more: add --after {}", last.status.id);
    }
    Ok(())
}

fn filter(args: &ListArgs) -> JobFilter {
    let mut filter = JobFilter::new().limit(args.limit);
    if let Some(state) = args.state {
        filter = filter.state(state);
    }
    if let Some(name) = &args.name {
        filter = filter.name(name);
    }
    if args.needs_review {
        filter = filter.needs_review(true);
    }
    if let Some(since) = args.since {
        filter = filter.created_after(SystemTime::now() - since);
    }
    if let Some(key) = &args.key {
        filter = filter.idempotency_key(key);
    }
    if let Some(key) = &args.concurrency_key {
        filter = filter.concurrency_key(key);
    }
    if let Some(after) = args.after {
        filter = filter.after(after);
    }
    if args.oldest_first {
        filter = filter.oldest_first();
    }
    filter
}

/// The listing as a table `width` columns wide (the last column is cut to fit unless `full`),
/// and whether anything was cut.
pub(crate) fn table(
    jobs: &[&JobStatus],
    now: SystemTime,
    width: usize,
    full: bool,
) -> (String, bool) {
    let name_width = jobs
        .iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 24);
    let mut out = format!(
        "{:<36}  {:<name_width$}  {:<9}  {:>5}  {:<10}  INFO\n",
        "ID", "NAME", "STATE", "TRIES", "CREATED"
    );
    let fixed = 36 + 2 + name_width + 2 + 9 + 2 + 5 + 2 + 10 + 2;
    let room = width.saturating_sub(fixed).max(20);
    let mut truncated = false;
    for job in jobs {
        let info = info(job);
        let info = if full {
            info
        } else {
            let (text, cut) = clip(&info, room);
            truncated |= cut;
            text
        };
        let mut created = ago(job.created_at, now);
        created.truncate(10);
        out.push_str(&format!(
            "{:<36}  {:<name_width$}  {:<9}  {:>5}  {:<10}  {}\n",
            job.id.to_string(),
            short(&job.name, name_width),
            job.state.as_str(),
            format!("{}/{}", job.attempts, job.max_attempts),
            created,
            info
        ));
    }
    (out, truncated)
}

/// The one thing to know about a job at a glance: its error, how long it ran, or what it is
/// doing.
fn info(job: &JobStatus) -> String {
    if let Some(error) = &job.error {
        let review = if job.needs_review {
            "needs review: "
        } else {
            ""
        };
        return format!("{review}{error}");
    }
    if job.state.is_terminal() {
        return between(job.started_at, job.completed_at)
            .map(|d| format!("ran {}", duration(d)))
            .unwrap_or_default();
    }
    let p = ProgressFigures::of(job);
    let mut parts = Vec::new();
    if job.state == JobState::Pending && job.run_at > SystemTime::now() {
        parts.push(format!("due {}", ago(job.run_at, SystemTime::now())));
    }
    if let Some(f) = p.fraction {
        parts.push(format!("{:.0}%", f * 100.0));
    }
    if let Some(doing) = p.doing() {
        parts.push(doing);
    }
    if job.cancel_requested {
        parts.push("cancel requested".into());
    }
    parts.join(" ")
}
