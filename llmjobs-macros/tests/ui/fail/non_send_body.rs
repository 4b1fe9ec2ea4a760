use llmjobs::{JobError, llm_job};

async fn call_model() {}

#[llm_job]
async fn summarize(text: String) -> Result<String, JobError> {
    let shared = std::rc::Rc::new(text);
    call_model().await;
    Ok(shared.to_string())
}

fn main() {}
