//! The `llmjobs` command, run as a user runs it: the real binary, on a database each test
//! prepares with the library. Output and exit codes are checked; `--json` is parsed back.
//!
//! Needs the `cli` feature: `cargo test --all-features --test cli`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use llmjobs::{JobContext, JobError, JobId, Jobs, Progress, llm_job};
use serde_json::Value;

/// Journals a draft, reports usage, and returns the text in capitals.
#[llm_job]
async fn cli_echo(ctx: JobContext, text: String) -> Result<String, JobError> {
    let draft: String = ctx
        .step("draft", async { Ok::<_, JobError>(text.to_uppercase()) })
        .await?;
    ctx.report(
        Progress::stage("done")
            .with_fraction(1.0)
            .with_tokens(100, 20)
            .with_cost(Some(0.5)),
    );
    Ok(draft)
}

/// Fails for good.
#[llm_job]
async fn cli_fail() -> Result<String, JobError> {
    Err(JobError::permanent(JobError::msg("quota exhausted")))
}

/// A database prepared by a test, and the jobs in it.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    url: String,
    /// `cli_echo("hello world")`, completed.
    done: JobId,
    /// `cli_fail()`, failed.
    failed: JobId,
    /// `cli_echo("later")`, due in an hour, idempotency key `order-42`: pending.
    pending: JobId,
}

/// Runs the jobs to their ends, then stops the runtime: the command is alone with the file.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let url = format!("sqlite://{}", path.display());
    let jobs = Jobs::open(&url).await.unwrap();
    let done = jobs.spawn(cli_echo("hello world".into())).await.unwrap();
    assert_eq!(done.wait().await.unwrap(), "HELLO WORLD");
    let failed = jobs.spawn(cli_fail()).await.unwrap();
    assert!(failed.wait().await.is_err());
    let pending = jobs
        .spawn(
            cli_echo("later".into())
                .delay(Duration::from_secs(3600))
                .idempotency_key("order-42"),
        )
        .await
        .unwrap();
    jobs.shutdown().await;
    Fixture {
        _dir: dir,
        path,
        url,
        done: done.id(),
        failed: failed.id(),
        pending: pending.id(),
    }
}

