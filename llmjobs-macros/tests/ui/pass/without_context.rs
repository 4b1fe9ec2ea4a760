//! A job without a context parameter.

use llmjobs::{JobError, llm_job};

#[llm_job]
async fn add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

fn main() {
    let call: llmjobs::JobCall<i64> = add(2, 3);
    assert_eq!(call.name(), "add");
    assert_eq!(call.args_json(), Ok(r#"{"a":2,"b":3}"#));
}
