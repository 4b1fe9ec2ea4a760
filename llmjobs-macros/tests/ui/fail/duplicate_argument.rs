use llmjobs::{JobError, llm_job};

#[llm_job(retries = 3, timeout = "30s", retries = 5)]
async fn summarize(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {}