/// Runs `llmjobs --db URL ARGS…` with a fixed output width.
fn llmjobs(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .arg("--db")
        .arg(url)
        .args(args)
        .env_remove("LLMJOBS_DATABASE_URL")
        .env("COLUMNS", "120")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command succeeded; its standard output.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// The command failed with `code` and said why in one line, with no panic or backtrace;
/// that line.
fn fails(output: Output, code: i32) -> String {
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(&output)
    );
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("llmjobs: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    err
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn list_shows_every_job_newest_first() {
    let f = fixture().await;
    let out = ok(llmjobs(&f.url, &["list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with(&f.pending.to_string()), "{out}");
    assert!(lines[2].starts_with(&f.failed.to_string()), "{out}");
    assert!(lines[3].starts_with(&f.done.to_string()), "{out}");
    assert!(
        lines[2].contains("failed") && lines[2].contains("quota exhausted"),
        "{out}"
    );
    assert!(
        lines[3].contains("completed") && lines[3].contains("cli_echo"),
        "{out}"
    );
}

#[tokio::test]
async fn list_filters_by_state_name_key_review_and_age() {
    let f = fixture().await;
    let ids = |args: &[&str]| -> Vec<String> {
        let out = ok(llmjobs(&f.url, args));
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&["list", "--state", "failed"]), [f.failed.to_string()]);
    assert_eq!(
        ids(&["list", "--name", "cli_echo"]),
        [f.pending.to_string(), f.done.to_string()]
    );
    assert_eq!(ids(&["list", "--key", "order-42"]), [f.pending.to_string()]);
    assert_eq!(ids(&["list", "--needs-review"]), Vec::<String>::new());
    assert_eq!(ids(&["list", "--since", "1h"]).len(), 3);
    assert_eq!(
        ids(&["list", "--oldest-first", "--state", "completed"]),
        [f.done.to_string()]
    );
}

#[tokio::test]
async fn list_pages_with_limit_and_after() {
    let f = fixture().await;
    let first = llmjobs(&f.url, &["list", "--limit", "2"]);
    let out = ok(first.clone());
    assert_eq!(out.lines().count(), 3, "{out}");
    let hint = format!("more: add --after {}", f.failed);
    assert!(stderr(&first).contains(&hint), "{}", stderr(&first));
    let next = ok(llmjobs(
        &f.url,
        &["list", "--limit", "2", "--after", &f.failed.to_string()],
    ));
    let rows: Vec<&str> = next.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{next}");
    assert!(rows[0].starts_with(&f.done.to_string()), "{next}");
}

#[tokio::test]
async fn list_json_and_jsonl_parse_back() {
    let f = fixture().await;
    let all = json(&ok(llmjobs(&f.url, &["list", "--json"])));
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3);
    let done = &all[2];
    assert_eq!(done["id"], f.done.to_string());
    assert_eq!(done["state"], "completed");
    assert_eq!(done["args"]["text"], "hello world");
    assert_eq!(done["result"], "HELLO WORLD");
    assert_eq!(done["usage"]["input_tokens"], 100);
    assert!(done["run_time_ms"].is_u64(), "{done}");
    assert_eq!(all[1]["error"], "quota exhausted");
    assert_eq!(all[0]["idempotency_key"], "order-42");

    let lines = ok(llmjobs(&f.url, &["list", "--jsonl", "--state", "pending"]));
    let objects: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["id"], f.pending.to_string());
}

#[tokio::test]
async fn show_prints_arguments_timings_usage_steps_and_result() {
    let f = fixture().await;
    let out = ok(llmjobs(&f.url, &["show", &f.done.to_string()]));
    for part in [
        &format!("job {}  cli_echo  completed", f.done),
        "attempts      1 of at most 1",
        "queued",
        "started",
        "finished",
        "(ran ",
        "usage         100 tokens in, 20 out, $0.5000",
        "{\"text\":\"hello world\"}",
        "steps (1, replayed on resume)",
        "#0   draft",
        "HELLO WORLD",
    ] {
        assert!(out.contains(part), "{part:?} missing:\n{out}");
    }
    let failed = ok(llmjobs(&f.url, &["show", &f.failed.to_string()]));
    // Each attempt's error, with when it ended.
    assert!(
        failed
            .lines()
            .any(|l| l.starts_with("  attempt 1     2") && l.ends_with(" UTC  quota exhausted")),
        "{failed}"
    );
}

#[tokio::test]
async fn show_json_parses_back_with_the_journal() {
    let f = fixture().await;
    let value = json(&ok(llmjobs(
        &f.url,
        &["show", &f.done.to_string(), "--json"],
    )));
    assert_eq!(value["name"], "cli_echo");
    assert_eq!(value["result"], "HELLO WORLD");
    assert_eq!(value["steps"][0]["name"], "draft");
    assert_eq!(value["steps"][0]["position"], 0);
    // The stored output holds the step's value (in the journal's envelope).
    let size = value["steps"][0]["size_bytes"].as_u64().unwrap();
    assert!(size >= "\"HELLO WORLD\"".len() as u64, "{value}");
    assert_eq!(value["progress"]["stage"], "done");
}

#[tokio::test]
async fn long_values_are_cut_with_a_hint_to_full() {
    let f = fixture().await;
    let jobs = Jobs::builder()
        .url(&f.url)
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    let long = "word ".repeat(200);
    let id = jobs.spawn(cli_echo(long.clone())).await.unwrap().id();
    jobs.shutdown().await;
    let out = ok(llmjobs(&f.url, &["show", &id.to_string()]));
    assert!(out.contains("--full"), "{out}");
    assert!(!out.contains(long.trim()), "{out}");
    assert!(out.lines().all(|l| l.chars().count() < 160), "{out}");
    let full = ok(llmjobs(&f.url, &["show", &id.to_string(), "--full"]));
    assert!(full.contains(long.trim()), "{full}");
}

#[tokio::test]
async fn wait_exits_by_how_the_job_ended() {
    let f = fixture().await;
    let done = llmjobs(&f.url, &["wait", &f.done.to_string()]);
    assert_eq!(ok(done).trim(), "HELLO WORLD");
    let err = fails(llmjobs(&f.url, &["wait", &f.failed.to_string()]), 1);
    assert!(err.contains("quota exhausted"), "{err}");
    ok(llmjobs(&f.url, &["cancel", &f.pending.to_string()]));
    let err = fails(llmjobs(&f.url, &["wait", &f.pending.to_string()]), 2);
    assert!(err.contains("cancelled"), "{err}");
    let unknown = JobId::from(uuid_v4());
    let err = fails(llmjobs(&f.url, &["wait", &unknown.to_string()]), 3);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn wait_gives_up_at_its_timeout_with_exit_code_4() {
    let f = fixture().await;
    let err = fails(
        llmjobs(
            &f.url,
            &["wait", &f.pending.to_string(), "--timeout", "300ms"],
        ),
        4,
    );
    assert!(err.contains("still pending"), "{err}");
}

#[tokio::test]
async fn wait_follows_a_job_that_another_process_runs_to_its_end() {
    let f = fixture().await;
    // Spawned by a process that runs no jobs: pending until a worker opens the database.
    let spawner = Jobs::builder()
        .url(&f.url)
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    let id = spawner.spawn(cli_echo("late".into())).await.unwrap().id();
    spawner.shutdown().await;
    let waiter = Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .args(["--db", &f.url, "wait", &id.to_string()])
        .env_remove("LLMJOBS_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let worker = Jobs::open(&f.url).await.unwrap();
    assert_eq!(worker.handle::<String>(id).wait().await.unwrap(), "LATE");
    let output = waiter.wait_with_output().unwrap();
    assert_eq!(ok(output).trim(), "LATE");
    worker.shutdown().await;
}

#[tokio::test]
async fn cancel_says_what_it_did_to_each_job() {
    let f = fixture().await;
    let out = ok(llmjobs(
        &f.url,
        &["cancel", &f.pending.to_string(), &f.done.to_string()],
    ));
    assert!(out.contains(&format!("{}: cancelled", f.pending)), "{out}");
    assert!(
        out.contains(&format!("{}: already completed; nothing changed", f.done)),
        "{out}"
    );
    let shown = json(&ok(llmjobs(
        &f.url,
        &["show", &f.pending.to_string(), "--json"],
    )));
    assert_eq!(shown["state"], "cancelled");
    let unknown = JobId::from(uuid_v4()).to_string();
    let err = fails(llmjobs(&f.url, &["cancel", &unknown]), 3);
    assert!(err.contains(&unknown), "{err}");
}

#[tokio::test]
async fn retry_puts_a_failed_job_back_and_refuses_a_completed_one() {
    let f = fixture().await;
    let out = ok(llmjobs(&f.url, &["retry", &f.failed.to_string()]));
    assert!(out.contains("pending again"), "{out}");
    let shown = json(&ok(llmjobs(
        &f.url,
        &["show", &f.failed.to_string(), "--json"],
    )));
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["earlier_runs"][0]["error"], "quota exhausted");
    let err = fails(llmjobs(&f.url, &["retry", &f.done.to_string()]), 1);
    assert!(err.contains("only a failed or cancelled job"), "{err}");
}

#[tokio::test]
async fn prune_counts_in_a_dry_run_and_then_deletes() {
    let f = fixture().await;
    let out = ok(llmjobs(
        &f.url,
        &["prune", "--older-than", "7d", "--dry-run"],
    ));
    assert!(out.contains("would delete 0 finished job(s)"), "{out}");
    // Both finished jobs ended at least a millisecond ago.
    std::thread::sleep(Duration::from_millis(5));
    let out = ok(llmjobs(
        &f.url,
        &["prune", "--older-than", "1ms", "--dry-run"],
    ));
    assert!(out.contains("would delete 2 finished job(s)"), "{out}");
    assert_eq!(
        json(&ok(llmjobs(&f.url, &["list", "--json"])))
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let out = ok(llmjobs(&f.url, &["prune", "--older-than", "1ms"]));
    assert!(out.contains("deleted 2 finished job(s)"), "{out}");
    let left = json(&ok(llmjobs(&f.url, &["list", "--json"])));
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["id"], f.pending.to_string());
}

#[tokio::test]
async fn stats_counts_by_name_and_measures_the_window() {
    let f = fixture().await;
    let out = ok(llmjobs(&f.url, &["stats"]));
    for part in [
        "NAME",
        "cli_echo",
        "cli_fail",
        "last 15m: 2 finished",
        "finished per minute, the last 10 minute(s), oldest first: 0 0 0 0 0 0 0 0 0 2",
        "1 completed, 1 failed, 0 cancelled; failure rate 50.0%",
        "queue wait",
        "run time",
        "(cli_echo)",
        "$0.5000",
    ] {
        assert!(out.contains(part), "{part:?} missing:\n{out}");
    }
    let value = json(&ok(llmjobs(&f.url, &["stats", "--json", "--window", "1h"])));
    assert_eq!(value["counts"]["cli_echo"]["completed"], 1);
    assert_eq!(value["counts"]["cli_echo"]["pending"], 1);
    assert_eq!(value["failed"], 1);
    assert_eq!(value["failure_rate"], 0.5);
    assert_eq!(value["finished_by_minute"].as_array().unwrap().len(), 10);
    assert_eq!(value["usage"]["(cli_echo)"]["input_tokens"], 100);
    assert!(value["run_time"]["p99_ms"].is_u64(), "{value}");
}

/// `stats` takes tokens and cost by model from the usage ledger: every provider call, the
/// failed tries too; jobs that report usage themselves keep their figures.
#[cfg(feature = "mock")]
#[tokio::test]
async fn stats_reads_tokens_and_cost_by_model_from_the_usage_ledger() {
    use llmjobs::llm::mock::{MockLlmServer, MockReply};
    use llmjobs::llm::{ChatRequest, ChatResponse, Price, RetryPolicy, llm_call};
    let f = fixture().await;
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply(MockReply::server_error());
    let client = mock
        .client_builder()
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(1)))
        .price("openai/*", Price::per_million_tokens(1000.0, 1000.0))
        .build()
        .unwrap();
    let jobs = Jobs::builder()
        .url(&f.url)
        .llm(client)
        .open()
        .await
        .unwrap();
    let request = ChatRequest::new("openai/gpt-4o-mini").user("Name a colour.");
    let answer: ChatResponse = jobs.run(llm_call(request)).await.unwrap();
    jobs.shutdown().await;
    assert_eq!(mock.request_count(), 2, "a 500, then the answer");

    let value = json(&ok(llmjobs(&f.url, &["stats", "--json"])));
    let usage = &value["usage"]["openai/gpt-4o-mini"];
    assert_eq!(usage["jobs"], 1, "{value}");
    assert_eq!(usage["input_tokens"], answer.usage.input_tokens);
    assert_eq!(usage["output_tokens"], answer.usage.output_tokens);
    let cost = usage["cost_usd"].as_f64().unwrap();
    assert!((cost - answer.cost.unwrap()).abs() < 1e-9, "{value}");
    assert_eq!(value["usage"]["(cli_echo)"]["input_tokens"], 100);
    let out = ok(llmjobs(&f.url, &["stats"]));
    for part in [
        "tokens and cost of the LLM calls",
        "openai/gpt-4o-mini",
        "(cli_echo)",
    ] {
        assert!(out.contains(part), "{part:?} missing:\n{out}");
    }
}

#[tokio::test]
async fn schema_and_migrate_check_say_the_database_is_usable() {
    let f = fixture().await;
    let out = ok(llmjobs(&f.url, &["schema"]));
    assert!(out.starts_with("sqlite schema version "), "{out}");
    assert!(out.contains("this llmjobs can use it"), "{out}");
    let value = json(&ok(llmjobs(&f.url, &["schema", "--json"])));
    assert_eq!(value["usable"], true);
    assert_eq!(value["version"], value["supported"]);
    ok(llmjobs(&f.url, &["migrate", "--check"]));
}

/// Marks the database as migrated by a later llmjobs.
fn from_the_future(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO llmjobs_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', 1, x'00', 0)",
        [],
    )
    .unwrap();
}

