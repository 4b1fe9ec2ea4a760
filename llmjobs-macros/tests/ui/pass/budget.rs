//! `budget_usd` and `budget_tokens`, alone and together, as `Job::config` says them.

use llmjobs::{Budget, Job, JobConfig, JobError, llm_job};

#[llm_job(budget_usd = 0.5)]
async fn dollars(text: String) -> Result<String, JobError> {
    Ok(text)
}

#[llm_job(budget_tokens = 20000)]
async fn tokens(text: String) -> Result<String, JobError> {
    Ok(text)
}

#[llm_job(budget_usd = 2, budget_tokens = 100000)]
async fn both(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {
    assert_eq!(
        <dollars as Job>::config(),
        JobConfig::new().budget(Budget::usd(0.5))
    );
    assert_eq!(
        <tokens as Job>::config(),
        JobConfig::new().budget(Budget::tokens(20_000))
    );
    assert_eq!(
        <both as Job>::config(),
        JobConfig::new().budget(Budget::usd(2.0).and_tokens(100_000))
    );
}
