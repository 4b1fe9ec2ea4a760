//! A job whose first parameter is the context: the context is not an argument.

use llmjobs::{JobContext, JobError, llm_job};

#[llm_job]
async fn summarize(ctx: JobContext, text: String, words: u32) -> Result<String, JobError> {
    let _ = ctx.attempt();
    Ok(text.split_whitespace().take(words as usize).collect())
}

fn main() {
    let call = summarize("one two three".into(), 2);
    assert_eq!(call.name(), "summarize");
    assert_eq!(
        call.args_json(),
        Ok(r#"{"text":"one two three","words":2}"#)
    );
}
