//! Provider batch jobs (`llm_batch`) against the mock server's OpenAI and Anthropic batch APIs:
//! results by custom id, batch pricing, per-request errors, resubmission, restarts that resume
//! polling without resubmitting, cancellation, and the usage ledger and budgets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmjobs::llm::mock::{MockBatchApi, MockBatchClock, MockLlmServer, MockReply};
use llmjobs::llm::{
    BatchItemErrorKind, BatchOptions, BatchOutput, BatchRequest, ChatRequest, LlmClient, Price,
    llm_batch_with,
};
use llmjobs::{Budget, Error, JobFilter, JobState, Jobs, Outcome, UsageFilter, UsageKey};
use llmjobs_testkit::{TempDb, WorkerProcess};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");
const OPENAI: &str = "openai/gpt-4o-mini";
const ANTHROPIC: &str = "anthropic/claude-haiku-4-5";

fn client(mock: &MockLlmServer) -> LlmClient {
    mock.client_builder()
        .price("openai/*", Price::per_million_tokens(1.0, 4.0))
        .price("anthropic/*", Price::per_million_tokens(2.0, 8.0))
        .build()
        .unwrap()
}

async fn jobs_with(mock: &MockLlmServer, db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .llm(client(mock))
        .shutdown_grace(Duration::from_millis(100))
        .open()
        .await
        .unwrap()
}

fn requests(model: &str, prompts: &[&str]) -> Vec<BatchRequest> {
    prompts
        .iter()
        .enumerate()
        .map(|(n, prompt)| {
            BatchRequest::new(format!("req-{n}"), ChatRequest::new(model).user(*prompt))
        })
        .collect()
}

fn fast() -> BatchOptions {
    BatchOptions::new().poll_interval(Duration::from_millis(20), Duration::from_millis(40))
}

/// Waits for `condition`, checking every 20 ms, for at most 30 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a three-request batch on `model` and checks every answer, by custom id.
async fn answers_every_request(model: &str, api: MockBatchApi) -> BatchOutput {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_batch_clock(MockBatchClock::Polls(3));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let call = llm_batch_with(requests(model, &["alpha", "beta", "gamma"]), fast());
    let output = jobs.run(call).await.unwrap();
    assert_eq!(output.results.len(), 3);
    assert_eq!((output.succeeded, output.failed), (3, 0));
    for (id, prompt) in [("req-0", "alpha"), ("req-1", "beta"), ("req-2", "gamma")] {
        let answer = output
            .answer(id)
            .unwrap_or_else(|| panic!("{id}: {:?}", output.error(id)));
        assert_eq!(answer.text, format!("Mock answer to: {prompt}"));
    }
    let batches = mock.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].api, api);
    assert_eq!(batches[0].custom_ids, ["req-0", "req-1", "req-2"]);
    assert_eq!(output.batch_ids, [batches[0].id.clone()]);
    assert!(batches[0].polls >= 3);
    jobs.shutdown().await;
    output
}

#[tokio::test]
async fn an_openai_batch_answers_every_request_by_custom_id() {
    answers_every_request(OPENAI, MockBatchApi::OpenAi).await;
}

#[tokio::test]
async fn an_anthropic_batch_answers_every_request_by_custom_id() {
    answers_every_request(ANTHROPIC, MockBatchApi::Anthropic).await;
}

#[tokio::test]
async fn answers_cost_half_the_list_price() {
    for (model, api, price) in [
        (
            OPENAI,
            MockBatchApi::OpenAi,
            Price::per_million_tokens(1.0, 4.0),
        ),
        (
            ANTHROPIC,
            MockBatchApi::Anthropic,
            Price::per_million_tokens(2.0, 8.0),
        ),
    ] {
        let output = answers_every_request(model, api).await;
        let mut expected = 0.0;
        for answer in output.results.values().map(|r| r.as_ref().unwrap()) {
            let list = price.cost(&answer.usage);
            assert!((answer.cost.unwrap() - list / 2.0).abs() < 1e-12, "{model}");
            expected += list / 2.0;
        }
        assert!(output.usage.input_tokens > 0 && output.usage.output_tokens > 0);
        assert!(
            (output.cost_usd.unwrap() - expected).abs() < 1e-12,
            "{model}"
        );
    }
}

