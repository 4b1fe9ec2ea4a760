//! Compile-time behaviour of `#[llm_job]`: what it accepts (`tests/ui/pass/`, each built and
//! run) and how it reports what it rejects (`tests/ui/fail/`, each compared with its
//! `.stderr`; regenerate those with `TRYBUILD=overwrite cargo test --test ui`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
