use llmjobs::llm_job;

#[llm_job]
async fn summarize(text: String) -> Option<String> {
    Some(text)
}

fn main() {}