#[tokio::test]
async fn run_with_timeout_gives_the_handle_at_once_and_progress_counts_requests() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_batch_clock(MockBatchClock::Polls(4));
    let db = TempDb::new();
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = messages.clone();
    let jobs = Jobs::builder()
        .url(db.url())
        .llm(client(&mock))
        .on_progress(move |event| {
            if let Some(message) = &event.progress.message {
                seen.lock().unwrap().push(message.clone());
            }
        })
        .open()
        .await
        .unwrap();
    let prompts: Vec<String> = (0..8).map(|n| format!("question {n}")).collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let call = llm_batch_with(requests(OPENAI, &prompts), fast());
    // An hour: a batch goes to the background at once instead of being waited for.
    let outcome = jobs
        .run_with_timeout(call, Duration::from_secs(3600))
        .await
        .unwrap();
    let Outcome::Pending(handle) = outcome else {
        panic!("a batch is long-running: run_with_timeout must give its handle");
    };
    let output = handle.wait().await.unwrap();
    assert_eq!(output.succeeded, 8);
    let messages = messages.lock().unwrap().clone();
    let batch = &mock.batches()[0].id;
    assert!(
        messages.iter().any(
            |m| m.starts_with(&format!("submitted batch {batch}, in_progress: "))
                && m.ends_with("0 failed, of 8")
        ),
        "{messages:#?}"
    );
    assert_eq!(
        messages.last().unwrap(),
        "batch over: 8 done, 0 failed, of 8"
    );
    let status = handle.status().await.unwrap();
    let progress = status.progress.unwrap();
    assert_eq!(progress["message"], "batch over: 8 done, 0 failed, of 8");
    assert_eq!(progress["fraction"], 1.0);
    jobs.shutdown().await;
}

#[tokio::test]
async fn per_request_errors_are_mapped_to_their_custom_ids() {
    for (model, wire_model) in [(OPENAI, "gpt-4o-mini"), (ANTHROPIC, "claude-haiku-4-5")] {
        let mock = MockLlmServer::start().await.unwrap();
        mock.always_reply_matching(
            wire_model,
            "broken",
            MockReply::status(400, "this request is malformed"),
        );
        mock.always_reply_matching(wire_model, "unlucky", MockReply::server_error());
        let db = TempDb::new();
        let jobs = jobs_with(&mock, &db).await;
        let call = llm_batch_with(requests(model, &["fine", "broken", "unlucky"]), fast());
        let output = jobs.run(call).await.unwrap();
        assert_eq!((output.succeeded, output.failed), (1, 2), "{model}");
        assert_eq!(output.answer("req-0").unwrap().text, "Mock answer to: fine");
        let broken = output.error("req-1").unwrap();
        assert_eq!(broken.kind, BatchItemErrorKind::Failed, "{model}");
        assert_eq!(broken.status, Some(400), "{model}");
        assert!(
            broken.message.contains("this request is malformed"),
            "{model}: {broken}"
        );
        assert!(!broken.is_retryable());
        let unlucky = output.error("req-2").unwrap();
        assert_eq!(unlucky.status, Some(500), "{model}");
        assert!(unlucky.is_retryable());
        jobs.shutdown().await;
    }
}

