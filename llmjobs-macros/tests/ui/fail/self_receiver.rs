use llmjobs::{JobError, llm_job};

struct Summarizer;

impl Summarizer {
    #[llm_job]
    async fn summarize(&self, text: String) -> Result<String, JobError> {
        Ok(text)
    }
}

fn main() {}
