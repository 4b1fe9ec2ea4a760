//! Secrets hidden by field name in what the API shows.

use serde_json::Value;

/// The field names hidden by default (see [`HttpApi::redact_fields`](super::HttpApi::redact_fields)).
pub const DEFAULT_REDACTED_FIELDS: &[&str] = &[
    "api_key",
    "apikey",
    "authorization",
    "password",
    "passwd",
    "secret",
    "token",
    "access_key",
    "private_key",
    "credentials",
    "cookie",
];

/// What a hidden value becomes.
const REDACTED: &str = "[redacted]";

/// Replaces the values of secret-named fields, at any depth, with `"[redacted]"`.
#[derive(Debug, Clone)]
pub(crate) struct Redactor {
    /// Normalized names: lower case, `-` as `_`.
    names: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(names: &[String]) -> Self {
        Redactor {
            names: names
                .iter()
                .map(|n| normalize(n))
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    /// Hides every secret-named field in `value`.
    pub(crate) fn apply(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, field) in map.iter_mut() {
                    if self.is_secret(key) {
                        *field = Value::String(REDACTED.into());
                    } else {
                        self.apply(field);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.apply(item)),
            _ => {}
        }
    }

    /// `value` with its secret-named fields hidden.
    pub(crate) fn applied(&self, mut value: Value) -> Value {
        self.apply(&mut value);
        value
    }

    /// Whether a field of this name holds a secret: its name is one of the list, or ends with
    /// `_` and one of them (`openai_api_key`, `access_token`), ignoring case and `-`/`_`.
    fn is_secret(&self, key: &str) -> bool {
        let key = normalize(key);
        self.names.iter().any(|name| {
            key == *name
                || key
                    .strip_suffix(name.as_str())
                    .is_some_and(|rest| rest.ends_with('_'))
        })
    }
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn defaults() -> Redactor {
        let names: Vec<String> = DEFAULT_REDACTED_FIELDS
            .iter()
            .map(|n| n.to_string())
            .collect();
        Redactor::new(&names)
    }

    #[test]
    fn secret_fields_are_hidden_at_any_depth() {
        let shown = defaults().applied(json!({
            "model": "gpt",
            "api_key": "sk-1",
            "headers": {"Authorization": "Bearer x", "X-Api-Key": "k"},
            "steps": [{"openai_api_key": "sk-2", "access_token": "t"}],
        }));
        assert_eq!(
            shown,
            json!({
                "model": "gpt",
                "api_key": "[redacted]",
                "headers": {"Authorization": "[redacted]", "X-Api-Key": "[redacted]"},
                "steps": [{"openai_api_key": "[redacted]", "access_token": "[redacted]"}],
            })
        );
    }

    #[test]
    fn names_that_only_contain_a_secret_word_are_kept() {
        let kept =
            json!({"max_tokens": 5, "input_tokens": 3, "idempotency_key": "k", "tokenizer": "t"});
        assert_eq!(defaults().applied(kept.clone()), kept);
    }
}
