//! The statement behind a listing. Every form walks an index in id order (ids are UUIDv7: they
//! sort by creation time) from the newest, or from the keyset cursor, and stops at the limit:
//! a listing costs what it returns, whatever the history.

use rusqlite::types::Value;

use crate::status::{JobFilter, JobState};
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
pub(super) fn query(filter: &JobFilter) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let limit = Value::Integer(i64::from(filter.limit));
    let after = filter.after.map(|id| Value::Text(id.to_string()));
    let sql = match (&filter.name, filter.state) {
        (None, state) => {
            let mut conditions = Vec::new();
            if let Some(state) = state {
                conditions.push("status = ?");
                params.push(Value::Text(state.as_str().into()));
            }
            if let Some(after) = after {
                conditions.push("id < ?");
                params.push(after);
            }
            params.push(limit);
            format!(
                "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs{} ORDER BY id DESC LIMIT ?",
                where_clause(&conditions)
            )
        }
        (Some(name), Some(state)) => {
            params.push(Value::Text(name.clone()));
            params.push(Value::Text(state.as_str().into()));
            let cursor = after.map_or("", |after| {
                params.push(after);
                " AND id < ?"
            });
            params.push(limit);
            format!(
                "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs \
                 WHERE name = ? AND status = ?{cursor} ORDER BY id DESC LIMIT ?"
            )
        }
        (Some(name), None) => {
            // One index range per state, each cut at the limit, merged: at most five times the
            // rows returned are read.
            params.push(Value::Text(name.clone()));
            let cursor = after.map_or("", |after| {
                params.push(after);
                " AND id < ?2"
            });
            let limit_index = params.len() + 1;
            params.push(limit);
            let arms: Vec<String> = STATES
                .iter()
                .map(|state| {
                    format!(
                        "SELECT * FROM (SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs \
                         WHERE name = ?1 AND status = '{}'{cursor} \
                         ORDER BY id DESC LIMIT ?{limit_index})",
                        state.as_str()
                    )
                })
                .collect();
            format!(
                "SELECT * FROM ({}) ORDER BY id DESC LIMIT ?{limit_index}",
                arms.join(" UNION ALL ")
            )
        }
    };
    (sql, params)
}

fn where_clause(conditions: &[&str]) -> String {
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
