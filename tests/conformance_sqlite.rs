//! The `Store` contract (`tests/conformance/mod.rs`) on the SQLite backend: each test on a
//! database file of its own in a temporary folder.

mod conformance;

conformance::conformance_tests!(conformance::Backend::sqlite());
