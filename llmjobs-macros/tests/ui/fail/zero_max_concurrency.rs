use llmjobs::{JobError, llm_job};

#[llm_job(max_concurrency = 0)]
async fn summarize(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {}
