//! The request's option types: waiting ([`WaitFor`]), the answer's shape ([`ResponseFormat`]),
//! retries ([`RetryConfig`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::is_false;

/// The original's `wait_for_completion`: a yes or no, or how many seconds to wait.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaitFor {
    /// `true`: wait in the foreground (up to `timeout`, if set); `false`: go to the
    /// background at once.
    Wait(bool),
    /// Wait this many seconds, then take a handle.
    Seconds(f64),
}

/// The shape the answer should have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema (OpenAI's `json_schema` object: `name`, `schema`, `strict`).
    JsonSchema {
        /// The schema object, passed through.
        json_schema: Value,
    },
}

impl ResponseFormat {
    /// Whether the answer should be JSON.
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

/// The original system's `retry_config`.
///
/// `max_attempts` bounds the answers the validation loop produces. `initial_delay`,
/// `backoff_factor` and `max_delay` (seconds), when set, replace the client's back-off for this
/// request's HTTP retries. Unknown fields (such as `debug_mode`'s companions) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryConfig {
    /// How many answers to try before the call ends as needing review (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The first back-off delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<f64>,
    /// The factor each back-off delay grows by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    /// The longest back-off delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<f64>,
    /// Log each attempt, its answer and the validators' verdicts at `info` level.
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug_mode: bool,
}

impl RetryConfig {
    /// The number of answers tried when `max_attempts` is not set.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
}
