use llmjobs::{JobContext, JobError, llm_job};

struct Document {
    text: String,
}

#[llm_job]
async fn summarize(ctx: JobContext, document: Document, words: u32) -> Result<String, JobError> {
    let _ = (ctx, words);
    Ok(document.text)
}

fn main() {}
