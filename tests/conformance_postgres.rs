//! The `Store` contract (`tests/conformance/mod.rs`) on the PostgreSQL backend: each test on a
//! database of its own from the test kit's harness (`llmjobs_testkit::pg`). Without PostgreSQL
//! the tests are skipped, saying why once (they fail instead with `LLMJOBS_REQUIRE_PG=1`).

mod conformance;

conformance::conformance_tests!(conformance::Backend::postgres());
