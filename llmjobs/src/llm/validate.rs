//! Validators: checks an answer must pass, with feedback for the next attempt when it fails.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ChatRequest;

/// A check every answer must pass. Deserializes from the original system's validation entries,
/// `{"type": "...", "params": {...}}`.
///
/// | `type` | checks |
/// | --- | --- |
/// | `response_not_empty` | the answer has non-whitespace text |
/// | `json_string` | the answer parses as JSON |
/// | `field_present` (`params.field_name`, a dotted path such as `user.address.0.city`) | the JSON answer has that field |
/// | `agent_task` | a second model, given a prompt with the answer in it, reports success |
/// | `ai_contradiction_check` | a second model finds no contradictions in the answer |
///
/// Agent checks make an LLM call of their own through the same client; see [`AgentCheck`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ValidatorWire", into = "ValidatorWire")]
#[non_exhaustive]
pub enum Validator {
    /// The answer has non-whitespace text.
    ResponseNotEmpty,
    /// The answer parses as JSON.
    JsonString,
    /// The JSON answer has a field at this dotted path (array elements by index).
    FieldPresent {
        /// The dotted path, such as `user.name` or `items.0.id`.
        path: String,
    },
    /// A second model checks the answer and must report success.
    AgentTask(AgentCheck),
    /// A second model checks the answer for contradictions and must report none.
    ContradictionCheck(ContradictionCheck),
}

const VALIDATOR_TYPES: &str =
    "response_not_empty, json_string, field_present, agent_task, ai_contradiction_check";

#[derive(Serialize, Deserialize)]
struct ValidatorWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    params: Map<String, Value>,
}

impl TryFrom<ValidatorWire> for Validator {
    type Error = String;

    fn try_from(w: ValidatorWire) -> Result<Self, String> {
        let params = Value::Object(w.params);
        match w.kind.as_str() {
            "response_not_empty" => Ok(Validator::ResponseNotEmpty),
            "json_string" => Ok(Validator::JsonString),
            "field_present" => params
                .get("field_name")
                .or_else(|| params.get("path"))
                .and_then(Value::as_str)
                .map(|path| Validator::FieldPresent {
                    path: path.to_string(),
                })
                .ok_or_else(|| "field_present needs `params.field_name`".to_string()),
            "agent_task" => serde_json::from_value(params)
                .map(Validator::AgentTask)
                .map_err(|e| format!("agent_task params: {e}")),
            "ai_contradiction_check" => serde_json::from_value(params)
                .map(Validator::ContradictionCheck)
                .map_err(|e| format!("ai_contradiction_check params: {e}")),
            other => Err(format!(
                "unknown validation type `{other}`; expected one of: {VALIDATOR_TYPES}"
            )),
        }
    }
}

