//! The cases: each seed config with the situation it meets and what should come of it.

use serde::Deserialize;
use serde_json::Value;

use llmjobs::llm::ChatRequest;

/// One seed case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// The seed's `test_case_id`.
    pub id: String,
    /// Its `llm_config`, parsed.
    pub request: ChatRequest,
    /// What the mock does for it.
    pub situations: Vec<Situation>,
    /// What should come of it.
    pub expect: Expect,
    /// Why, in a line, from the case's description.
    pub why: String,
}

/// A situation a case meets: how the mock answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Situation {
    /// Every answer is empty.
    Empty,
    /// The first answer is empty; then the mock answers normally.
    EmptyOnce,
    /// Every answer is cut off by `max_tokens`: `content: null`, `finish_reason: "length"`.
    Truncated,
    /// A 429 with `Retry-After: 1` before the answer.
    RateLimited,
    /// A 500 before the answer.
    ServerError,
    /// The answer takes `delay_ms`; the caller waits only `wait_ms` before taking a handle.
    Slow {
        /// How long the mock takes to answer.
        delay_ms: u64,
        /// How long the caller waits.
        wait_ms: u64,
    },
    /// These answers, in order; then the mock answers normally.
    Answers {
        /// The answers' texts.
        texts: Vec<String>,
    },
    /// The agent checker rejects the answer (only answers containing `when`, if set).
    CheckerRejects {
        /// Only answers containing this text are rejected.
        #[serde(default)]
        when: Option<String>,
        /// The checker's reasoning.
        reasoning: String,
        /// The checker's details.
        #[serde(default)]
        details: Option<Value>,
    },
}

/// What should come of a case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `completed`, `retried`, `needs-review` or `failed`.
    pub outcome: super::Outcome,
    /// How many answers the call produced.
    #[serde(default)]
    pub answers: Option<u32>,
    /// The last stage reached: `answer`, `tool-assisted`, `human-review`.
    #[serde(default)]
    pub stage: Option<String>,
    /// A text the job's error must contain.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the caller's wait ended with a handle instead of the answer.
    #[serde(default)]
    pub handle_at_wait: Option<bool>,
    /// How many requests for the case reached the mock.
    #[serde(default)]
    pub requests: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    case: String,
    #[serde(default)]
    situations: Vec<Situation>,
    expect: Expect,
    why: String,
}

#[derive(Deserialize)]
struct Seed {
    test_case_id: String,
    llm_config: Value,
}

/// The cases of `seeds` (the fixture's JSON) with their rows of `expectations` (the table's
/// JSON). Every seed must have exactly one row and every row a seed; an error names the
/// offending case.
pub fn load_cases(seeds: &str, expectations: &str) -> Result<Vec<Case>, String> {
    let seeds: Vec<Seed> =
        serde_json::from_str(seeds).map_err(|e| format!("the seed fixture: {e}"))?;
    let rows: Vec<Row> = serde_json::from_str(expectations)
        .map_err(|e| format!("the expected-outcome table: {e}"))?;
    for row in &rows {
        if !seeds.iter().any(|s| s.test_case_id == row.case) {
            return Err(format!(
                "the expected-outcome table names `{}`, which is not a seed case",
                row.case
            ));
        }
        if rows.iter().filter(|r| r.case == row.case).count() > 1 {
            return Err(format!(
                "the expected-outcome table has `{}` more than once",
                row.case
            ));
        }
    }
    seeds
        .into_iter()
        .map(|seed| {
            let row = rows
                .iter()
                .find(|r| r.case == seed.test_case_id)
                .ok_or_else(|| {
                    format!(
                        "seed case `{}` has no row in the expected-outcome table",
                        seed.test_case_id
                    )
                })?;
            let request = ChatRequest::from_value(seed.llm_config)
                .map_err(|e| format!("{}: {e}", seed.test_case_id))?;
            Ok(Case {
                id: seed.test_case_id,
                request,
                situations: row.situations.clone(),
                expect: row.expect.clone(),
                why: row.why.clone(),
            })
        })
        .collect()
}
