//! The command-line provider: a fake CLI (a python3 script written by each test) answers
//! through the JSON-lines protocol; failures carry its stderr; cancelling or timing out a call
//! kills the command and everything it started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use llmjobs::llm::{
    ChatRequest, CommandSpec, LlmClient, LlmError, ProviderConfig, RetryPolicy, llm_call,
};
use llmjobs::{JobState, Jobs};
use llmjobs_testkit::{TempDb, wait_until};

/// The fake CLI. What it does depends on the prompt's first word.
const FAKE_CLI: &str = r#"
import json, os, subprocess, sys, time
req = json.loads(sys.stdin.readline())
prompt = req["prompt"] or ""
mode = prompt.split(" ")[0]
def emit(event):
    print(json.dumps(event), flush=True)
if mode == "answer":
    words = ["echo:"] + prompt.split(" ")[1:]
    for i, word in enumerate(words):
        emit({"type": "delta", "text": (" " if i else "") + word})
    emit({"type": "done", "usage": {"input_tokens": 7, "output_tokens": len(words)}})
elif mode == "where":
    with open(req["mcp_config"]) as f:
        mcp = json.load(f)
    emit({"type": "done", "text": json.dumps({"cwd": os.getcwd(), "mcp": mcp,
          "same": os.path.samefile(os.getcwd(), req["working_dir"]),
          "history": len(req["messages"])})})
elif mode == "fail":
    sys.stderr.write("starting\n" + "noise\n" * 500 + "fatal: the model is unavailable\n")
    sys.exit(3)
elif mode == "refuse":
    emit({"type": "error", "message": "prompt rejected by policy", "retryable": False})
elif mode == "hang":
    child = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(os.environ["PID_DIR"], "pids.tmp"), "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    os.rename(os.path.join(os.environ["PID_DIR"], "pids.tmp"),
              os.path.join(os.environ["PID_DIR"], "pids"))
    emit({"type": "delta", "text": "thinking"})
    time.sleep(300)
"#;

struct FakeCli {
    dir: tempfile::TempDir,
}

impl FakeCli {
    fn new() -> FakeCli {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fake_cli.py"), FAKE_CLI).unwrap();
        FakeCli { dir }
    }

    fn client(&self, timeout: Duration) -> LlmClient {
        let spec = CommandSpec::new("python3")
            .arg(self.dir.path().join("fake_cli.py").to_str().unwrap())
            .env("PID_DIR", self.dir.path().to_str().unwrap())
            .workdir_root(self.dir.path());
        LlmClient::builder()
            .provider(ProviderConfig::command("cli", spec))
            .route("cli/", "cli")
            .retry(RetryPolicy::no_retries())
            .timeout(timeout)
            .build()
            .unwrap()
    }

    fn pids(&self) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(self.dir.path().join("pids")).ok()?;
        let mut it = text.split(' ').map(|p| p.parse().unwrap());
        Some((it.next()?, it.next()?))
    }

    fn wait_for_pids(&self) -> (u32, u32) {
        wait_until(Duration::from_secs(30), "the fake CLI started", || {
            self.pids().is_some()
        });
        self.pids().unwrap()
    }
}

/// Whether a process is running (a zombie waiting to be reaped is not).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn assert_killed(pids: (u32, u32)) {
    wait_until(
        Duration::from_secs(30),
        "the command and its child died",
        || !is_running(pids.0) && !is_running(pids.1),
    );
}

fn req(prompt: &str) -> ChatRequest {
    ChatRequest::new("cli/agent").user(prompt)
}

#[tokio::test]
async fn the_command_answers_a_call() {
    let cli = FakeCli::new();
    let answer = cli
        .client(Duration::from_secs(60))
        .chat(&req("answer hello world"))
        .await
        .unwrap();
    assert_eq!(answer.text, "echo: hello world");
    assert_eq!(answer.provider, "cli");
    assert_eq!(
        (answer.usage.input_tokens, answer.usage.output_tokens),
        (7, 3)
    );
    assert!(!answer.usage.estimated);
}

#[tokio::test]
async fn a_streamed_call_reports_each_delta() {
    let cli = FakeCli::new();
    let mut deltas = Vec::new();
    let answer = cli
        .client(Duration::from_secs(60))
        .chat_stream(&req("answer one two"), |e| {
            deltas.push(e.delta_text.clone())
        })
        .await
        .unwrap();
    assert_eq!(deltas, ["echo:", " one", " two"]);
    assert_eq!(answer.text, "echo: one two");
}

#[tokio::test]
async fn each_call_runs_in_a_fresh_directory_holding_its_mcp_config() {
    let cli = FakeCli::new();
    let mut request = req("where").assistant("before").user("where");
    request.mcp_config = Some(serde_json::json!({"mcpServers": {"fs": {"command": "mcp-fs"}}}));
    let client = cli.client(Duration::from_secs(60));
    let first: serde_json::Value = client.chat(&request).await.unwrap().json().unwrap();
    let second: serde_json::Value = client.chat(&request).await.unwrap().json().unwrap();
    assert_eq!(first["mcp"]["mcpServers"]["fs"]["command"], "mcp-fs");
    assert_eq!(first["same"], true);
    assert_eq!(first["history"], 3, "the full message history is sent");
    let cwd = PathBuf::from(first["cwd"].as_str().unwrap());
    assert_ne!(first["cwd"], second["cwd"]);
    assert!(cwd.starts_with(std::fs::canonicalize(cli.dir.path()).unwrap()));
    assert!(
        !Path::new(&cwd).exists(),
        "the directory is removed after the call"
    );
}

#[tokio::test]
async fn a_failing_command_gives_its_exit_status_and_the_tail_of_its_stderr() {
    let cli = FakeCli::new();
    let err = cli
        .client(Duration::from_secs(60))
        .chat(&req("fail"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Command { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(
            "command provider `cli` (model `cli/agent`) failed: it exited with exit status: 3; stderr: "
        ),
        "{message}"
    );
    assert!(
        message.ends_with("fatal: the model is unavailable"),
        "{message}"
    );
    assert!(!message.contains("starting"), "only the tail is kept");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_error_event_that_is_not_retryable_is_permanent() {
    let cli = FakeCli::new();
    let err = cli
        .client(Duration::from_secs(60))
        .chat(&req("refuse"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "command provider `cli` (model `cli/agent`) failed: prompt rejected by policy"
    );
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_its_timeout_kills_the_command_and_its_children() {
    let cli = FakeCli::new();
    let client = cli.client(Duration::from_secs(5));
    let call = tokio::spawn(async move { client.chat(&req("hang")).await });
    let pids = cli.wait_for_pids();
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
    assert_killed(pids);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_job_kills_the_command_and_its_children() {
    let cli = FakeCli::new();
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .llm(cli.client(Duration::from_secs(600)))
        .open()
        .await
        .unwrap();
    let handle = jobs.spawn(llm_call(req("hang"))).await.unwrap();
    let pids = cli.wait_for_pids();
    assert!(is_running(pids.0) && is_running(pids.1));
    handle.cancel().await.unwrap();
    assert_killed(pids);
    assert!(handle.clone().wait().await.is_err());
    assert_eq!(handle.status().await.unwrap().state, JobState::Cancelled);
    jobs.shutdown().await;
}