#[tokio::test]
async fn expired_requests_end_as_errors_unless_resubmission_is_asked_for() {
    for (model, resubmit) in [
        (OPENAI, false),
        (OPENAI, true),
        (ANTHROPIC, false),
        (ANTHROPIC, true),
    ] {
        let mock = MockLlmServer::start().await.unwrap();
        mock.expire_batch_requests_matching("slow");
        let db = TempDb::new();
        let jobs = jobs_with(&mock, &db).await;
        let options = if resubmit {
            fast().resubmit_expired(1)
        } else {
            fast()
        };
        let call = llm_batch_with(
            requests(model, &["quick", "slow one", "quick too"]),
            options,
        );
        let output = jobs.run(call).await.unwrap();
        let batches = mock.batches();
        if resubmit {
            assert_eq!(output.succeeded, 3, "{model}");
            assert_eq!(
                output.answer("req-1").unwrap().text,
                "Mock answer to: slow one"
            );
            assert_eq!(batches.len(), 2, "{model}");
            assert_eq!(
                batches[1].custom_ids,
                ["req-1"],
                "only the expired request is resubmitted"
            );
            assert_eq!(
                output.batch_ids,
                [batches[0].id.clone(), batches[1].id.clone()]
            );
        } else {
            assert_eq!((output.succeeded, output.failed), (2, 1), "{model}");
            assert_eq!(
                output.error("req-1").unwrap().kind,
                BatchItemErrorKind::Expired
            );
            assert_eq!(batches.len(), 1, "{model}");
        }
        jobs.shutdown().await;
    }
}

#[tokio::test]
async fn failed_requests_are_resubmitted_only_when_retryable_and_asked_for() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_matching("gpt-4o-mini", "flaky", MockReply::server_error());
    mock.always_reply_matching("gpt-4o-mini", "broken", MockReply::status(400, "malformed"));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let options = fast().resubmit_expired(2).resubmit_failed(true);
    let call = llm_batch_with(requests(OPENAI, &["fine", "flaky", "broken"]), options);
    let output = jobs.run(call).await.unwrap();
    assert_eq!(
        output.answer("req-1").unwrap().text,
        "Mock answer to: flaky"
    );
    assert_eq!(output.error("req-2").unwrap().status, Some(400));
    let batches = mock.batches();
    assert_eq!(
        batches.len(),
        2,
        "the 400 is not resubmitted, so no third round"
    );
    assert_eq!(batches[1].custom_ids, ["req-1"]);
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_restarted_runtime_resumes_polling_the_same_batch() {
    for model in [OPENAI, ANTHROPIC] {
        let mock = MockLlmServer::start().await.unwrap();
        mock.set_batch_clock(MockBatchClock::Polls(1_000));
        let db = TempDb::new();
        let first = jobs_with(&mock, &db).await;
        let handle = first
            .spawn(llm_batch_with(requests(model, &["one", "two"]), fast()))
            .await
            .unwrap();
        let id = handle.id();
        eventually("the batch to be polled", || {
            mock.batches().first().is_some_and(|b| b.polls >= 2)
        })
        .await;
        first.shutdown().await;
        let polls_before = mock.batches()[0].polls;
        mock.set_batch_clock(MockBatchClock::Polls(1));

        let second = jobs_with(&mock, &db).await;
        let output: BatchOutput = second.handle(id).wait().await.unwrap();
        assert_eq!(output.succeeded, 2, "{model}");
        assert_eq!(
            mock.batches().len(),
            1,
            "{model}: the batch was submitted once"
        );
        assert!(
            mock.batches()[0].polls > polls_before,
            "{model}: the second runtime polled it"
        );
        second.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_resumed_without_submitting_the_batch_again() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_batch_clock(MockBatchClock::Polls(1_000));
    let db = TempDb::new();
    let (db_path, url) = (db.path(), mock.base_url());
    let first = WorkerProcess::start(WORKER, &["batch", db_path.to_str().unwrap(), &url, "50"]);
    eventually("the batch to be polled", || {
        mock.batches().first().is_some_and(|b| b.polls >= 2)
    })
    .await;
    first.kill();
    let polls_before = mock.batches()[0].polls;
    mock.set_batch_clock(MockBatchClock::Polls(polls_before + 3));

    let second = WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap(), &url]);
    let status = tokio::task::spawn_blocking(move || second.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.success());
    let batches = mock.batches();
    assert_eq!(batches.len(), 1, "the batch was submitted once");
    assert_eq!(batches[0].custom_ids.len(), 50);

    let jobs = db.watcher().await;
    let all = jobs.list(JobFilter::new().limit(10)).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, JobState::Completed);
    let output: BatchOutput = jobs.handle(all[0].id).wait().await.unwrap();
    assert_eq!(output.succeeded, 50);
    assert_eq!(output.batch_ids, [batches[0].id.clone()]);
    jobs.shutdown().await;
}

