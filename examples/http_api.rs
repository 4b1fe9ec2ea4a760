//! The HTTP job API: jobs submitted, awaited, followed and cancelled with curl.
//!
//! It serves one `summarize` job, which takes about a second per word, on 127.0.0.1:8787 over
//! `http_api.db` (created in the current folder). Run it with:
//!
//! ```sh
//! cargo run --example http_api
//! ```
//!
//! and in another terminal (the README's "HTTP API" section has more):
//!
//! ```sh
//! curl -si 'localhost:8787/jobs/summarize?wait=10s' -d '{"text": "a b c", "words": 2}'
//! curl -si 'localhost:8787/jobs/summarize?wait=1s' -d '{"text": "a b c d e f", "words": 6}'
//! curl -s  'localhost:8787/jobs/<id>/wait?timeout=30s'
//! ```
//!
//! Submit, cancel and retry need `-H "Authorization: Bearer …"` when `LLMJOBS_HTTP_TOKEN` is
//! set; without it, this example opens them to anyone on loopback, explicitly. The API's own
//! description is at `localhost:8787/openapi.json`.

use std::time::Duration;

use llmjobs::http::HttpApi;
use llmjobs::{JobContext, JobError, Jobs, llm_job};

/// A stand-in for a slow LLM call: one second per word, reporting progress as it goes.
#[llm_job(max_concurrency = 4)]
async fn summarize(ctx: JobContext, text: String, words: u32) -> Result<String, JobError> {
    let mut summary = Vec::new();
    for (i, word) in text.split_whitespace().take(words as usize).enumerate() {
        ctx.progress(i as f64 / f64::from(words), format!("word {}", i + 1))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        summary.push(word.to_string());
    }
    ctx.progress(1.0, "done").await;
    Ok(summary.join(" "))
}

#[tokio::main]
async fn main() -> llmjobs::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let jobs = Jobs::open("sqlite://http_api.db").await?;
    // Loopback only (the default address). A token from LLMJOBS_HTTP_TOKEN, if set, is still
    // required; this opens changes only when there is none, as a demo on one's own machine.
    HttpApi::new(jobs)
        .allow_unauthenticated_changes()
        .serve()
        .await
}
