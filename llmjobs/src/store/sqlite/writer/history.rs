//! The error history of a job's attempts, kept in its `attempt_errors` column.

/// A SQL expression: the row's `attempt_errors` with one entry appended for its current attempt
/// (`attempts`), ended at `$now` with the error `$error` (both SQL expressions, such as `"?1"`),
/// cut to [`AttemptError::MAX_CHARS`](crate::AttemptError::MAX_CHARS) characters. A column that
/// does not hold a JSON array (a row written by hand) starts a new one rather than failing the
/// writer's whole batch.
macro_rules! attempt_error_appended {
    ($error:literal, $now:literal) => {
        concat!(
            "json_insert(CASE WHEN json_valid(attempt_errors) THEN CASE \
             WHEN json_type(attempt_errors) = 'array' THEN attempt_errors ELSE '[]' END \
             ELSE '[]' END, '$[#]', json_object('attempt', attempts, 'error', substr(",
            $error,
            ", 1, 2000), 'ended_at_ms', ",
            $now,
            "))"
        )
    };
}