impl From<Validator> for ValidatorWire {
    fn from(v: Validator) -> Self {
        let (kind, params) = match v {
            Validator::ResponseNotEmpty => ("response_not_empty", Value::Null),
            Validator::JsonString => ("json_string", Value::Null),
            Validator::FieldPresent { path } => {
                ("field_present", serde_json::json!({ "field_name": path }))
            }
            Validator::AgentTask(a) => ("agent_task", to_value(&a)),
            Validator::ContradictionCheck(c) => ("ai_contradiction_check", to_value(&c)),
        };
        let params = match params {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        ValidatorWire {
            kind: kind.to_string(),
            params,
        }
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // Plain structs of strings, lists and JSON values always serialize.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Validator {
    /// A `field_present` check for a dotted path.
    pub fn field_present(path: impl Into<String>) -> Self {
        Validator::FieldPresent { path: path.into() }
    }

    /// An `agent_task` check: `model` gets `prompt` (with the answer filled in, see
    /// [`AgentCheck`]) and must report `validation_passed: true`.
    pub fn agent_task(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Validator::AgentTask(AgentCheck {
            model: model.into(),
            prompt: prompt.into(),
            success_criteria: SuccessCriteria::default(),
            mcp_config: None,
        })
    }

    /// Whether the check is made by a second model (and so is slow and paid for).
    pub fn is_agent_check(&self) -> bool {
        matches!(
            self,
            Validator::AgentTask(_) | Validator::ContradictionCheck(_)
        )
    }

    /// The validator's name, as in its `type`.
    pub fn name(&self) -> &'static str {
        match self {
            Validator::ResponseNotEmpty => "response_not_empty",
            Validator::JsonString => "json_string",
            Validator::FieldPresent { .. } => "field_present",
            Validator::AgentTask(_) => "agent_task",
            Validator::ContradictionCheck(_) => "ai_contradiction_check",
        }
    }

    /// Checks `answer` with a validator that needs no model. `None` for agent checks;
    /// otherwise `Some(Err(feedback))` when the answer fails.
    pub fn check_locally(&self, answer: &str) -> Option<Result<(), String>> {
        Some(match self {
            Validator::ResponseNotEmpty => {
                if answer.trim().is_empty() {
                    Err("The answer was empty. Reply with a non-empty answer.".to_string())
                } else {
                    Ok(())
                }
            }
            Validator::JsonString => parse_json_answer(answer).map(drop),
            Validator::FieldPresent { path } => {
                let json = parse_json_answer(answer);
                json.and_then(|json| {
                    if lookup_path(&json, path).is_some() {
                        Ok(())
                    } else {
                        Err(format!(
                            "The JSON answer has no field `{path}`. Include it in the JSON \
                             object."
                        ))
                    }
                })
            }
            Validator::AgentTask(_) | Validator::ContradictionCheck(_) => return None,
        })
    }

    /// For an agent check: the request to send to the checking model about `answer` to
    /// `original` (the request that produced the answer). `None` for local validators.
    pub fn checker_request(&self, original: &ChatRequest, answer: &str) -> Option<ChatRequest> {
        let (model, prompt, mcp_config) = match self {
            Validator::AgentTask(a) => (
                &a.model,
                a.render_prompt(answer, original.original_user_prompt.as_deref()),
                a.mcp_config.as_ref(),
            ),
            Validator::ContradictionCheck(c) => {
                (&c.model, c.render_prompt(answer), c.mcp_config.as_ref())
            }
            _ => return None,
        };
        let mut req = ChatRequest::new(model.clone())
            .system(CHECKER_SYSTEM_PROMPT)
            .user(prompt)
            .json()
            .default_validate(false);
        if let Some(mcp) = mcp_config {
            req.provider_options
                .insert("mcp_config".into(), mcp.clone());
        }
        Some(req)
    }

    /// For an agent check: whether the checking model's reply reports success, as feedback for
    /// the next attempt when not.
    pub fn judge_checker_reply(&self, reply: &str) -> Result<(), String> {
        let criteria = match self {
            Validator::AgentTask(a) => &a.success_criteria,
            _ => &SuccessCriteria::default(),
        };
        let verdict = CheckerVerdict::parse(reply).ok_or_else(|| {
            format!(
                "The {} validator's reply was not validation JSON: {}",
                self.name(),
                super::error::excerpt(reply)
            )
        })?;
        verdict.judge(criteria)
    }
}

/// The system prompt of every agent check's request.
const CHECKER_SYSTEM_PROMPT: &str = "You are a strict validator. Reply with exactly one JSON \
object and nothing else: {\"validation_passed\": true or false, \"reasoning\": \"why\", \
\"details\": {}}.";

/// The placeholders an agent prompt may use for the answer being checked.
const ANSWER_PLACEHOLDERS: &[&str] = &[
    "answer",
    "ANSWER",
    "response",
    "RESPONSE",
    "TEXT_TO_VALIDATE",
    "text_to_validate",
    "CODE_TO_VALIDATE",
    "code_to_validate",
];

/// The placeholders an agent prompt may use for the user's original request.
const ORIGINAL_PROMPT_PLACEHOLDERS: &[&str] = &["ORIGINAL_USER_PROMPT", "original_user_prompt"];

/// An `agent_task` validation entry: a second model checks the answer.
///
/// The prompt is a template. `{answer}` (also `{ANSWER}`, `{response}`, `{TEXT_TO_VALIDATE}`,
/// `{CODE_TO_VALIDATE}` and their lower-case forms) is replaced by the answer and
/// `{ORIGINAL_USER_PROMPT}` by the request's `original_user_prompt`. Every other brace is left
/// as it is, so prompts may contain literal JSON such as `{"validation_passed": <bool>}`, and
/// braces inside the answer are never expanded. A prompt without an answer placeholder gets the
/// answer appended.
///
/// The checking model must reply with JSON `{"validation_passed": bool, "reasoning": str,
/// "details": {...}}` (fenced or surrounded by prose is tolerated); `success_criteria` adds
/// conditions on that reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentCheck {
    /// The checking model (with its routing prefix).
    #[serde(rename = "validation_model_alias", alias = "model")]
    pub model: String,
    /// The prompt template.
    #[serde(rename = "task_prompt_to_claude", alias = "prompt")]
    pub prompt: String,
    /// Extra conditions on the checker's reply.
    #[serde(default, skip_serializing_if = "SuccessCriteria::is_empty")]
    pub success_criteria: SuccessCriteria,
    /// MCP servers for an agent proxy, sent as the request's `mcp_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<Value>,
}

