//! What a [`ChatRequest`] says about its call: validators, attempts, background or not,
//! waiting, token estimates, and the next attempt's feedback.

use super::{ChatRequest, Message, ResponseFormat, RetryConfig, Role, WaitFor};
use crate::llm::router::matches_pattern;
use crate::llm::validate::Validator;

impl ChatRequest {
    /// The validators every answer must pass: `validation`, preceded by `response_not_empty`
    /// when `default_validate` is on and `validation` does not already list it.
    pub fn validators(&self) -> Vec<Validator> {
        let mut validators = Vec::with_capacity(self.validation.len() + 1);
        if self.default_validate && !self.validation.contains(&Validator::ResponseNotEmpty) {
            validators.push(Validator::ResponseNotEmpty);
        }
        validators.extend(self.validation.iter().cloned());
        validators
    }

    /// How many answers the validation loop may produce (`retry_config.max_attempts`, at
    /// least 1; 3 when unset).
    pub fn max_answer_attempts(&self) -> u32 {
        self.retry_config
            .as_ref()
            .and_then(|r| r.max_attempts)
            .unwrap_or(RetryConfig::DEFAULT_MAX_ATTEMPTS)
            .max(1)
    }

    /// Whether this call should go straight to the background, by the original's rules.
    ///
    /// `polling` (or `use_polling`) decides when set, and `wait_for_completion: false` sends it
    /// to the background. Otherwise it goes there when it says so (`long_running`), when its
    /// model matches one of `patterns` (`*` matches any run of characters, `?` one; see
    /// [`DEFAULT_LONG_RUNNING_PATTERNS`](super::DEFAULT_LONG_RUNNING_PATTERNS)), when one of
    /// its validators is an agent check, or when it carries an `mcp_config` (agent work with
    /// tools).
    pub fn is_long_running<P: AsRef<str>>(&self, patterns: &[P]) -> bool {
        if let Some(polling) = self.polling {
            return polling;
        }
        if self.wait_for_completion == Some(WaitFor::Wait(false)) {
            return true;
        }
        self.long_running
            || patterns
                .iter()
                .any(|p| matches_pattern(p.as_ref(), &self.model))
            || self.validation.iter().any(Validator::is_agent_check)
            || self.mcp_config.is_some()
    }

    /// How long a caller should wait for the answer before taking a handle, when the request
    /// says (`wait_for_completion` as seconds, else `timeout`).
    pub fn wait_limit(&self) -> Option<std::time::Duration> {
        let seconds = match self.wait_for_completion {
            Some(WaitFor::Seconds(s)) => Some(s),
            _ => self.timeout,
        }?;
        std::time::Duration::try_from_secs_f64(seconds).ok()
    }

    /// What the user originally asked: `original_user_prompt`, else the last user message.
    pub fn original_prompt(&self) -> Option<String> {
        self.original_user_prompt
            .clone()
            .or_else(|| self.last_user_text())
    }

    /// Whether the answer should be JSON.
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(ResponseFormat::is_json)
    }

    /// A rough token count of the prompt (about four characters a token), for rate limiting
    /// before the provider reports the real count.
    pub fn estimated_input_tokens(&self) -> u64 {
        let chars: usize = self.system.as_deref().map_or(0, str::len)
            + self
                .messages
                .iter()
                .map(|m| m.content.text_len() + 16)
                .sum::<usize>()
            + self
                .tools
                .iter()
                .map(|t| t.to_string().len())
                .sum::<usize>();
        estimate_tokens(chars)
    }

    /// The text of the last user message, if any.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.text())
    }

    /// The text of the last assistant message, if any.
    pub fn last_assistant_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.text())
    }

    /// The request for the next attempt after `answer` failed validation: the failed answer
    /// as an assistant message (unless it is blank, which some providers reject), then the
    /// validators' feedback as a user message.
    pub fn with_feedback(&self, answer: &str, feedback: &[String]) -> ChatRequest {
        let mut text = String::from(
            "Your previous answer did not pass validation. Please answer again, fixing these \
             problems:",
        );
        for item in feedback {
            text.push_str("\n- ");
            text.push_str(item);
        }
        self.with_feedback_text(answer, text)
    }

    /// [`ChatRequest::with_feedback`] with the feedback message already written.
    pub(crate) fn with_feedback_text(&self, answer: &str, text: String) -> ChatRequest {
        let mut next = self.clone();
        if !answer.trim().is_empty() {
            next.messages.push(Message::assistant(answer));
        }
        next.messages.push(Message::user(text));
        next
    }
}

/// About four characters a token, rounded up.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}
