use llmjobs::{JobContext, JobError, llm_job};

#[llm_job]
fn summarize(ctx: JobContext, text: String) -> Result<String, JobError> {
    let _ = ctx;
    Ok(text)
}

fn main() {}
