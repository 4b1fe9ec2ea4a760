//! Appending to a job's journal of steps.

use rusqlite::Connection;

use super::execute;
use crate::store::StepRecord;
use crate::{JobId, Result};

/// Records a step of attempt `attempt` of a job that `owner` still runs; `false` when the job
/// is not that attempt's any more or the step is recorded already.
pub(super) fn append_step(
    conn: &Connection,
    id: JobId,
    owner: &str,
    attempt: u32,
    step: &StepRecord,
    now: i64,
) -> Result<bool> {
    let changed = execute(
        conn,
        "INSERT INTO llmjobs_steps (job_id, seq, name, output, created_at) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM llmjobs_jobs \
         WHERE id = ?1 AND status = 'running' AND owner = ?6 AND attempts = ?7) \
         ON CONFLICT (job_id, seq) DO NOTHING",
        rusqlite::params![
            id.to_string(),
            step.seq,
            step.name,
            step.output,
            now,
            owner,
            attempt
        ],
    )?;
    Ok(changed == 1)
}
