//! The usage ledger's and the completion cache's SQL, common to both backends: each backend
//! spells its placeholders, its day and its casts, and binds the parameters.

use crate::usage::{UsageFilter, UsageKey};

/// A parameter of a usage query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// How a backend spells what differs.
pub(crate) struct Dialect {
    /// The `n`th placeholder (from 1).
    pub(crate) placeholder: fn(usize) -> String,
    /// The UTC day (`YYYY-MM-DD`) of the `at` column.
    pub(crate) day: &'static str,
    /// An integer sum of `expr`.
    pub(crate) sum: fn(&str) -> String,
    /// A text NULL.
    pub(crate) null_text: &'static str,
    /// A comparison of `job_id` with a text parameter.
    pub(crate) job_id_is: fn(&str) -> String,
}

/// The aggregate query `filter` asks for, with its parameters. Its columns: model, job name,
/// day (NULL when not grouped by), calls, jobs, errors, cache hits, input, output, cache-read
/// and cache-write tokens, cost, unpriced calls, latency.
pub(crate) fn aggregate_sql(filter: &UsageFilter, d: &Dialect) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let mut conditions = Vec::new();
    let bind = |params: &mut Vec<Param>, p: Param| {
        params.push(p);
        (d.placeholder)(params.len())
    };
    if let Some(since) = filter.since {
        conditions.push(format!("at >= {}", bind(&mut params, Param::Int(since))));
    }
    if let Some(until) = filter.until {
        conditions.push(format!("at < {}", bind(&mut params, Param::Int(until))));
    }
    if let Some(name) = &filter.job_name {
        conditions.push(format!(
            "job_name = {}",
            bind(&mut params, Param::Text(name.clone()))
        ));
    }
    if let Some(model) = &filter.model {
        conditions.push(format!(
            "model = {}",
            bind(&mut params, Param::Text(model.clone()))
        ));
    }
    if let Some(provider) = &filter.provider {
        conditions.push(format!(
            "provider = {}",
            bind(&mut params, Param::Text(provider.clone()))
        ));
    }
    if let Some(job) = filter.job {
        let p = bind(&mut params, Param::Text(job.to_string()));
        conditions.push((d.job_id_is)(&p));
    }
    let key = |k: UsageKey, column: &str| {
        if filter.groups_by(k) {
            column.to_string()
        } else {
            d.null_text.to_string()
        }
    };
    let groups: Vec<&str> = filter
        .group_by
        .iter()
        .map(|k| match k {
            UsageKey::Model => "model",
            UsageKey::JobName => "job_name",
            UsageKey::Day => d.day,
        })
        .collect();
    let sum = d.sum;
    let mut sql = format!(
        "SELECT {model}, {name}, {day}, COUNT(*), COUNT(DISTINCT job_id), \
         {errors}, {hits}, {input}, {output}, {read}, {write}, SUM(cost_usd), {unpriced}, \
         {latency} FROM llmjobs_llm_usage",
        model = key(UsageKey::Model, "model"),
        name = key(UsageKey::JobName, "job_name"),
        day = key(UsageKey::Day, d.day),
        errors = sum("CASE WHEN outcome = 'error' THEN 1 ELSE 0 END"),
        hits = sum("CASE WHEN outcome = 'cache_hit' THEN 1 ELSE 0 END"),
        input = sum("input_tokens"),
        output = sum("output_tokens"),
        read = sum("cache_read_tokens"),
        write = sum("cache_write_tokens"),
        unpriced = sum("CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END"),
        latency = sum("latency_ms"),
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if !groups.is_empty() {
        let list = groups.join(", ");
        sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
    }
    (sql, params)
}

/// The ledger's columns, in the order an insert binds them.
pub(crate) const LEDGER_COLUMNS: &str = "job_id, job_name, model, provider, input_tokens, \
     output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, outcome, \
     error_kind, at";

/// Saturates a count into a database integer.
pub(crate) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A database integer as a count (negative and NULL: 0).
pub(crate) fn count(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}
