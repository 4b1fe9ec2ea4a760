//! Advisory lock keys, and the transaction-scoped locks that make limits exact.
//!
//! A limit is exact across workers when the claims (and local hand-offs) that count against it
//! take turns: each takes the lock of every limit it counts against, reads the running counters
//! (a fresh snapshot, which sees every earlier holder's commit) and commits before the lock is
//! released. Claims of names or keys without a limit take no lock at all.

use sqlx::PgConnection;

use crate::Result;

/// FNV-1a, 64 bits, as a signed key for `pg_advisory_lock`: the same on every machine and build.
pub(super) fn key(kind: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.bytes().chain([0]).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The lock of the global limit. Locks are per database, not per schema: workers of two
/// schemas in one database at worst take turns where they need not.
pub(super) fn global() -> i64 {
    key("llmjobs.global", "")
}

/// The lock of a job name's `max_concurrency`.
pub(super) fn name(name: &str) -> i64 {
    key("llmjobs.name", name)
}

/// The lock of a concurrency key's limit.
pub(super) fn concurrency_key(concurrency_key: &str) -> i64 {
    key("llmjobs.key", concurrency_key)
}

/// The lock of an idempotency key: spawns with the same key take turns.
pub(super) fn idempotency_key(idempotency_key: &str) -> i64 {
    key("llmjobs.idempotency", idempotency_key)
}

/// The lock of a budget: its reservations take turns.
pub(super) fn budget(spender: &crate::store::budget::Spender) -> i64 {
    use crate::store::budget::Spender;
    match spender {
        Spender::Job(id) => key("llmjobs.budget.job", &id.to_string()),
        Spender::Provider { name, .. } => key("llmjobs.budget.provider", name),
    }
}

/// The liveness lock of a worker.
pub(super) fn owner(owner: &str) -> i64 {
    key("llmjobs.owner", owner)
}

/// Waits for the transaction-scoped locks `keys`, in ascending order: every transaction that
/// waits for more than one takes them in the same order, so two never wait for each other.
pub(super) async fn lock_all(conn: &mut PgConnection, keys: &mut Vec<i64>) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    // The subquery's order is the order the locks are taken in.
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(k)) FROM \
         (SELECT k FROM unnest($1::int8[]) AS k ORDER BY k) AS sorted",
    )
    .bind(&*keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the transaction-scoped lock `key` if no other transaction holds it, without waiting.
pub(super) async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool> {
    let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?;
    Ok(taken)
}