#[tokio::test]
async fn a_database_from_a_newer_llmjobs_is_refused_by_every_command() {
    let f = fixture().await;
    from_the_future(&f.path);
    let id = f.done.to_string();
    for args in [
        vec!["list"],
        vec!["show", &id],
        vec!["stats"],
        vec!["wait", &id],
        vec!["cancel", &id],
        vec!["retry", &id],
        vec!["prune", "--older-than", "1d"],
    ] {
        let err = fails(llmjobs(&f.url, &args), 1);
        assert!(err.contains("newer llmjobs"), "{args:?}: {err}");
    }
    let out = ok(llmjobs(&f.url, &["schema"]));
    assert!(
        out.contains("version 999") && out.contains("must not use it"),
        "{out}"
    );
    let err = llmjobs(&f.url, &["migrate", "--check"]);
    assert_eq!(err.status.code(), Some(1));
}

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not a database, just some words and more words").unwrap();
    let text_url = text_file.display().to_string();
    let id = JobId::from(uuid_v4()).to_string();
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "mysql://localhost/jobs",
            vec!["list"],
            1,
            "invalid database url",
        ),
        (
            "sqlite://jobs.db?cache=shared",
            vec!["list"],
            1,
            "unknown option",
        ),
        (&missing_url, vec!["list"], 1, "no database file"),
        (&missing_url, vec!["cancel", &id], 1, "no database file"),
        (&text_url, vec!["list"], 1, "cannot open job database"),
        ("sqlite::memory:", vec!["list"], 1, "in-memory"),
        (&missing_url, vec!["show", "not-an-id"], 2, "not a job id"),
        (
            &missing_url,
            vec!["list", "--state", "done"],
            2,
            "unknown job state",
        ),
        (
            &missing_url,
            vec!["prune", "--older-than", "a week"],
            2,
            "not a duration",
        ),
        (
            &missing_url,
            vec!["frobnicate"],
            2,
            "unrecognized subcommand",
        ),
    ];
    for (url, args, code, says) in cases {
        let err = fails(llmjobs(url, &args), code);
        assert!(err.contains(says), "{url} {args:?}: {err}");
    }
    assert!(!missing.exists(), "a read created the database file");
    // No database at all.
    let output = Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .arg("list")
        .env_remove("LLMJOBS_DATABASE_URL")
        .output()
        .unwrap();
    assert!(fails(output, 1).contains("LLMJOBS_DATABASE_URL"));
}

