//! The command-line provider ([`ProviderKind::Command`](crate::llm::ProviderKind::Command)):
//! each call runs a configured command, in a fresh working directory, speaking JSON lines.
//!
//! # The protocol
//!
//! The command gets one JSON object on stdin, then end of file:
//!
//! ```json
//! {"model": "max/code_agent", "prompt": "the last user message", "system": "…",
//!  "messages": [{"role": "user", "content": "…"}], "max_tokens": 1024, "temperature": 0.2,
//!  "tools": [], "stream": true, "working_dir": "/tmp/llmjobs-cmd-…",
//!  "mcp_config": "/tmp/llmjobs-cmd-…/mcp_config.json"}
//! ```
//!
//! (`model` is the wire model of the route; `messages` is the full history in the request's own
//! shape; absent settings are `null`; `mcp_config` is the path of the request's `mcp_config`,
//! written with its `${VAR}` references expanded, or `null` when it has none.)
//!
//! It answers on stdout with one JSON event per line:
//!
//! - `{"type": "delta", "text": "…"}`: more answer text;
//! - `{"type": "done", "usage": {"input_tokens": 12, "output_tokens": 40}}`: the end, with
//!   optional `text` (the whole answer, replacing the deltas), `model` and `finish_reason`;
//! - `{"type": "error", "message": "…", "retryable": false}`: the call failed (retryable
//!   unless it says otherwise).
//!
//! Other event types are ignored, so a command may report more than this. Lines after `done`
//! are ignored. A command that exits non-zero, or ends without `done`, fails the call with the
//! tail of its stderr.
//!
//! # Process lifetime
//!
//! The command runs as the leader of its own process group. When the call ends, or is dropped
//! (the job was cancelled or timed out), the whole group is killed, so helpers it started (MCP
//! servers, a CLI's subprocesses) die with it; its working directory is removed.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{CallCtx, Parsed};
use crate::llm::request::estimate_tokens;
use crate::llm::{ChatRequest, FinishReason, LlmError, StreamEvent, Usage};

/// How much of the command's stderr an error keeps (its tail).
const STDERR_TAIL_BYTES: usize = 2000;

/// The file, in the call's working directory, that holds the request's `mcp_config`.
pub const MCP_CONFIG_FILE: &str = "mcp_config.json";

/// What a command-line provider runs: a program, its arguments and environment, and where its
/// per-call working directories are made.
///
/// `Debug` prints the names of the environment variables, never their values.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandSpec {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (on top of the process's own).
    pub env: Vec<(String, String)>,
    /// The directory in which each call's fresh working directory is made (default: the
    /// system's temporary directory).
    pub workdir_root: Option<PathBuf>,
}

impl std::fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("CommandSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("workdir_root", &self.workdir_root)
            .finish()
    }
}

impl CommandSpec {
    /// Runs `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            workdir_root: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Makes each call's working directory inside `root`.
    pub fn workdir_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.workdir_root = Some(root.into());
        self
    }
}

