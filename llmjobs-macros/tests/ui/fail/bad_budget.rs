use llmjobs::{JobError, llm_job};

#[llm_job(budget_usd = 0)]
async fn summarize(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {}
