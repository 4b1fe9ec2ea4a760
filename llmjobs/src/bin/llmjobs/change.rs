//! The commands that change jobs: `cancel`, `retry`, `prune`. They open the database as a
//! [`Jobs`] that runs no jobs, after checking that its schema is this build's (so that they
//! neither create a database nor migrate one behind the application's back).

use llmjobs::{CancelOutcome, Error, Inspector, Jobs};

use crate::args::{IdsArgs, PruneArgs, RetryArgs};
use crate::output::{count, duration};
use crate::{Failure, NOT_FOUND, Outcome};

/// The database as a runtime that runs no jobs, once its schema is known to be this build's.
pub(crate) async fn open_for_changes(url: &str) -> Result<Jobs, Failure> {
    // Refuses a missing file, a foreign database, an older or newer schema.
    Inspector::open(url).await?;
    Ok(Jobs::builder()
        .url(url)
        .run_jobs(false)
        .auto_register(false)
        .open()
        .await?)
}

/// The exit code of a command over many ids: the worst of its outcomes.
struct Tally {
    code: u8,
}

impl Tally {
    fn error(&mut self, e: Error) {
        let code = if matches!(e, Error::NotFound(_)) {
            NOT_FOUND
        } else {
            1
        };
        eprintln!("llmjobs: {e}");
        self.code = self.code.max(code);
    }

    fn finish(self) -> Outcome {
        match self.code {
            0 => Ok(()),
            code => Err(Failure::code(code)),
        }
    }
}

pub(crate) async fn cancel(url: &str, args: IdsArgs) -> Outcome {
    let jobs = open_for_changes(url).await?;
    let mut tally = Tally { code: 0 };
    for id in args.ids {
        match jobs.cancel(id).await {
            Ok(CancelOutcome::Cancelled) => outln!("{id}: cancelled"),
            Ok(CancelOutcome::Requested) => outln!(
                "{id}: cancel requested; the worker running it stops it within about a second"
            ),
            Ok(CancelOutcome::AlreadyFinished(state)) => {
                outln!("{id}: already {state}; nothing changed")
            }
            Ok(_) => outln!("{id}: done"),
            Err(e) => tally.error(e),
        }
    }
    jobs.shutdown().await;
    tally.finish()
}

pub(crate) async fn retry(url: &str, args: RetryArgs) -> Outcome {
    let jobs = open_for_changes(url).await?;
    let mut tally = Tally { code: 0 };
    for id in args.ids {
        let retried = if args.from_scratch {
            jobs.retry_from_scratch(id).await
        } else {
            jobs.retry(id).await
        };
        match retried {
            Ok(()) if args.from_scratch => {
                outln!("{id}: pending again, its journal cleared (every step runs again)")
            }
            Ok(()) => outln!("{id}: pending again (journaled steps are replayed, not rerun)"),
            Err(e) => tally.error(e),
        }
    }
    jobs.shutdown().await;
    tally.finish()
}

pub(crate) async fn prune(url: &str, args: PruneArgs) -> Outcome {
    let age = duration(args.older_than);
    if args.dry_run {
        let db = Inspector::open(url).await?;
        let n = db.count_prunable(args.older_than).await?;
        outln!(
            "would delete {} finished job(s) that ended more than {age} ago (dry run: nothing deleted)",
            count(n)
        );
        return Ok(());
    }
    let jobs = open_for_changes(url).await?;
    let deleted = jobs.prune(args.older_than).await;
    jobs.shutdown().await;
    outln!(
        "deleted {} finished job(s) that ended more than {age} ago",
        count(deleted?)
    );
    Ok(())
}