impl AgentCheck {
    /// The prompt with the placeholders filled in.
    pub fn render_prompt(&self, answer: &str, original_user_prompt: Option<&str>) -> String {
        let original = original_user_prompt.unwrap_or("");
        let mut vars: Vec<(&str, &str)> =
            ANSWER_PLACEHOLDERS.iter().map(|p| (*p, answer)).collect();
        vars.extend(ORIGINAL_PROMPT_PLACEHOLDERS.iter().map(|p| (*p, original)));
        let mut rendered = render_template(&self.prompt, &vars);
        let has_answer_slot = ANSWER_PLACEHOLDERS
            .iter()
            .any(|p| self.prompt.contains(&format!("{{{p}}}")));
        if !has_answer_slot {
            rendered.push_str("\n\nText to validate:\n");
            rendered.push_str(answer);
        }
        rendered
    }
}

/// An `ai_contradiction_check` validation entry: a second model looks for statements in the
/// answer that contradict each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContradictionCheck {
    /// The checking model (with its routing prefix).
    #[serde(rename = "validation_model_alias", alias = "model")]
    pub model: String,
    /// What the text is about, to help the checker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_context: Option<String>,
    /// The original system's copy of the text to check. The answer being validated is what is
    /// checked; this field is kept so configs round-trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_to_check: Option<String>,
    /// Tools the checking agent should use, named in its prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_mcp_tools: Vec<String>,
    /// MCP servers for an agent proxy, sent as the request's `mcp_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<Value>,
}

impl ContradictionCheck {
    /// The prompt sent to the checking model.
    pub fn render_prompt(&self, answer: &str) -> String {
        let mut prompt = String::from(
            "Check the text below for statements that contradict each other or contradict \
             well-established facts.",
        );
        if let Some(topic) = &self.topic_context {
            prompt.push_str(&format!(" Topic: {topic}."));
        }
        if !self.required_mcp_tools.is_empty() {
            prompt.push_str(&format!(
                " Use these tools: {}.",
                self.required_mcp_tools.join(", ")
            ));
        }
        prompt.push_str(
            " Set validation_passed to true only if there are no contradictions; list any in \
             details.contradictions.\n\nText to check:\n",
        );
        prompt.push_str(answer);
        prompt
    }
}

/// Extra conditions on an agent checker's reply, beyond `validation_passed: true`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SuccessCriteria {
    /// The reasoning must contain this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_contain_in_reasoning: Option<String>,
    /// The reasoning must not contain this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_contain_string_in_reasoning: Option<String>,
    /// Each of these keys of `details` must be `true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_true_in_details_keys: Vec<String>,
    /// `details` must have a field at this dotted path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_present_in_details: Option<String>,
}