#[tokio::test]
async fn an_unknown_id_exits_3() {
    let f = fixture().await;
    let id = JobId::from(uuid_v4()).to_string();
    for command in ["show", "retry"] {
        let err = fails(llmjobs(&f.url, &[command, &id]), 3);
        assert!(err.contains(&format!("job {id} not found")), "{err}");
    }
}

#[tokio::test]
async fn the_database_url_can_come_from_the_environment() {
    let f = fixture().await;
    let output = Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .args(["list", "--state", "failed"])
        .env("LLMJOBS_DATABASE_URL", &f.url)
        .output()
        .unwrap();
    assert!(ok(output).contains(&f.failed.to_string()));
}

#[tokio::test]
async fn read_commands_start_no_runtime_and_wait_for_no_writer() {
    let f = fixture().await;
    // The runtime's lock files: a command that started a runtime would make them again.
    let locks = PathBuf::from(format!("{}.llmjobs", f.path.display()));
    std::fs::remove_dir_all(&locks).unwrap();
    // Another process is in the middle of a write transaction: readers go on (WAL), while a
    // command that wanted to write would wait for it.
    let writer = rusqlite::Connection::open(&f.path).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; UPDATE llmjobs_jobs SET priority = 7")
        .unwrap();
    let done = f.done.to_string();
    for args in [
        vec!["list"],
        vec!["show", &done],
        vec!["stats"],
        vec!["wait", &done],
        vec!["schema"],
        vec!["prune", "--older-than", "1d", "--dry-run"],
    ] {
        ok(llmjobs(&f.url, &args));
    }
    writer.execute_batch("COMMIT").unwrap();
    assert!(!locks.exists(), "a read command started a job runtime");
}

