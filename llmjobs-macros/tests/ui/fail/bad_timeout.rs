use llmjobs::{JobError, llm_job};

#[llm_job(timeout = "30 seconds")]
async fn summarize(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {}
