//! `llmjobs stats`: counts by state and name, and over a recent window: throughput, queue wait
//! and run time percentiles, failure rate, tokens and cost by model.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use std::collections::BTreeSet;

use llmjobs::{Inspector, JobCounts, JobRecord, JobState, UsageFilter, UsageGroup, UsageKey};
use serde_json::{Value, json};

use crate::Outcome;
use crate::args::StatsArgs;
use crate::output::{ProgressFigures, between, count, dollars, duration, short};

/// At most this many finished jobs are read for the window's figures.
const MAX_SAMPLE: u32 = 100_000;

pub(crate) async fn run(url: &str, args: StatsArgs) -> Outcome {
    let db = Inspector::open(url).await?;
    let by_name = db.counts_by_name().await?;
    let now = SystemTime::now();
    let since = now - args.window;
    let finished = db.finished_since(since, MAX_SAMPLE).await?;
    let ledger = db
        .usage(UsageFilter::new().since(since).by(UsageKey::Model))
        .await?;
    let ledger_names = db
        .usage(UsageFilter::new().since(since).by(UsageKey::JobName))
        .await?
        .into_iter()
        .filter_map(|g| g.job_name)
        .collect();
    let stats = Stats::of(&finished, args.window, now).with_ledger(&ledger, &ledger_names);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&stats.json(&by_name)).unwrap_or_default()
        );
    } else {
        out!("{}", stats.text(&by_name));
    }
    Ok(())
}

/// Usage summed over one model's jobs (or calls).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Usage {
    pub(crate) jobs: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_usd: Option<f64>,
    /// The names of the jobs counted from their progress reports.
    pub(crate) from_progress: BTreeSet<String>,
}

/// The window's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stats {
    pub(crate) window: Duration,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    /// Sorted.
    pub(crate) queue_waits: Vec<Duration>,
    /// Sorted.
    pub(crate) run_times: Vec<Duration>,
    /// By model, from the usage ledger (the provider calls made in the window); jobs of names
    /// without ledger rows that report tokens or cost in their progress, by `args.model`,
    /// else by job name in parentheses.
    pub(crate) usage: BTreeMap<String, Usage>,
    /// Jobs finished in each of the last minutes of the window (at most [`MINUTES`]), oldest
    /// first; the last is the minute up to now.
    pub(crate) minutes: Vec<u64>,
}

/// How many recent minutes the throughput is shown for, minute by minute.
const MINUTES: u64 = 10;

