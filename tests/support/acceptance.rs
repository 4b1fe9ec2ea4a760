//! The acceptance run of the original system's 31 call configs: each case meets the situation
//! its description names (the mock is scripted per case), runs as a durable `llm_call` job, and
//! is judged against the expected-outcome table kept beside the fixture
//! (`examples/data/seed_expectations.json`). The demo (`examples/llm_call.rs`) prints it; the
//! test (`tests/llm_acceptance.rs`) asserts it. Both run this code.

mod run;
mod script;
mod table;

pub use run::{CaseResult, Outcome, Run, run_cases, verdict};
pub use script::script_mock;
pub use table::{Case, Expect, Situation, load_cases};

use std::time::Duration;

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{LlmClient, LlmError, RetryPolicy};

/// The seed fixture: the original system's 31 call configs.
pub const SEEDS: &str = include_str!("../../examples/data/seed_prompts.json");

/// The expected outcome of each seed case, written from its description.
pub const EXPECTATIONS: &str = include_str!("../../examples/data/seed_expectations.json");

/// The client the run uses: every provider on the mock, Vertex AI models through the OpenAI-
/// compatible route as the original reached them through LiteLLM, short HTTP back-off.
pub fn client(mock: &MockLlmServer) -> Result<LlmClient, LlmError> {
    mock.client_builder()
        .route_keeping_prefix("vertex_ai/", "openai")
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(200)))
        .build()
}
