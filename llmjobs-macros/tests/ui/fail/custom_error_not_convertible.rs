use llmjobs::llm_job;

#[derive(Debug)]
struct MyError;

#[llm_job]
async fn summarize(text: String) -> Result<String, MyError> {
    Ok(text)
}

fn main() {}
