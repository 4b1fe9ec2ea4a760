//! Staged escalation, as the original retry loop did it: answers corrected from feedback, then
//! tool-assisted answers, then a person.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ChatRequest;

/// How far a call's answer loop has escalated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Stage {
    /// An answer, or a retry that corrects it from the validators' feedback.
    Answer,
    /// A retry past `max_attempts_before_tool_use`: the request carries the debug tool's
    /// `mcp_config` and the feedback tells the model to use the tool.
    ToolAssisted,
    /// No answer passed (or `max_attempts_before_human` was reached): a person must look.
    HumanReview,
}

impl Stage {
    /// The stage's name: `answer`, `tool-assisted`, `human-review`.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Answer => "answer",
            Stage::ToolAssisted => "tool-assisted",
            Stage::HumanReview => "human-review",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The escalation plan of one request: which answer gets which stage, and when to stop.
#[derive(Debug)]
pub(crate) struct Escalation<'r> {
    request: &'r ChatRequest,
    /// The most answers to produce.
    rounds: u32,
    /// What the user originally asked, restated in every feedback message.
    original_prompt: Option<String>,
}

impl<'r> Escalation<'r> {
    pub(crate) fn of(request: &'r ChatRequest) -> Self {
        let mut rounds = request.max_answer_attempts();
        if let Some(human) = request.max_attempts_before_human.filter(|h| *h > 0) {
            rounds = rounds.min(human);
        }
        Escalation {
            request,
            rounds,
            original_prompt: request.original_prompt(),
        }
    }

    /// How many answers may be produced before the call ends as needing review.
    pub(crate) fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The stage of answer `round` (1-based): tool-assisted once more than
    /// `max_attempts_before_tool_use` answers were rejected and a debug tool is configured.
    pub(crate) fn stage_of(&self, round: u32) -> Stage {
        let r = self.request;
        let has_tool = r.debug_tool_name.is_some() || r.debug_tool_mcp_config.is_some();
        match r.max_attempts_before_tool_use {
            Some(threshold) if threshold > 0 && round > threshold && has_tool => {
                Stage::ToolAssisted
            }
            _ => Stage::Answer,
        }
    }

    /// The request that answer `round` sends: `current` (the conversation so far), with the
    /// debug tool's MCP servers as its `mcp_config` when the round is tool-assisted.
    pub(crate) fn request_for(&self, current: &ChatRequest, round: u32) -> ChatRequest {
        let mut next = current.clone();
        if self.stage_of(round) == Stage::ToolAssisted
            && let Some(mcp) = &self.request.debug_tool_mcp_config
        {
            next.mcp_config = Some(mcp.clone());
        }
        next
    }

    /// The conversation for answer `round + 1` after answer `round` was rejected: the answer,
    /// then feedback listing the problems, restating the original request, and, when the next
    /// round is tool-assisted, telling the model to use the debug tool.
    pub(crate) fn after_rejection(
        &self,
        current: &ChatRequest,
        round: u32,
        answer: &str,
        problems: &[String],
    ) -> ChatRequest {
        let mut text = format!(
            "Your previous answer (attempt {round} of {}) did not pass validation. Please answer \
             again, fixing these problems:",
            self.rounds
        );
        for problem in problems {
            text.push_str("\n- ");
            text.push_str(problem);
        }
        if let Some(original) = &self.original_prompt {
            text.push_str("\n\nThe original request was: ");
            text.push_str(original);
        }
        if self.stage_of(round + 1) == Stage::ToolAssisted
            && let Some(tool) = &self.request.debug_tool_name
        {
            text.push_str(&format!(
                "\n\nUse the '{tool}' tool to help resolve the validation errors."
            ));
        }
        current.with_feedback_text(answer, text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn staged(config: serde_json::Value) -> ChatRequest {
        ChatRequest::from_value(config).unwrap()
    }

    #[test]
    fn answers_past_the_tool_threshold_are_tool_assisted() {
        let req = staged(json!({
            "model": "max/coder", "question": "write greet",
            "max_attempts_before_tool_use": 1,
            "debug_tool_name": "perplexity-ask",
            "debug_tool_mcp_config": {"mcpServers": {"perplexity-ask": {}}}
        }));
        let plan = Escalation::of(&req);
        assert_eq!(plan.stage_of(1), Stage::Answer);
        assert_eq!(plan.stage_of(2), Stage::ToolAssisted);
        assert!(plan.request_for(&req, 1).mcp_config.is_none());
        assert_eq!(
            plan.request_for(&req, 2).mcp_config,
            Some(json!({"mcpServers": {"perplexity-ask": {}}}))
        );
        let next = plan.after_rejection(&req, 1, "deff greet", &["bad syntax".into()]);
        let feedback = next.messages.last().unwrap().content.text();
        assert!(feedback.contains("bad syntax"), "{feedback}");
        assert!(feedback.contains("'perplexity-ask' tool"), "{feedback}");
        assert!(
            feedback.contains("The original request was: write greet"),
            "{feedback}"
        );
    }

    #[test]
    fn without_a_debug_tool_there_is_no_tool_stage() {
        let req = staged(json!({
            "model": "max/coder", "question": "q", "max_attempts_before_tool_use": 1
        }));
        assert_eq!(Escalation::of(&req).stage_of(3), Stage::Answer);
    }

    #[test]
    fn the_human_threshold_caps_the_answers() {
        let req = staged(json!({
            "model": "m", "question": "q",
            "retry_config": {"max_attempts": 3}, "max_attempts_before_human": 2
        }));
        assert_eq!(Escalation::of(&req).rounds(), 2);
        let req = staged(json!({"model": "m", "question": "q", "max_attempts_before_human": 9}));
        assert_eq!(
            Escalation::of(&req).rounds(),
            3,
            "max_attempts still bounds it"
        );
    }

    #[test]
    fn the_feedback_restates_the_original_user_prompt() {
        let req = staged(json!({
            "model": "m", "question": "the question", "original_user_prompt": "what the user wanted"
        }));
        let next = Escalation::of(&req).after_rejection(&req, 1, "", &["empty".into()]);
        assert_eq!(next.messages.len(), 2, "a blank answer is not sent back");
        let feedback = next.messages[1].content.text();
        assert!(feedback.contains("what the user wanted"), "{feedback}");
        assert!(feedback.contains("attempt 1 of 3"), "{feedback}");
    }
}
