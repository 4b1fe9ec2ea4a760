//! `llmjobs serve`: the HTTP job API and the web dashboard over the database, for those whose
//! application serves neither.
//!
//! The command registers no jobs and runs none: it reads jobs, follows them, cancels and
//! retries them, and answers a submission with `404` (no job is registered here) while the
//! application's workers run the jobs.

use llmjobs::Inspector;
use llmjobs::http::HttpApi;

use crate::Outcome;
use crate::args::ServeArgs;
use crate::change::open_for_changes;

pub(crate) async fn run(url: &str, args: ServeArgs) -> Outcome {
    let jobs = open_for_changes(url).await?;
    let inspector = Inspector::open(url).await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| crate::Failure::msg(format!("cannot listen on {}: {e}", args.addr)))?;
    let addr = listener.local_addr()?;
    outln!("serving the job API and the dashboard at http://{addr}/ (this command runs no jobs)");
    let mut api = HttpApi::new(jobs).dashboard(inspector);
    if args.allow_unauthenticated_changes {
        api = api.allow_unauthenticated_changes();
    } else if std::env::var(llmjobs::http::TOKEN_ENV).is_ok_and(|t| !t.is_empty()) {
        outln!(
            "cancel and retry need the token in {}",
            llmjobs::http::TOKEN_ENV
        );
    } else {
        outln!(
            "cancel and retry are refused (401): set {} or pass --allow-unauthenticated-changes",
            llmjobs::http::TOKEN_ENV
        );
    }
    api.serve_on(listener).await?;
    Ok(())
}
