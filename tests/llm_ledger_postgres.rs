//! The usage ledger, budgets and the completion cache (`tests/llm_ledger/mod.rs`) on
//! PostgreSQL: each test on a database of its own from the test kit's harness. Without
//! PostgreSQL the tests are skipped, saying why once (they fail instead with
//! `LLMJOBS_REQUIRE_PG=1`).

mod llm_ledger;

llm_ledger::ledger_tests!(llm_ledger::Backend::postgres());
