//! Secrets in requests: `${VAR}` references expanded from the environment when a call is sent,
//! and the check that keeps literal secrets out of stored job arguments.
//!
//! A durable job stores its arguments, and a resumed job reads them back, so a literal key in
//! a request (`mcp_config.mcpServers.github.env.GITHUB_TOKEN`, `provider_options.api_key`)
//! would sit in the database. Instead such values are written `${GITHUB_TOKEN}`: the stored
//! request holds the reference, and whichever worker sends the call (the first one, or the one
//! that resumes the job after a restart) reads the value from its own environment.

use serde_json::{Map, Value};

use super::ChatRequest;

/// Whether a field or environment variable name says it holds a credential.
fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "credential",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// Whether a value is only `${VAR}` references (and text around them), not a literal secret.
fn is_reference(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${"),
        Value::Null => true,
        _ => false,
    }
}

/// The paths of literal secrets in `value`: values of secret-named keys of every `env` map
/// (MCP servers' environments) and, when `top_level_names` is set, of secret-named keys of
/// `value` itself.
fn literal_secrets(path: &str, value: &Value, top_level_names: bool, found: &mut Vec<String>) {
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                literal_secrets(&format!("{path}[{i}]"), item, false, found);
            }
        }
        return;
    };
    for (key, item) in map {
        let here = format!("{path}.{key}");
        if key == "env"
            && let Value::Object(env) = item
        {
            for (name, v) in env {
                if is_secret_name(name) && !is_reference(v) {
                    found.push(format!("{here}.{name}"));
                }
            }
        } else if top_level_names && is_secret_name(key) && !is_reference(item) {
            found.push(here);
        } else {
            literal_secrets(&here, item, false, found);
        }
    }
}

impl ChatRequest {
    /// The request as a durable job stores it: fields of `extra` whose names say they hold a
    /// credential are dropped (they are never sent), and a literal secret in an MCP
    /// server's `env` or in `provider_options` is refused with a message naming it and the
    /// `${VAR}` form to use instead.
    pub(crate) fn for_storage(&self) -> Result<ChatRequest, String> {
        let mut found = Vec::new();
        for (name, config) in [
            ("mcp_config", &self.mcp_config),
            ("debug_tool_mcp_config", &self.debug_tool_mcp_config),
        ] {
            if let Some(config) = config {
                literal_secrets(name, config, false, &mut found);
            }
        }
        literal_secrets(
            "provider_options",
            &Value::Object(self.provider_options.clone()),
            true,
            &mut found,
        );
        if !found.is_empty() {
            return Err(format!(
                "the request carries literal secrets ({}), which a durable job would store in \
                 its arguments; write each as a reference such as \"${{GITHUB_TOKEN}}\", which \
                 the worker that sends the call reads from its environment",
                found.join(", ")
            ));
        }
        let mut stored = self.clone();
        stored.extra.retain(|key, _| !is_secret_name(key));
        Ok(stored)
    }
}

/// `value` with every `${VAR}` in its strings replaced by the variable's value from the
/// environment; an unset variable is an error naming it.
pub(crate) fn expand_env(value: &Value) -> Result<Value, String> {
    expand_with(value, &|name| std::env::var(name).ok())
}

fn expand_with(value: &Value, var: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if s.contains("${") => Value::String(expand_str(s, var)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| expand_with(v, var))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), expand_with(v, var)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => other.clone(),
    })
}

fn expand_str(s: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`{s}` has a `${{` without its closing `}}`"));
        };
        let name = &after[..end];
        let value =
            var(name).ok_or_else(|| format!("the environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_are_expanded_and_unset_ones_named() {
        let var = |name: &str| (name == "TOKEN").then(|| "t0k".to_string());
        let value = json!({"env": {"A": "Bearer ${TOKEN}", "B": 3}, "list": ["${TOKEN}"]});
        let expanded = expand_with(&value, &var).unwrap();
        assert_eq!(
            expanded,
            json!({"env": {"A": "Bearer t0k", "B": 3}, "list": ["t0k"]})
        );
        let err = expand_with(&json!("${MISSING}"), &var).unwrap_err();
        assert_eq!(err, "the environment variable `MISSING` is not set");
    }

    #[test]
    fn literal_secrets_are_refused_and_references_kept() {
        let mut req = ChatRequest::new("max/agent").user("hi");
        req.mcp_config = Some(json!({"mcpServers": {"gh": {"command": "gh-mcp",
            "env": {"GITHUB_TOKEN": "ghp_live", "LOG_LEVEL": "debug"}}}}));
        let err = req.for_storage().unwrap_err();
        assert!(
            err.contains("mcp_config.mcpServers.gh.env.GITHUB_TOKEN"),
            "{err}"
        );
        assert!(!err.contains("ghp_live"), "{err}");

        req.mcp_config = Some(json!({"mcpServers": {"gh": {"command": "gh-mcp",
            "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}", "LOG_LEVEL": "debug"}}}}));
        req.extra.insert("api_key".into(), json!("sk-old"));
        req.extra.insert("note".into(), json!("kept"));
        let stored = req.for_storage().unwrap();
        assert_eq!(stored.mcp_config, req.mcp_config);
        assert!(!stored.extra.contains_key("api_key"));
        assert_eq!(stored.extra["note"], "kept");

        let req = ChatRequest::new("openai/x")
            .user("hi")
            .provider_option("api_key", json!("sk-live"));
        assert!(
            req.for_storage()
                .unwrap_err()
                .contains("provider_options.api_key")
        );
    }
}
