//! The generated code is clean under the workspace's strictest lints: a public job needs only
//! the docs the user writes on the function.
#![deny(
    missing_docs,
    unreachable_pub,
    unused,
    rust_2018_idioms,
    nonstandard_style
)]
#![forbid(unsafe_code)]

mod jobs {
    use llmjobs::{JobContext, JobError, llm_job};

    /// Summarizes `text`.
    #[llm_job(max_concurrency = 2)]
    pub(crate) async fn summarize(ctx: JobContext, text: String) -> Result<String, JobError> {
        let _ = ctx;
        Ok(text)
    }
}

/// A public job at the crate root.
#[llmjobs::llm_job]
pub async fn echo(text: String) -> Result<String, llmjobs::JobError> {
    Ok(text)
}

fn main() {
    let _ = jobs::summarize("x".into());
    let _ = echo("y".into());
}
