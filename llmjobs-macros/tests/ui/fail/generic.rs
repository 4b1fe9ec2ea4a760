use llmjobs::{JobError, llm_job};

#[llm_job]
async fn echo<T: serde::Serialize>(value: T) -> Result<T, JobError> {
    Ok(value)
}

fn main() {}
