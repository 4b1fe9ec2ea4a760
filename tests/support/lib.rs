//! Support code shared by the integration tests and examples of llmjobs.
