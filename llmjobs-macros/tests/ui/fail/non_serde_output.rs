use llmjobs::{JobError, llm_job};

struct Summary {
    text: String,
}

#[llm_job]
async fn summarize(text: String) -> Result<Summary, JobError> {
    Ok(Summary { text })
}

fn main() {}