#[tokio::test]
async fn cancelling_the_job_cancels_the_provider_batch() {
    for (model, api) in [
        (OPENAI, MockBatchApi::OpenAi),
        (ANTHROPIC, MockBatchApi::Anthropic),
    ] {
        let mock = MockLlmServer::start().await.unwrap();
        mock.set_batch_clock(MockBatchClock::Polls(1_000));
        let db = TempDb::new();
        let jobs = jobs_with(&mock, &db).await;
        let handle = jobs
            .spawn(llm_batch_with(requests(model, &["one", "two"]), fast()))
            .await
            .unwrap();
        eventually("the batch to be polled", || {
            mock.batches().first().is_some_and(|b| b.polls >= 1)
        })
        .await;
        handle.cancel().await.unwrap();
        eventually("the provider batch to be cancelled", || {
            mock.batches()[0].cancel_requested
        })
        .await;
        let batch = &mock.batches()[0];
        assert_eq!(batch.api, api);
        assert!(matches!(
            handle.wait().await,
            Err(Error::JobCancelled { .. })
        ));
        jobs.shutdown().await;
    }
}

#[tokio::test]
async fn a_shutdown_does_not_cancel_the_provider_batch() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_batch_clock(MockBatchClock::Polls(1_000));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    jobs.spawn(llm_batch_with(requests(OPENAI, &["one"]), fast()))
        .await
        .unwrap();
    eventually("the batch to be polled", || {
        mock.batches().first().is_some_and(|b| b.polls >= 1)
    })
    .await;
    jobs.shutdown().await;
    // The job is handed back; its batch must stay alive for the next process to poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!mock.batches()[0].cancel_requested);
}

#[tokio::test]
async fn an_input_file_is_uploaded_once_and_its_batch_is_found_by_it() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = client(&mock);
    let batch = requests(OPENAI, &["one", "two"]);
    let file = client
        .batch_upload(&batch, "llmjobs-test-1")
        .await
        .unwrap()
        .unwrap();
    // An attempt that crashed before journaling the file id uploads again: the same file.
    let again = client
        .batch_upload(&batch, "llmjobs-test-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file, again);
    assert_eq!(client.batch_find("openai", &file).await.unwrap(), None);
    let created = client
        .batch_create(&batch, Some(&file), "llmjobs-test-1")
        .await
        .unwrap();
    // An attempt that crashed before journaling the batch id finds the batch by its file.
    let found = client.batch_find("openai", &file).await.unwrap().unwrap();
    assert_eq!(found.id, created.id);
    assert_eq!(mock.batches().len(), 1);
    assert_eq!(
        mock.batches()[0].metadata["llmjobs_marker"],
        "llmjobs-test-1"
    );
}

