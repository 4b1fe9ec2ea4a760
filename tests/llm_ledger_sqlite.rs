//! The usage ledger, budgets and the completion cache (`tests/llm_ledger/mod.rs`) on SQLite:
//! each test on a database file of its own.

mod llm_ledger;

llm_ledger::ledger_tests!(llm_ledger::Backend::sqlite());
