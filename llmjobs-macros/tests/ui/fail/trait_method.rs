use llmjobs::{JobError, llm_job};

trait Summarizer {
    #[llm_job]
    async fn summarize(text: String) -> Result<String, JobError>;
}

fn main() {}
