use llmjobs::{JobError, llm_job};

#[llm_job(idempotency_key = order)]
async fn charge(order_id: String, cents: u64) -> Result<u64, JobError> {
    let _ = order_id;
    Ok(cents)
}

fn main() {}