impl SuccessCriteria {
    fn is_empty(&self) -> bool {
        self == &SuccessCriteria::default()
    }
}

/// What an agent checker replied.
struct CheckerVerdict {
    passed: bool,
    reasoning: String,
    details: Value,
}

impl CheckerVerdict {
    /// Finds the verdict object in a reply: the whole reply, a fenced block, or the outermost
    /// `{…}`.
    fn parse(reply: &str) -> Option<CheckerVerdict> {
        let object = extract_json_object(reply)?;
        Some(CheckerVerdict {
            passed: object.get("validation_passed")?.as_bool()?,
            reasoning: object
                .get("reasoning")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            details: object.get("details").cloned().unwrap_or(Value::Null),
        })
    }

    fn judge(&self, criteria: &SuccessCriteria) -> Result<(), String> {
        if !self.passed {
            return Err(format!(
                "The validator rejected the answer: {}",
                self.reasoning
            ));
        }
        let reasoning = self.reasoning.to_lowercase();
        if let Some(needle) = &criteria.must_contain_in_reasoning
            && !reasoning.contains(&needle.to_lowercase())
        {
            return Err(format!(
                "The validator's reasoning does not confirm `{needle}`: {}",
                self.reasoning
            ));
        }
        if let Some(needle) = &criteria.must_not_contain_string_in_reasoning
            && reasoning.contains(&needle.to_lowercase())
        {
            return Err(format!(
                "The validator's reasoning mentions `{needle}`: {}",
                self.reasoning
            ));
        }
        for key in &criteria.all_true_in_details_keys {
            if self.details.get(key) != Some(&Value::Bool(true)) {
                return Err(format!(
                    "The validator reported `{key}` as not true: {}",
                    self.reasoning
                ));
            }
        }
        if let Some(path) = &criteria.field_present_in_details
            && lookup_path(&self.details, path).is_none()
        {
            return Err(format!("The validator's details have no `{path}`."));
        }
        Ok(())
    }
}

