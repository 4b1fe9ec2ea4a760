use llmjobs::{JobError, llm_job};

#[llm_job]
async fn summarize(text: &str) -> Result<String, JobError> {
    Ok(text.to_string())
}

fn main() {}
