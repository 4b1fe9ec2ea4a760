//! Recording how attempts ended: every outcome of a batch in one statement.
//!
//! Every row is fenced by its attempt: it changes only while it is still this owner's running
//! job *and* this attempt of it, so a worker whose job was taken over never overwrites the new
//! attempt's work, even if it claimed the job again itself. A cancel requested meanwhile wins
//! over whatever the attempt ended with.

use crate::status::JobState;
use crate::store::Finish;
use crate::{Error, JobId, Result};

/// One attempt's outcome, as a batch of outcomes carries it.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) id: JobId,
    pub(super) owner: std::sync::Arc<str>,
    pub(super) attempt: u32,
    pub(super) finish: Finish,
    pub(super) progress: Option<String>,
}

/// Every outcome of a batch in one statement; `f.kind` is the state the outcome asks for
/// (`pending` for a retry). Completed: the result, no error. Failed: the error, and whether it
/// needs review. Retry: the error, pending again at `run_at`, no owner. Cancelled: the row's
/// result and error kept. A requested cancel turns any of them into `cancelled`, ended now. A
/// failed or retried attempt's error joins the attempts' history (cut to
/// `AttemptError::MAX_CHARS` characters).
/// Binds the columns as arrays, then $10 now.
const FINISH_MANY_SQL: &str = "UPDATE llmjobs_jobs AS j SET \
     status = CASE WHEN f.kind = 'cancelled' OR j.cancel_requested THEN 'cancelled' \
         ELSE f.kind END, \
     result = CASE WHEN f.kind <> 'completed' THEN j.result \
         WHEN j.cancel_requested THEN NULL ELSE f.result END, \
     error = CASE f.kind WHEN 'completed' THEN NULL WHEN 'cancelled' THEN j.error \
         ELSE f.error END, \
     completed_at = CASE WHEN f.kind = 'pending' AND NOT j.cancel_requested THEN NULL \
         ELSE $10 END, \
     owner = CASE WHEN f.kind = 'pending' AND NOT j.cancel_requested THEN NULL \
         ELSE j.owner END, \
     run_at = CASE WHEN f.kind = 'pending' THEN f.run_at ELSE j.run_at END, \
     needs_review = CASE WHEN f.kind = 'failed' THEN NOT j.cancel_requested AND f.review \
         ELSE j.needs_review END, \
     lease_until = NULL, progress = coalesce(f.progress, j.progress), \
     attempt_errors = CASE WHEN f.kind IN ('failed', 'pending') \
         THEN coalesce(j.attempt_errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object( \
             'attempt', j.attempts, 'error', left(f.error, 2000), 'ended_at_ms', $10)) \
         ELSE j.attempt_errors END \
     FROM unnest($1::text[]::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], \
         $6::text[], $7::bool[], $8::int8[], $9::text[]) \
         AS f(id, owner, attempt, kind, result, error, review, run_at, progress) \
     WHERE j.id = f.id AND j.status = 'running' AND j.owner = f.owner \
         AND j.attempts = f.attempt \
     RETURNING j.id::text, j.status";

/// Records the outcomes of many attempts in one statement; for each, the state its job is in
/// now, or `None` when the row was no longer that attempt's (nothing changed then).
pub(super) async fn finish_many(
    conn: &mut sqlx::PgConnection,
    outcomes: &[&Outcome],
    now: i64,
) -> Result<Vec<Option<JobState>>> {
    let n = outcomes.len();
    let (mut ids, mut owners, mut attempts, mut kinds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut results, mut errors, mut reviews, mut run_ats, mut progresses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for o in outcomes {
        ids.push(o.id.to_string());
        owners.push(o.owner.to_string());
        attempts.push(i32::try_from(o.attempt).unwrap_or(i32::MAX));
        let (kind, result, error, review, run_at) = match &o.finish {
            Finish::Completed { result } => ("completed", Some(result.as_str()), None, false, None),
            Finish::Failed {
                error,
                needs_review,
            } => ("failed", None, Some(error.as_str()), *needs_review, None),
            Finish::Retry { error, run_at } => {
                ("pending", None, Some(error.as_str()), false, Some(*run_at))
            }
            Finish::Cancelled => ("cancelled", None, None, false, None),
        };
        kinds.push(kind);
        results.push(result);
        errors.push(error);
        reviews.push(review);
        run_ats.push(run_at);
        progresses.push(o.progress.as_deref());
    }
    let changed: Vec<(String, String)> = sqlx::query_as(FINISH_MANY_SQL)
        .bind(&ids)
        .bind(owners)
        .bind(attempts)
        .bind(kinds)
        .bind(results)
        .bind(errors)
        .bind(reviews)
        .bind(run_ats)
        .bind(progresses)
        .bind(now)
        .fetch_all(conn)
        .await?;
    let mut states = std::collections::HashMap::with_capacity(changed.len());
    for (id, status) in changed {
        let corrupt = |reason: String| Error::CorruptRow {
            id: id.clone(),
            reason,
        };
        let job: JobId = id.parse().map_err(|e| corrupt(format!("{e}")))?;
        states.insert(job, status.parse::<JobState>().map_err(corrupt)?);
    }
    Ok(outcomes
        .iter()
        .map(|o| states.get(&o.id).copied())
        .collect())
}