#[tokio::test]
async fn a_batch_that_cannot_be_sent_fails_at_once_naming_the_problem() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let cases = [
        (Vec::new(), "at least one request"),
        (
            vec![
                BatchRequest::new("a", ChatRequest::new(OPENAI).user("x")),
                BatchRequest::new("b", ChatRequest::new(ANTHROPIC).user("y")),
            ],
            "a batch goes to one provider",
        ),
        (
            vec![
                BatchRequest::new("same", ChatRequest::new(OPENAI).user("x")),
                BatchRequest::new("same", ChatRequest::new(OPENAI).user("y")),
            ],
            "the custom id `same` is used twice",
        ),
        (
            vec![BatchRequest::new(
                "not ok!",
                ChatRequest::new(ANTHROPIC).user("x"),
            )],
            "`not ok!` is not",
        ),
    ];
    for (batch, expected) in cases {
        let err = jobs.run(llm_batch_with(batch, fast())).await.unwrap_err();
        let Error::JobFailed { error, .. } = &err else {
            panic!("{err}");
        };
        assert!(error.contains(expected), "{error}");
    }
    assert!(mock.batches().is_empty());
    assert_eq!(mock.request_count(), 0);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_restart_resumes_the_batch_without_resubmitting() {
    let Some(url) = llmjobs_testkit::pg::pg_url().await else {
        return;
    };
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_batch_clock(MockBatchClock::Polls(1_000));
    let open = || async {
        Jobs::builder()
            .url(url.as_str())
            .llm(client(&mock))
            .shutdown_grace(Duration::from_millis(100))
            .open()
            .await
            .unwrap()
    };
    let first = open().await;
    let handle = first
        .spawn(llm_batch_with(requests(ANTHROPIC, &["one", "two"]), fast()))
        .await
        .unwrap();
    eventually("the batch to be polled", || {
        mock.batches().first().is_some_and(|b| b.polls >= 2)
    })
    .await;
    first.shutdown().await;
    mock.set_batch_clock(MockBatchClock::Polls(1));

    let second = open().await;
    let output: BatchOutput = second.handle(handle.id()).wait().await.unwrap();
    assert_eq!(output.succeeded, 2);
    assert_eq!(output.answer("req-1").unwrap().text, "Mock answer to: two");
    assert_eq!(mock.batches().len(), 1, "the batch was submitted once");
    second.shutdown().await;
}

#[tokio::test]
async fn every_request_of_a_batch_is_a_ledger_row_at_the_batch_price() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_matching(
        "gpt-4o-mini",
        "broken",
        MockReply::status(400, "this request is malformed"),
    );
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let call = llm_batch_with(requests(OPENAI, &["fine", "broken", "fine too"]), fast());
    let handle = jobs.spawn(call).await.unwrap();
    let output = handle.wait().await.unwrap();
    let groups = jobs
        .usage(UsageFilter::new().job(handle.id()).by(UsageKey::Model))
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let usage = &groups[0];
    assert_eq!(usage.model.as_deref(), Some(OPENAI));
    assert_eq!((usage.calls, usage.errors), (3, 1), "{usage:?}");
    assert_eq!(usage.input_tokens, output.usage.input_tokens);
    assert_eq!(usage.output_tokens, output.usage.output_tokens);
    assert!((usage.cost_usd - output.cost_usd.unwrap()).abs() < 1e-12);
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_could_exceed_its_budget_is_not_submitted() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let capped = |prompts: &[&str]| -> Vec<BatchRequest> {
        requests(OPENAI, prompts)
            .into_iter()
            .map(|mut r| {
                r.request = r.request.max_tokens(100);
                r
            })
            .collect()
    };
    // Three requests of up to 100 answer tokens each (plus their prompts) cannot fit in 250.
    let refused = llm_batch_with(capped(&["a", "b", "c"]), fast()).budget(Budget::tokens(250));
    let handle = jobs.spawn(refused).await.unwrap();
    let error = handle.wait().await.unwrap_err().to_string();
    assert!(error.contains("the job's budget of 250 tokens"), "{error}");
    assert!(mock.batches().is_empty(), "the batch was never submitted");
    let status = handle.status().await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Failed, 1));

    // One that fits is submitted, and its answers count against the job's budget.
    let fits = llm_batch_with(capped(&["a", "b"]), fast()).budget(Budget::tokens(1_000));
    let handle = jobs.spawn(fits).await.unwrap();
    let output = handle.wait().await.unwrap();
    assert_eq!(output.succeeded, 2);
    let usage = jobs
        .usage(UsageFilter::new().job(handle.id()))
        .await
        .unwrap();
    assert_eq!(usage[0].calls, 2, "{usage:?}");
    jobs.shutdown().await;
}