impl Stats {
    pub(crate) fn of(finished: &[JobRecord], window: Duration, now: SystemTime) -> Stats {
        let minutes = (window.as_secs() / 60).clamp(1, MINUTES);
        let mut stats = Stats {
            minutes: vec![0; minutes as usize],
            window,
            completed: 0,
            failed: 0,
            cancelled: 0,
            queue_waits: Vec::new(),
            run_times: Vec::new(),
            usage: BTreeMap::new(),
        };
        for record in finished {
            let s = &record.status;
            match s.state {
                JobState::Completed => stats.completed += 1,
                JobState::Failed => stats.failed += 1,
                _ => stats.cancelled += 1,
            }
            if let Some(ago) = s.completed_at.and_then(|t| now.duration_since(t).ok()) {
                let minute = ago.as_secs() / 60;
                if minute < minutes {
                    stats.minutes[(minutes - 1 - minute) as usize] += 1;
                }
            }
            stats
                .queue_waits
                .extend(between(Some(s.created_at), s.started_at));
            stats
                .run_times
                .extend(between(s.started_at, s.completed_at));
            let p = ProgressFigures::of(s);
            if p.tokens().is_some() || p.cost_usd.is_some() {
                let model = record
                    .args
                    .get("model")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("({})", s.name), str::to_string);
                let usage = stats.usage.entry(model).or_default();
                usage.jobs += 1;
                usage.from_progress.insert(s.name.clone());
                usage.input_tokens += p.input_tokens.unwrap_or(0);
                usage.output_tokens += p.output_tokens.unwrap_or(0);
                if let Some(cost) = p.cost_usd {
                    usage.cost_usd = Some(usage.cost_usd.unwrap_or(0.0) + cost);
                }
            }
        }
        stats.queue_waits.sort();
        stats.run_times.sort();
        stats
    }

    /// Replaces the figures of jobs whose calls the usage ledger holds with the ledger's, by
    /// model: it counts every provider call (failed tries and retried attempts too), and calls
    /// of jobs still running. Jobs of other names (which report usage themselves) stay.
    pub(crate) fn with_ledger(
        mut self,
        by_model: &[UsageGroup],
        ledger_names: &BTreeSet<String>,
    ) -> Stats {
        self.usage
            .retain(|_, u| u.from_progress.iter().all(|n| !ledger_names.contains(n)));
        for group in by_model {
            let model = group.model.clone().unwrap_or_default();
            let usage = self.usage.entry(model).or_default();
            usage.jobs += group.jobs;
            usage.input_tokens += group.input_tokens;
            usage.output_tokens += group.output_tokens;
            if let Some(cost) = group.known_cost() {
                usage.cost_usd = Some(usage.cost_usd.unwrap_or(0.0) + cost);
            }
        }
        self
    }

    fn finished(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }

    /// Failed among those that completed or failed (cancelled jobs are neither).
    pub(crate) fn failure_rate(&self) -> Option<f64> {
        let ended = self.completed + self.failed;
        (ended > 0).then(|| self.failed as f64 / ended as f64)
    }

    fn per_minute(&self) -> f64 {
        self.finished() as f64 / (self.window.as_secs_f64() / 60.0).max(1.0 / 60.0)
    }

    fn text(&self, by_name: &BTreeMap<String, JobCounts>) -> String {
        let mut out = String::new();
        let name_width = by_name
            .keys()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(5, 28);
        let _ = writeln!(
            out,
            "{:<name_width$}  {:>8}  {:>8}  {:>9}  {:>7}  {:>9}",
            "NAME", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
        );
        let mut total = JobCounts::default();
        let row = |out: &mut String, name: &str, c: &JobCounts| {
            let _ = writeln!(
                out,
                "{:<name_width$}  {:>8}  {:>8}  {:>9}  {:>7}  {:>9}",
                short(name, name_width),
                count(c.pending),
                count(c.running),
                count(c.completed),
                count(c.failed),
                count(c.cancelled)
            );
        };
        for (name, counts) in by_name {
            row(&mut out, name, counts);
            total.pending += counts.pending;
            total.running += counts.running;
            total.completed += counts.completed;
            total.failed += counts.failed;
            total.cancelled += counts.cancelled;
        }
        if by_name.len() > 1 {
            row(&mut out, "(all)", &total);
        }
        let window = duration(self.window);
        let rate = self
            .failure_rate()
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0));
        let _ = writeln!(
            out,
            "\nlast {window}: {} finished ({:.1}/min): {} completed, {} failed, {} cancelled; failure rate {rate}",
            count(self.finished()),
            self.per_minute(),
            count(self.completed),
            count(self.failed),
            count(self.cancelled),
        );
        let per_minute: Vec<String> = self.minutes.iter().map(|n| count(*n)).collect();
        let _ = writeln!(
            out,
            "  finished per minute, the last {} minute(s), oldest first: {}",
            self.minutes.len(),
            per_minute.join(" ")
        );
        let _ = writeln!(
            out,
            "  {:<11} {:>9} {:>9} {:>9} {:>9}",
            "", "p50", "p95", "p99", "max"
        );
        for (label, sample) in [
            ("queue wait", &self.queue_waits),
            ("run time", &self.run_times),
        ] {
            let cell = |q: f64| percentile(sample, q).map_or_else(|| "-".into(), duration);
            let _ = writeln!(
                out,
                "  {label:<11} {:>9} {:>9} {:>9} {:>9}",
                cell(0.50),
                cell(0.95),
                cell(0.99),
                cell(1.0)
            );
        }
        if !self.usage.is_empty() {
            let _ = writeln!(
                out,
                "\ntokens and cost of the LLM calls made in the last {window}"
            );
            let _ = writeln!(
                out,
                "  {:<28} {:>6} {:>12} {:>12} {:>10}",
                "MODEL", "JOBS", "INPUT", "OUTPUT", "COST"
            );
            for (model, u) in &self.usage {
                let _ = writeln!(
                    out,
                    "  {:<28} {:>6} {:>12} {:>12} {:>10}",
                    short(model, 28),
                    count(u.jobs),
                    count(u.input_tokens),
                    count(u.output_tokens),
                    u.cost_usd.map_or_else(|| "-".into(), dollars)
                );
            }
        }
        out
    }

    fn json(&self, by_name: &BTreeMap<String, JobCounts>) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let percentiles = |sample: &Vec<Duration>| {
            json!({
                "p50_ms": ms(percentile(sample, 0.50)),
                "p95_ms": ms(percentile(sample, 0.95)),
                "p99_ms": ms(percentile(sample, 0.99)),
                "max_ms": ms(percentile(sample, 1.0)),
            })
        };
        json!({
            "counts": by_name,
            "window_s": self.window.as_secs(),
            "finished": self.finished(),
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "per_minute": self.per_minute(),
            "finished_by_minute": self.minutes,
            "failure_rate": self.failure_rate(),
            "queue_wait": percentiles(&self.queue_waits),
            "run_time": percentiles(&self.run_times),
            "usage": self.usage.iter().map(|(model, u)| (model.clone(), json!({
                "jobs": u.jobs,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cost_usd": u.cost_usd,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The nearest-rank percentile `q` (0 to 1) of a sorted sample.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sample: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sample, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sample, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sample, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    fn group(model: &str, jobs: u64, input: u64, cost: f64) -> UsageGroup {
        let mut g = UsageGroup::default();
        g.model = Some(model.into());
        g.calls = jobs;
        g.jobs = jobs;
        g.input_tokens = input;
        g.cost_usd = cost;
        g
    }

    #[test]
    fn the_ledger_replaces_progress_figures_of_the_jobs_it_covers() {
        let window = Duration::from_secs(900);
        let mut stats = Stats::of(&[], window, SystemTime::now());
        let from_progress = |name: &str| Usage {
            jobs: 1,
            input_tokens: 7,
            output_tokens: 0,
            cost_usd: Some(1.0),
            from_progress: BTreeSet::from([name.to_string()]),
        };
        stats
            .usage
            .insert("openai/a".into(), from_progress("llmjobs.llm_call"));
        stats.usage.insert("(mine)".into(), from_progress("mine"));
        let ledger = [
            group("openai/a", 2, 100, 0.5),
            group("anthropic/b", 1, 10, 0.25),
        ];
        let names = BTreeSet::from(["llmjobs.llm_call".to_string()]);
        let stats = stats.with_ledger(&ledger, &names);
        let models: Vec<&str> = stats.usage.keys().map(String::as_str).collect();
        assert_eq!(models, ["(mine)", "anthropic/b", "openai/a"]);
        assert_eq!(stats.usage["openai/a"].input_tokens, 100, "not 107");
        assert_eq!(stats.usage["openai/a"].jobs, 2);
        assert_eq!(stats.usage["(mine)"].cost_usd, Some(1.0));
        assert_eq!(stats.usage["anthropic/b"].cost_usd, Some(0.25));
    }
}