fn extract_json_object(text: &str) -> Option<Map<String, Value>> {
    let text = text.trim();
    let candidates = [
        Some(text),
        strip_code_fence(text),
        text.find('{')
            .zip(text.rfind('}'))
            .filter(|(start, end)| start < end)
            .map(|(start, end)| &text[start..=end]),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|c| match serde_json::from_str(c) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
}

fn strip_code_fence(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("```")?;
    let body_start = rest.find('\n')? + 1;
    let rest = &rest[body_start..];
    Some(rest.trim_end().strip_suffix("```")?.trim())
}

/// Parses the answer as JSON, or says why not as feedback.
fn parse_json_answer(answer: &str) -> Result<Value, String> {
    serde_json::from_str(answer.trim()).map_err(|e| {
        format!(
            "The answer is not valid JSON ({e}). Reply with only the JSON value, without code \
             fences or prose."
        )
    })
}

/// Follows a dotted path (`a.b.0.c`) through objects and arrays.
pub(crate) fn lookup_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Replaces `{name}` for each `(name, value)` in one pass. Braces that do not enclose a known
/// name are kept, and replaced values are not scanned again.
pub fn render_template(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replacement = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, value)| (*value, close))
        });
        match replacement {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_parse_from_the_original_shape() {
        let v: Vec<Validator> = serde_json::from_value(json!([
            {"type": "response_not_empty"},
            {"type": "json_string", "params": {}},
            {"type": "field_present", "params": {"field_name": "user.name"}},
        ]))
        .unwrap();
        assert_eq!(
            v,
            [
                Validator::ResponseNotEmpty,
                Validator::JsonString,
                Validator::field_present("user.name")
            ]
        );
        let back = serde_json::to_value(&v[2]).unwrap();
        assert_eq!(
            back,
            json!({"type": "field_present", "params": {"field_name": "user.name"}})
        );
    }

    #[test]
    fn unknown_types_name_the_valid_ones() {
        let err = serde_json::from_value::<Validator>(json!({"type": "nope"})).unwrap_err();
        assert!(err.to_string().contains("json_string"), "{err}");
    }

    #[test]
    fn local_checks_give_feedback() {
        assert!(
            Validator::ResponseNotEmpty
                .check_locally("  ")
                .unwrap()
                .is_err()
        );
        assert!(
            Validator::JsonString
                .check_locally("{\"a\": 1}")
                .unwrap()
                .is_ok()
        );
        let err = Validator::JsonString
            .check_locally("{a: 1}")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("not valid JSON"));
        let present = Validator::field_present("a.b.1");
        assert!(
            present
                .check_locally(r#"{"a": {"b": [0, 1]}}"#)
                .unwrap()
                .is_ok()
        );
        assert!(
            present
                .check_locally(r#"{"a": {"b": [0]}}"#)
                .unwrap()
                .is_err()
        );
        assert!(Validator::agent_task("m", "p").check_locally("x").is_none());
    }

    #[test]
    fn templating_leaves_json_braces_alone() {
        let check = AgentCheck {
            model: "max/checker".into(),
            prompt: r#"Is '{CODE_TO_VALIDATE}' ok for {ORIGINAL_USER_PROMPT}? Respond JSON: {"validation_passed": <bool>, "details": {}}"#.into(),
            success_criteria: SuccessCriteria::default(),
            mcp_config: None,
        };
        let out = check.render_prompt("fn f() { {answer} }", Some("a function"));
        assert_eq!(
            out,
            r#"Is 'fn f() { {answer} }' ok for a function? Respond JSON: {"validation_passed": <bool>, "details": {}}"#
        );
    }

    #[test]
    fn prompts_without_a_placeholder_get_the_answer_appended() {
        let check = AgentCheck {
            model: "m".into(),
            prompt: "Report today's date as {\"date\": \"YYYY-MM-DD\"}.".into(),
            success_criteria: SuccessCriteria::default(),
            mcp_config: None,
        };
        assert!(
            check
                .render_prompt("the answer", None)
                .ends_with("\nthe answer")
        );
    }

    #[test]
    fn checker_replies_are_judged_against_the_criteria() {
        let v = Validator::AgentTask(AgentCheck {
            model: "m".into(),
            prompt: "p".into(),
            success_criteria: SuccessCriteria {
                must_contain_in_reasoning: Some("understood".into()),
                all_true_in_details_keys: vec!["syntax_ok".into()],
                ..SuccessCriteria::default()
            },
            mcp_config: None,
        });
        let ok = "```json\n{\"validation_passed\": true, \"reasoning\": \"Understood it\", \"details\": {\"syntax_ok\": true}}\n```";
        assert_eq!(v.judge_checker_reply(ok), Ok(()));
        let bad_detail = r#"Sure: {"validation_passed": true, "reasoning": "understood", "details": {"syntax_ok": false}}"#;
        assert!(
            v.judge_checker_reply(bad_detail)
                .unwrap_err()
                .contains("syntax_ok")
        );
        let rejected = r#"{"validation_passed": false, "reasoning": "missing colon"}"#;
        assert!(
            v.judge_checker_reply(rejected)
                .unwrap_err()
                .contains("missing colon")
        );
        assert!(v.judge_checker_reply("no json here").is_err());
    }

    #[test]
    fn agent_entries_round_trip() {
        let entry = json!({
            "type": "agent_task",
            "params": {
                "validation_model_alias": "max/v",
                "task_prompt_to_claude": "check {TEXT_TO_VALIDATE}",
                "success_criteria": {"field_present_in_details": "date"},
                "mcp_config": {"mcpServers": {}}
            }
        });
        let v: Validator = serde_json::from_value(entry.clone()).unwrap();
        assert!(v.is_agent_check());
        assert_eq!(serde_json::to_value(&v).unwrap(), entry);
    }
}
