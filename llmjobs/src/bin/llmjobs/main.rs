//! `llmjobs`: see and steer llmjobs jobs from a terminal, on the database the application uses.
//!
//! ```sh
//! cargo install llmjobs --features cli
//! llmjobs --db sqlite://jobs.db list --state failed
//! ```
//!
//! Read commands (`list`, `show`, `watch`, `wait`, `stats`, `schema`, `migrate --check`) open the
//! database through [`llmjobs::Inspector`]: read-only, no runtime, no lock, so they never hold up
//! the application. Commands that change jobs (`cancel`, `retry`, `prune`, `migrate`) open it as
//! a [`llmjobs::Jobs`] that runs no jobs; so does `serve`, which serves the HTTP job API and
//! the web dashboard. Errors are one line on stderr.

use std::process::ExitCode;

use clap::Parser;

/// `println!` for the command's output: a reader that went away (`llmjobs list | head -1`) ends
/// the program quietly instead of a panic about a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the command's output (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(&format!($($arg)*))
    };
}

mod args;
mod change;
mod json;
mod list;
mod output;
mod schema;
mod serve;
mod show;
mod stats;
mod wait;
mod watch;

use args::{Cli, Command};

/// How a command ends when it does not succeed: a one-line message (if any) and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: Option<String>,
    pub(crate) code: u8,
}

impl Failure {
    /// An error: exit code 1.
    pub(crate) fn msg(message: impl Into<String>) -> Failure {
        Failure {
            message: Some(message.into()),
            code: 1,
        }
    }

    /// An exit code and no message (the command printed what it had to say).
    pub(crate) fn code(code: u8) -> Failure {
        Failure {
            message: None,
            code,
        }
    }
}

/// Exit code of a job id that names no job.
pub(crate) const NOT_FOUND: u8 = 3;

impl From<llmjobs::Error> for Failure {
    fn from(e: llmjobs::Error) -> Failure {
        let code = match e {
            llmjobs::Error::NotFound(_) => NOT_FOUND,
            _ => 1,
        };
        Failure {
            message: Some(e.to_string()),
            code,
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::msg(e.to_string())
    }
}

pub(crate) type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's first line says what is wrong; the usage it adds is one `--help` away.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let message = first.strip_prefix("error: ").unwrap_or(first);
            return fail(Failure {
                message: Some(format!("{message} (see --help)")),
                code: 2,
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(Failure::msg(format!("cannot start: {e}"))),
    };
    match run(cli, &runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    if let Some(message) = failure.message {
        // One line, whatever the driver's message holds.
        let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("llmjobs: {line}");
    }
    ExitCode::from(failure.code)
}

fn run(cli: Cli, rt: &tokio::runtime::Runtime) -> Outcome {
    let url = cli.db.filter(|url| !url.trim().is_empty()).ok_or_else(|| {
        Failure::msg("no database given: pass --db URL or set LLMJOBS_DATABASE_URL")
    })?;
    match cli.command {
        Command::List(args) => rt.block_on(list::run(&url, args)),
        Command::Show(args) => rt.block_on(show::run(&url, args)),
        Command::Watch(args) => watch::run(&url, args, rt),
        Command::Wait(args) => rt.block_on(wait::run(&url, args)),
        Command::Cancel(args) => rt.block_on(change::cancel(&url, args)),
        Command::Retry(args) => rt.block_on(change::retry(&url, args)),
        Command::Prune(args) => rt.block_on(change::prune(&url, args)),
        Command::Stats(args) => rt.block_on(stats::run(&url, args)),
        Command::Schema(args) => rt.block_on(schema::show(&url, args.json)),
        Command::Migrate(args) => rt.block_on(schema::migrate(&url, args)),
        Command::Serve(args) => rt.block_on(serve::run(&url, args)),
    }
}
