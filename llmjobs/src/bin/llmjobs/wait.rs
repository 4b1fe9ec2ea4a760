//! `llmjobs wait ID`: a progress bar from the job's reports until it ends, then its result.
//! Exit codes: 0 completed, 1 failed, 2 cancelled, 3 not found, 4 still running at `--timeout`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use llmjobs::{Inspector, JobState};

use crate::args::WaitArgs;
use crate::output::{ProgressFigures, value_text, width};
use crate::{Failure, Outcome};

/// How often the job's row is read.
const POLL: Duration = Duration::from_millis(250);

/// Exit code of a job that failed.
const FAILED: u8 = 1;
/// Exit code of a job that was cancelled.
const CANCELLED: u8 = 2;
/// Exit code of a job still running when `--timeout` ran out.
const TIMED_OUT: u8 = 4;

pub(crate) async fn run(url: &str, args: WaitArgs) -> Outcome {
    let db = Inspector::open(url).await?;
    let started = Instant::now();
    let mut status = db.status(args.id).await?;
    // Drawn on stderr, and only on a terminal: piped output stays the result alone.
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    while !status.state.is_terminal() {
        if args.timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.finish_and_clear();
            return Err(Failure {
                message: Some(format!(
                    "job {} is still {} after {}; waiting again picks it up where it is",
                    status.id,
                    status.state,
                    crate::output::duration(started.elapsed())
                )),
                code: TIMED_OUT,
            });
        }
        let p = ProgressFigures::of(&status);
        if let Some(f) = p.fraction {
            bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
        }
        let doing = p.doing().unwrap_or_default();
        bar.set_message(format!("{} {} {doing}", status.name, status.state));
        tokio::time::sleep(POLL).await;
        status = db.status(args.id).await?;
    }
    bar.finish_and_clear();
    match status.state {
        JobState::Completed => {
            let record = db.job(args.id).await?;
            let result = record.result.unwrap_or(serde_json::Value::Null);
            outln!("{}", value_text(&result, args.full, width()));
            Ok(())
        }
        JobState::Failed => Err(Failure {
            message: Some(format!(
                "job {} ({}) failed after {} attempt(s): {}",
                status.id,
                status.name,
                status.attempts,
                status.error.as_deref().unwrap_or("no error recorded")
            )),
            code: FAILED,
        }),
        _ => Err(Failure {
            message: Some(format!("job {} ({}) was cancelled", status.id, status.name)),
            code: CANCELLED,
        }),
    }
}
