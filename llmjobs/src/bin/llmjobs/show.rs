//! `llmjobs show ID`: everything stored about one job.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmjobs::{AttemptError, Inspector, JobRecord, JobState, StepInfo};

use crate::args::ShowArgs;
use crate::output::{
    ProgressFigures, ago, between, count, dollars, duration, time, value_text, width,
};
use crate::{Outcome, json};

pub(crate) async fn run(url: &str, args: ShowArgs) -> Outcome {
    let db = Inspector::open(url).await?;
    let record = db.job(args.id).await?;
    let steps = db.steps(args.id).await?;
    if args.json {
        let mut value = json::record(&record);
        value["steps"] = steps.iter().map(json::step).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    out!(
        "{}",
        render(&record, &steps, SystemTime::now(), width(), args.full)
    );
    Ok(())
}

/// The text view of a job, `width` columns wide unless `full`.
pub(crate) fn render(
    record: &JobRecord,
    steps: &[StepInfo],
    now: SystemTime,
    width: usize,
    full: bool,
) -> String {
    let s = &record.status;
    let room = width.saturating_sub(16).max(30);
    let mut head = format!("job {}  {}  {}", s.id, s.name, s.state);
    if s.needs_review {
        head.push_str(" (needs review)");
    }
    if s.cancel_requested && !s.state.is_terminal() {
        head.push_str(" (cancel requested)");
    }
    let mut text = format!("{head}\n");
    {
        let mut line = |label: &str, value: String| {
            let _ = writeln!(text, "  {label:<13} {value}");
        };
        line(
            "attempts",
            format!("{} of at most {}", s.attempts, s.max_attempts),
        );
        if let Some(owner) = &s.owner {
            line("owner", owner.clone());
        }
        line("priority", s.priority.to_string());
        if let Some(key) = &s.concurrency_key {
            line("concurrency", key.clone());
        }
        if let Some(key) = &s.idempotency_key {
            line("idem. key", key.clone());
        }
        line(
            "queued",
            format!("{} ({})", time(s.created_at), ago(s.created_at, now)),
        );
        if s.state == JobState::Pending && s.run_at > now {
            line(
                "runs at",
                format!("{} ({})", time(s.run_at), ago(s.run_at, now)),
            );
        }
        if let Some(started) = s.started_at {
            let waited = between(Some(s.created_at), Some(started))
                .map(|d| format!(" (waited {})", duration(d)))
                .unwrap_or_default();
            line("started", format!("{}{waited}", time(started)));
        }
        match s.completed_at {
            Some(done) => {
                let ran = between(s.started_at, Some(done))
                    .map(|d| format!(" (ran {})", duration(d)))
                    .unwrap_or_default();
                line("finished", format!("{}{ran}", time(done)));
            }
            None if s.state == JobState::Running => {
                if let Some(d) = between(s.started_at, Some(now)) {
                    line("running for", duration(d));
                }
            }
            None => {}
        }
        let p = ProgressFigures::of(s);
        if s.progress.is_some() {
            let mut parts = Vec::new();
            if let Some(f) = p.fraction {
                parts.push(format!("{:.0}%", f * 100.0));
            }
            if let Some(stage) = &p.stage {
                parts.push(format!("[{stage}]"));
            }
            if let Some(message) = &p.message {
                parts.push(message.clone());
            }
            let label = if s.state.is_terminal() {
                "last progress"
            } else {
                "progress"
            };
            line(label, parts.join(" "));
        }
        if p.tokens().is_some() || p.cost_usd.is_some() {
            let mut usage = format!(
                "{} tokens in, {} out",
                count(p.input_tokens.unwrap_or(0)),
                count(p.output_tokens.unwrap_or(0))
            );
            if let Some(cost) = p.cost_usd {
                let _ = write!(usage, ", {}", dollars(cost));
            }
            line("usage", usage);
        }
        let error_text = |e: &str| value_text(&serde_json::Value::String(e.to_owned()), full, room);
        let attempt_line = |e: &AttemptError| {
            let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(e.ended_at_ms).unwrap_or(0));
            format!("{}  {}", time(at), error_text(&e.error))
        };
        for e in &s.attempt_errors {
            line(&format!("attempt {}", e.attempt), attempt_line(e));
        }
        // The job's error, unless it is the newest attempt's, just shown (it differs when the
        // job failed for something other than an attempt: its attempts all interrupted, or a
        // corrupt row).
        if let Some(error) = &s.error
            && s.attempt_errors.last().is_none_or(|e| &e.error != error)
        {
            line("error", error_text(error));
        }
        for (n, run) in s.earlier_runs.iter().enumerate() {
            let error = run
                .error
                .as_ref()
                .map(|e| {
                    format!(
                        ": {}",
                        value_text(&serde_json::Value::String(e.clone()), full, room)
                    )
                })
                .unwrap_or_default();
            line(
                &format!("earlier run {}", n + 1),
                format!("{} after {} attempt(s){error}", run.state, run.attempts),
            );
            for e in &run.attempt_errors {
                line(&format!("  attempt {}", e.attempt), attempt_line(e));
            }
        }
    }
    text.push_str("arguments\n");
    let _ = writeln!(text, "  {}", value_text(&record.args, full, room));
    if !steps.is_empty() {
        let _ = writeln!(text, "steps ({}, replayed on resume)", steps.len());
        for step in steps {
            let _ = writeln!(
                text,
                "  #{:<3} {:<24} {:>9}  {}",
                step.position,
                crate::output::short(&step.name, 24),
                format!("{} B", count(step.size)),
                time(step.recorded_at)
            );
        }
    }
    if let Some(result) = &record.result {
        text.push_str("result\n");
        let _ = writeln!(text, "  {}", value_text(result, full, room));
    }
    text
}
