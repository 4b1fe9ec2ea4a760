//! `priority` sets the priority of every call; `idempotency_key` makes a parameter's value the
//! call's idempotency key (a string as it is, anything else as JSON).

use llmjobs::{Job, JobConfig, JobError, llm_job};

#[llm_job(priority = 10, idempotency_key = order_id)]
async fn charge(order_id: String, cents: u64) -> Result<u64, JobError> {
    let _ = order_id;
    Ok(cents)
}

#[llm_job(priority = -2147483648, idempotency_key = invoice)]
async fn archive(invoice: u64) -> Result<(), JobError> {
    let _ = invoice;
    Ok(())
}

fn main() {
    assert_eq!(<charge as Job>::config(), JobConfig::new().priority(10));
    let order = charge { order_id: "order-17".into(), cents: 250 };
    assert_eq!(order.idempotency_key().as_deref(), Some("order-17"));
    let _ = charge("order-17".into(), 250);

    assert_eq!(<archive as Job>::config().priority, i32::MIN);
    assert_eq!(archive { invoice: 42 }.idempotency_key().as_deref(), Some("42"));
}