/// A random (version 4) id, which no job has.
fn uuid_v4() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// Fails for good with `reason`.
#[llm_job]
async fn cli_refuse(reason: String) -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg(reason)))
}

/// A tmux server of this test's own, on its own socket: a real terminal, 80×24.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("this test needs tmux (apt-get install tmux; .ci/run installs it)")
    }

    fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", "watch"]))
    }

    /// The screen once it shows `text` (the view refreshes every 200 ms; a slow machine may
    /// take longer, so this waits up to a minute rather than asserting on time).
    fn until_shown(&self, text: &str) -> String {
        for _ in 0..600 {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the screen never showed {text:?}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_in_a_real_terminal_follows_a_changing_database() {
    let f = fixture().await;
    let tmux = Tmux {
        socket: format!("llmjobs-cli-test-{}", std::process::id()),
    };
    let command = format!(
        "{} --db '{}' watch --interval 200",
        env!("CARGO_BIN_EXE_llmjobs"),
        f.url
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "watch",
        &command,
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let screen = tmux.until_shown("llmjobs watch");
    assert!(
        screen.contains("jobs: 1 pending, 0 running, 1 failed"),
        "{screen}"
    );
    assert!(screen.contains("quota exhausted"), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");

    // The application goes on: a new failure shows up without a key pressed.
    let jobs = Jobs::open(&f.url).await.unwrap();
    let refused = jobs.spawn(cli_refuse("disk on fire".into())).await.unwrap();
    assert!(refused.wait().await.is_err());
    let screen = tmux.until_shown("disk on fire");
    assert!(screen.contains("2 failed"), "{screen}");

    // Keys: `s` twice lists the failed jobs; `q` quits and gives the terminal back.
    tmux.run(&["send-keys", "-t", "watch", "s"]);
    tmux.until_shown(" pending (1) ");
    tmux.run(&["send-keys", "-t", "watch", "s"]);
    tmux.until_shown(" failed (2) ");
    tmux.run(&["send-keys", "-t", "watch", "q"]);
    let mut ended = false;
    for _ in 0..600 {
        if !tmux.run(&["has-session", "-t", "watch"]).status.success() {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ended, "watch did not quit on q:\n{}", tmux.screen());
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_the_command_quietly() {
    let f = fixture().await;
    let jobs = Jobs::builder()
        .url(&f.url)
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    // More output than a pipe holds (64 KiB), so the command writes after the reader left.
    jobs.spawn_many((0..1000).map(|n| cli_echo(format!("text {n}"))))
        .await
        .unwrap();
    jobs.shutdown().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .args(["--db", &f.url, "list", "--limit", "2000"])
        .env_remove("LLMJOBS_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "",
        "no panic, no error: the reader chose to stop"
    );
}

/// One HTTP/1.1 request over loopback, the plain way: the status code and the body.
async fn http(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn request(method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: cli.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n{extra}\r\n{{}}"
    )
}

#[tokio::test]
async fn serve_shows_the_dashboard_cancels_and_retries_but_runs_nothing() {
    let f = fixture().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmjobs"))
        .args([
            "--db",
            &f.url,
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--allow-unauthenticated-changes",
        ])
        .env_remove("LLMJOBS_DATABASE_URL")
        .env_remove("LLMJOBS_HTTP_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();

    let (status, page) = http(&addr, &request("GET", "/", "")).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>llmjobs</title>"));
    let (status, list) = http(&addr, &request("GET", "/jobs", "")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&list)["jobs"].as_array().unwrap().len(), 3);
    let (status, done) = http(
        &addr,
        &request("GET", &format!("/dashboard/jobs/{}", f.done), ""),
    )
    .await;
    assert_eq!(status, 200);
    let done = json(&done);
    assert_eq!(done["args"]["text"], "hello world");
    assert_eq!(done["steps"][0]["name"], "draft");
    assert_eq!(done["usage"]["input_tokens"], 100);

    // It registers no job: a submission says so, and nothing is recorded.
    let (status, refusal) = http(&addr, &request("POST", "/jobs/cli_echo", "")).await;
    assert_eq!(status, 404);
    let refusal = json(&refusal);
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("no job named `cli_echo`"),
        "{refusal}"
    );
    assert_eq!(refusal["known"], serde_json::json!([]));

    // Cancel and retry work, from programs; a cross-site request is refused.
    let cancel = format!("/jobs/{}", f.pending);
    let evil = "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n";
    let (status, _) = http(&addr, &request("DELETE", &cancel, evil)).await;
    assert_eq!(status, 403);
    let (status, _) = http(&addr, &request("DELETE", &cancel, "")).await;
    assert_eq!(status, 200);
    let retry = format!("/jobs/{}/retry", f.failed);
    let (status, _) = http(&addr, &request("POST", &retry, "")).await;
    assert_eq!(status, 200);
    child.kill().unwrap();
    child.wait().unwrap();

    let db = llmjobs::Inspector::open(&f.url).await.unwrap();
    assert_eq!(
        db.status(f.pending).await.unwrap().state,
        llmjobs::JobState::Cancelled
    );
    let failed = db.status(f.failed).await.unwrap();
    assert_eq!(
        failed.state,
        llmjobs::JobState::Pending,
        "retried, and not run here"
    );
    assert_eq!(failed.earlier_runs.len(), 1);
}
