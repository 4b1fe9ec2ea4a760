//! The statement behind a listing. Every form walks an index in id order (ids are UUIDv7: they
//! sort by creation time) from the newest, or from the keyset cursor, and stops at the limit:
//! a listing costs what it returns, whatever the history.

use rusqlite::types::Value;

use crate::status::{JobFilter, JobState, to_ms};
use crate::store::JOB_ROW_COLUMNS;

/// Every state, for listing one name across them.
const STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Running,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

/// The SELECT for `filter`, and its parameters.
///
/// The state and the name pick the index; the other conditions (review, times, keys) are
/// checked on the rows the index walk meets, so a listing by them alone reads past the rows
/// that do not match.
pub(super) fn query(filter: &JobFilter) -> (String, Vec<Value>) {
    let (order, cursor) = if filter.oldest_first {
        ("ASC", "id > ?")
    } else {
        ("DESC", "id < ?")
    };
    let limit = i64::from(filter.limit);
    // The conditions every arm shares, with their parameters.
    let mut shared: Vec<(&str, Value)> = Vec::new();
    if let Some(after) = filter.after {
        shared.push((cursor, Value::Text(after.to_string())));
    }
    if let Some(needs_review) = filter.needs_review {
        shared.push(("needs_review = ?", Value::Integer(i64::from(needs_review))));
    }
    if let Some(time) = filter.created_after {
        shared.push(("created_at >= ?", Value::Integer(to_ms(time))));
    }
    if let Some(time) = filter.created_before {
        shared.push(("created_at < ?", Value::Integer(to_ms(time))));
    }
    if let Some(key) = &filter.concurrency_key {
        shared.push(("concurrency_key = ?", Value::Text(key.clone())));
    }
    if let Some(key) = &filter.idempotency_key {
        shared.push(("idempotency_key = ?", Value::Text(key.clone())));
    }
    let mut params = Vec::new();
    let arm = |state: Option<JobState>, params: &mut Vec<Value>| {
        let mut conditions = Vec::new();
        if let Some(name) = &filter.name {
            conditions.push("name = ?".to_string());
            params.push(Value::Text(name.clone()));
        }
        if let Some(state) = state {
            conditions.push("status = ?".to_string());
            params.push(Value::Text(state.as_str().into()));
        }
        for (condition, value) in &shared {
            conditions.push(condition.to_string());
            params.push(value.clone());
        }
        params.push(Value::Integer(limit));
        format!(
            "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs{} ORDER BY id {order} LIMIT ?",
            where_clause(&conditions)
        )
    };
    let sql = match (&filter.name, filter.state) {
        (Some(_), None) => {
            // One index range per state, each cut at the limit, merged: at most five times the
            // rows returned are read.
            let arms: Vec<String> = STATES
                .iter()
                .map(|state| format!("SELECT * FROM ({})", arm(Some(*state), &mut params)))
                .collect();
            params.push(Value::Integer(limit));
            format!(
                "SELECT * FROM ({}) ORDER BY id {order} LIMIT ?",
                arms.join(" UNION ALL ")
            )
        }
        (_, state) => arm(state, &mut params),
    };
    (sql, params)
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    /// The query plan of `filter`'s statement, on an empty database of the real schema.
    fn plan(filter: &JobFilter) -> String {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate::run(&conn).unwrap();
        let (sql, params) = query(filter);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn every_listing_walks_an_index_and_never_sorts_the_table() {
        let id: JobId = "01930000-0000-7000-8000-000000000001".parse().unwrap();
        let filters = [
            JobFilter::new(),
            JobFilter::new().after(id),
            JobFilter::new().state(JobState::Failed),
            JobFilter::new().state(JobState::Failed).after(id),
            JobFilter::new().name("summarize").state(JobState::Pending),
            JobFilter::new().name("summarize").after(id),
            JobFilter::new()
                .state(JobState::Pending)
                .oldest_first()
                .after(id),
            JobFilter::new()
                .name("summarize")
                .needs_review(true)
                .oldest_first(),
        ];
        for filter in filters {
            let plan = plan(&filter);
            assert!(
                !plan.contains("SCAN llmjobs_jobs\n") && !plan.ends_with("SCAN llmjobs_jobs"),
                "{filter:?}:\n{plan}"
            );
            // A sort is allowed only to merge the per-state arms of a name listing, which are
            // cut at the limit each.
            if filter.name.is_none() || filter.state.is_some() {
                assert!(!plan.contains("TEMP B-TREE"), "{filter:?}:\n{plan}");
            }
        }
    }
}
