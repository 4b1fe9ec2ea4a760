//! A job whose error type is the user's own `std::error::Error`, converted into `JobError`.

use std::fmt;

use llmjobs::llm_job;

#[derive(Debug)]
struct QuotaExceeded;

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("quota exceeded")
    }
}

impl std::error::Error for QuotaExceeded {}

#[llm_job]
async fn count_tokens(text: String) -> Result<u32, QuotaExceeded> {
    if text.is_empty() {
        return Err(QuotaExceeded);
    }
    Ok(text.len() as u32)
}

// `std::io::Result<T>` (a `Result` alias with one parameter) works too.
#[llm_job]
async fn read_prompt(path: String) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

fn main() {
    assert_eq!(count_tokens("hello".into()).name(), "count_tokens");
    assert_eq!(read_prompt("prompt.txt".into()).name(), "read_prompt");
}
