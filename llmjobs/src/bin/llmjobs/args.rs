//! The command line, as clap reads it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use llmjobs::{JobId, JobState};

/// See and steer llmjobs jobs from a terminal, on the database the application uses.
#[derive(Debug, Parser)]
#[command(name = "llmjobs", version)]
pub(crate) struct Cli {
    /// The job database: sqlite://path/to/jobs.db, a file path, or postgres://...
    #[arg(long, global = true, env = "LLMJOBS_DATABASE_URL", value_name = "URL")]
    pub(crate) db: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job: arguments, state, attempts, timings, progress, step journal, result.
    Show(ShowArgs),
    /// A live full-screen view: counts, running jobs, recent failures.
    #[command(alias = "top")]
    Watch(WatchArgs),
    /// Wait for a job to end, with a progress bar; exit 0 completed, 1 failed, 2 cancelled,
    /// 3 not found, 4 still running at --timeout.
    Wait(WaitArgs),
    /// Cancel jobs: pending ones at once, running ones in whichever process runs them.
    Cancel(IdsArgs),
    /// Put failed or cancelled jobs back to pending, with a fresh attempt budget.
    Retry(RetryArgs),
    /// Delete finished jobs older than a given age, with their journals.
    Prune(PruneArgs),
    /// Counts, throughput, queue wait and run time percentiles, failure rate, tokens and cost.
    Stats(StatsArgs),
    /// The database's schema version, and whether this llmjobs can use it.
    Schema(JsonArg),
    /// Bring the database's schema up to this llmjobs's version (--check: only say whether it is).
    Migrate(MigrateArgs),
    /// Serve the HTTP job API and the web dashboard over the database (this command runs no
    /// jobs: it reads them, cancels and retries them).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen; beyond loopback it needs a token in LLMJOBS_HTTP_TOKEN.
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "HOST:PORT")]
    pub(crate) addr: std::net::SocketAddr,
    /// Let anyone who reaches the port cancel and retry jobs without a token. Without it (and
    /// without LLMJOBS_HTTP_TOKEN), cancel and retry answer 401.
    #[arg(long)]
    pub(crate) allow_unauthenticated_changes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only jobs in this state: pending, running, completed, failed, cancelled.
    #[arg(long, value_parser = parse_state)]
    pub(crate) state: Option<JobState>,
    /// Only jobs of this name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Only failed jobs whose answer never passed validation.
    #[arg(long)]
    pub(crate) needs_review: bool,
    /// Only jobs spawned in the last DURATION (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) since: Option<Duration>,
    /// Only the job holding this idempotency key.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Only jobs under this concurrency key.
    #[arg(long)]
    pub(crate) concurrency_key: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    /// The next page: jobs after this one (the last id of the previous page).
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub(crate) after: Option<JobId>,
    /// Oldest first.
    #[arg(long)]
    pub(crate) oldest_first: bool,
    /// Print one JSON array.
    #[arg(long, conflicts_with = "jsonl")]
    pub(crate) json: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub(crate) jsonl: bool,
    /// Do not truncate long values.
    #[arg(long)]
    pub(crate) full: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The job's id.
    #[arg(value_parser = parse_id)]
    pub(crate) id: JobId,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not truncate the arguments, the result and errors.
    #[arg(long)]
    pub(crate) full: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only jobs of this name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// How often to refresh, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub(crate) interval: u64,
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// The job's id.
    #[arg(value_parser = parse_id)]
    pub(crate) id: JobId,
    /// Give up after this long (exit 4); default: wait as long as it takes.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) timeout: Option<Duration>,
    /// Print the result in full.
    #[arg(long)]
    pub(crate) full: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IdsArgs {
    /// One or more job ids.
    #[arg(required = true, value_parser = parse_id)]
    pub(crate) ids: Vec<JobId>,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// One or more job ids.
    #[arg(required = true, value_parser = parse_id)]
    pub(crate) ids: Vec<JobId>,
    /// Clear the step journal: every step runs (and is paid for) again.
    #[arg(long)]
    pub(crate) from_scratch: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Delete finished jobs that ended more than DURATION ago (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) older_than: Duration,
    /// Only count what would be deleted.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The window throughput and latencies are measured over (90s, 15m, 2h, 7d).
    #[arg(long, default_value = "15m", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) window: Duration,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Change nothing: say whether the database is at this llmjobs's version (exit 1 if not).
    #[arg(long)]
    pub(crate) check: bool,
}

fn parse_id(text: &str) -> Result<JobId, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a job id (a UUID such as 0193a4c2-...)"))
}

fn parse_state(text: &str) -> Result<JobState, String> {
    text.parse()
}

/// `500ms`, `90s`, `15m`, `2h`, `7d`, `1w`, or a sum such as `1h30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration: use a number and a unit, such as 90s, 15m, 2h or 7d")
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "w" => Duration::from_secs(7 * 86_400),
            _ => return Err(bad()),
        };
        total += unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "7", "d", "7 days", "-1d", "1.5h"] {
            assert!(
                parse_duration(bad).unwrap_err().contains("not a duration"),
                "{bad}"
            );
        }
    }
}
