//! The statement behind a listing: an index walk in id order (ids are UUIDv7: they sort by
//! creation time) from the newest, or from the keyset cursor, stopped at the limit.

use sqlx::PgPool;

use super::read::{JOB_ROW_COLUMNS, job_row};
use crate::Result;
use crate::status::{JobFilter, to_ms};
use crate::store::JobRow;

/// A bound value of a listing.
enum Param {
    Text(String),
    Int(i64),
    Bool(bool),
}

pub(super) async fn list(pool: &PgPool, filter: &JobFilter) -> Result<Vec<JobRow>> {
    let (sql, params) = query(filter);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text),
            Param::Int(int) => query.bind(int),
            Param::Bool(flag) => query.bind(flag),
        };
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(job_row).collect()
}

/// The SELECT for `filter`, and its parameters in `$n` order.
fn query(filter: &JobFilter) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let mut conditions = Vec::new();
    let mut bind = |condition: &str, param: Param| {
        params.push(param);
        conditions.push(condition.replace("$?", &format!("${}", params.len())));
    };
    if let Some(name) = &filter.name {
        bind("name = $?", Param::Text(name.clone()));
    }
    if let Some(state) = filter.state {
        bind("status = $?", Param::Text(state.as_str().into()));
    }
    let order = if filter.oldest_first { "ASC" } else { "DESC" };
    if let Some(after) = filter.after {
        let cursor = if filter.oldest_first {
            "id > $?::uuid"
        } else {
            "id < $?::uuid"
        };
        bind(cursor, Param::Text(after.to_string()));
    }
    if let Some(needs_review) = filter.needs_review {
        bind("needs_review = $?", Param::Bool(needs_review));
    }
    if let Some(time) = filter.created_after {
        bind("created_at >= $?", Param::Int(to_ms(time)));
    }
    if let Some(time) = filter.created_before {
        bind("created_at < $?", Param::Int(to_ms(time)));
    }
    if let Some(key) = &filter.concurrency_key {
        bind("concurrency_key = $?", Param::Text(key.clone()));
    }
    if let Some(key) = &filter.idempotency_key {
        bind("idempotency_key = $?", Param::Text(key.clone()));
    }
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    params.push(Param::Int(i64::from(filter.limit)));
    let sql = format!(
        "SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs{where_clause} ORDER BY id {order} LIMIT ${}",
        params.len()
    );
    (sql, params)
}