/// Kills a process group when dropped: the command and everything it started.
struct GroupKill(Option<rustix::process::Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // ESRCH (the group is gone already) is the normal case after a clean exit.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Runs one call of `spec`; streams deltas to `on_event` when given.
pub(crate) async fn run(
    spec: &CommandSpec,
    ctx: CallCtx<'_>,
    wire_model: &str,
    req: &ChatRequest,
    attempt: u32,
    mut on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
) -> Result<Parsed, LlmError> {
    let failed = |reason: String, stderr: String| LlmError::Command {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        reason,
        stderr,
        retryable: true,
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix("llmjobs-cmd-");
    let workdir = match &spec.workdir_root {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .map_err(|e| {
        failed(
            format!("cannot create its working directory: {e}"),
            String::new(),
        )
    })?;
    let mcp_path = match &req.mcp_config {
        Some(mcp) => {
            let path = workdir.path().join(MCP_CONFIG_FILE);
            let mcp = crate::llm::secrets::expand_env(mcp)
                .map_err(|reason| ctx.invalid_request(reason))?;
            let text = serde_json::to_vec_pretty(&mcp).unwrap_or_default();
            tokio::fs::write(&path, text).await.map_err(|e| {
                failed(
                    format!("cannot write {MCP_CONFIG_FILE}: {e}"),
                    String::new(),
                )
            })?;
            Some(path)
        }
        None => None,
    };
    let input = json!({
        "model": wire_model,
        "prompt": req.last_user_text(),
        "system": req.system,
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "tools": req.tools,
        "stream": on_event.is_some(),
        "working_dir": workdir.path(),
        "mcp_config": mcp_path,
    });

    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        failed(
            format!("cannot start `{}`: {e}", spec.program),
            String::new(),
        )
    })?;
    let _group = GroupKill(
        child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32)),
    );
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(failed("its pipes were not set up".into(), String::new()));
    };
    // Written by its own task, so a command that answers before reading all of its input
    // cannot deadlock the call. A command that never reads stdin just loses it.
    let mut line = input.to_string();
    line.push('\n');
    tokio::spawn(async move {
        let _ = stdin.write_all(line.as_bytes()).await;
    });
    let stderr_tail = tokio::spawn(async move {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL_BYTES * 2 {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
        }
        let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        String::from_utf8_lossy(&tail[start..]).trim().to_string()
    });

    let mut state = Answer::default();
    let mut lines = BufReader::new(stdout).lines();
    let mut outcome: Option<Result<(), LlmError>> = None;
    while outcome.is_none() {
        let line = lines
            .next_line()
            .await
            .map_err(|e| failed(format!("cannot read its output: {e}"), String::new()))?;
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line).map_err(|e| {
            ctx.invalid_response(format!("an output line is not JSON ({e})"), &line)
        })?;
        outcome = state.on_event(ctx, &event, attempt, &mut on_event);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| failed(format!("cannot wait for it: {e}"), String::new()))?;
    let stderr = stderr_tail.await.unwrap_or_default();
    match outcome {
        Some(Ok(())) => Ok(state.finish()),
        Some(Err(error)) => Err(error),
        None if !status.success() => Err(failed(format!("it exited with {status}"), stderr)),
        None => Err(failed("it exited without a `done` event".into(), stderr)),
    }
}

/// The answer being assembled from the command's events.
#[derive(Default)]
struct Answer {
    parsed: Parsed,
    chars: usize,
}

impl Answer {
    /// Takes one event; `Some` once the call is over (a `done` or an `error` event).
    fn on_event(
        &mut self,
        ctx: CallCtx<'_>,
        event: &Value,
        attempt: u32,
        on_event: &mut Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Option<Result<(), LlmError>> {
        let text = |key: &str| event.get(key).and_then(Value::as_str);
        match text("type") {
            Some("delta") => {
                let delta = text("text").unwrap_or_default();
                self.parsed.text.push_str(delta);
                self.chars += delta.len();
                if let Some(on_event) = on_event.as_deref_mut() {
                    on_event(&StreamEvent {
                        delta_text: delta.to_string(),
                        output_tokens_so_far: estimate_tokens(self.chars),
                        input_tokens: None,
                        attempt,
                    });
                }
                None
            }
            Some("done") => {
                if let Some(full) = text("text") {
                    self.parsed.text = full.to_string();
                }
                self.parsed.model = text("model").map(str::to_string);
                self.parsed.finish_reason = Some(
                    text("finish_reason").map_or(FinishReason::Stop, FinishReason::from_provider),
                );
                self.parsed.usage = event.get("usage").and_then(|u| {
                    Some(Usage::new(
                        u.get("input_tokens")?.as_u64()?,
                        u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
                    ))
                });
                Some(Ok(()))
            }
            Some("error") => Some(Err(LlmError::Command {
                provider: ctx.provider.to_string(),
                model: ctx.model.to_string(),
                reason: text("message")
                    .unwrap_or("it reported an error")
                    .to_string(),
                stderr: String::new(),
                retryable: event
                    .get("retryable")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            })),
            _ => None,
        }
    }

    fn finish(self) -> Parsed {
        self.parsed
    }
}
