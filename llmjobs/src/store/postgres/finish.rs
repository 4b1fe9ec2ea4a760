//! Recording how attempts ended: every outcome of a batch in one statement.
//!
//! Every row is fenced by its attempt: it changes only while it is still this owner's running
//! job *and* this attempt of it, so a worker whose job was taken over never overwrites the new
//! attempt's work, even if it claimed the job again itself. A cancel requested meanwhile wins
//! over whatever the attempt ended with.

use sqlx::Row as _;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

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
pub(super) const FINISH_MANY_SQL: &str = "UPDATE llmjobs_jobs AS j SET \
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

/// The arguments of [`FINISH_MANY_SQL`] but `now`, column by column.
pub(super) struct Columns<'a> {
    ids: Vec<String>,
    owners: Vec<&'a str>,
    attempts: Vec<i32>,
    kinds: Vec<&'static str>,
    results: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
    reviews: Vec<bool>,
    run_ats: Vec<Option<i64>>,
    progresses: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(outcomes: &[&'a Outcome]) -> Columns<'a> {
        let n = outcomes.len();
        let mut c = Columns {
            ids: Vec::with_capacity(n),
            owners: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            results: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            reviews: Vec::with_capacity(n),
            run_ats: Vec::with_capacity(n),
            progresses: Vec::with_capacity(n),
        };
        for o in outcomes {
            c.ids.push(o.id.to_string());
            c.owners.push(&o.owner);
            c.attempts
                .push(i32::try_from(o.attempt).unwrap_or(i32::MAX));
            let (kind, result, error, review, run_at) = match &o.finish {
                Finish::Completed { result } => {
                    ("completed", Some(result.as_str()), None, false, None)
                }
                Finish::Failed {
                    error,
                    needs_review,
                } => ("failed", None, Some(error.as_str()), *needs_review, None),
                Finish::Retry { error, run_at } => {
                    ("pending", None, Some(error.as_str()), false, Some(*run_at))
                }
                Finish::Cancelled => ("cancelled", None, None, false, None),
            };
            c.kinds.push(kind);
            c.results.push(result);
            c.errors.push(error);
            c.reviews.push(review);
            c.run_ats.push(run_at);
            c.progresses.push(o.progress.as_deref());
        }
        c
    }

    /// Binds the columns, in the order of [`FINISH_MANY_SQL`]'s `$1` to `$9`, then `now`.
    pub(super) fn bind(
        self,
        query: Query<'a, Postgres, PgArguments>,
        now: i64,
    ) -> Query<'a, Postgres, PgArguments> {
        query
            .bind(self.ids)
            .bind(self.owners)
            .bind(self.attempts)
            .bind(self.kinds)
            .bind(self.results)
            .bind(self.errors)
            .bind(self.reviews)
            .bind(self.run_ats)
            .bind(self.progresses)
            .bind(now)
    }
}

/// Records the outcomes of many attempts in one statement; for each, the state its job is in
/// now, or `None` when the row was no longer that attempt's (nothing changed then).
pub(super) async fn finish_many(
    conn: &mut sqlx::PgConnection,
    outcomes: &[&Outcome],
    now: i64,
) -> Result<Vec<Option<JobState>>> {
    let rows = Columns::of(outcomes)
        .bind(sqlx::query(FINISH_MANY_SQL), now)
        .fetch_all(conn)
        .await?;
    let changed = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>>>()?;
    states(outcomes, changed)
}

/// For each of `outcomes`, the state its job is in now, from the `(id, status)` of the rows
/// `RETURNING` gave; `None` when its row was not changed.
pub(super) fn states(
    outcomes: &[&Outcome],
    changed: Vec<(String, String)>,
) -> Result<Vec<Option<JobState>>> {
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
