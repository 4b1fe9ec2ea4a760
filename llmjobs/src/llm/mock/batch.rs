//! The mock's batch APIs, on a fast clock: OpenAI's `/v1/files` and `/v1/batches`, and
//! Anthropic's `/v1/messages/batches`.
//!
//! A batch is over after a number of status polls or a short time ([`MockBatchClock`]). Its
//! requests are then answered the way the chat routes would answer them, scripted replies
//! included, so [`MockReply::status`](super::MockReply::status) scripted for one prompt makes
//! that request fail in the batch. Requests whose prompt contains a text given to
//! [`MockLlmServer::expire_batch_requests_matching`] are never answered: the batch expires.

mod files;
mod render;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::reply::{self, Prompt, Wire};
use super::{MockBody, MockLlmServer, MockRoute, State, full, lock};

/// Which batch API a mock batch was created through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MockBatchApi {
    /// OpenAI's `POST /v1/batches`.
    OpenAi,
    /// Anthropic's `POST /v1/messages/batches`.
    Anthropic,
}

/// When a mock batch is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockBatchClock {
    /// At the `n`th status poll (default: 2).
    Polls(u32),
    /// At the first status poll this long after it was created.
    Elapsed(Duration),
}

impl Default for MockBatchClock {
    fn default() -> Self {
        MockBatchClock::Polls(2)
    }
}

/// A batch the mock holds, as a test sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MockBatch {
    /// Its id.
    pub id: String,
    /// The API it was created through.
    pub api: MockBatchApi,
    /// The custom ids of its requests, in order.
    pub custom_ids: Vec<String>,
    /// How many times its status was asked for.
    pub polls: u32,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Whether it is over.
    pub ended: bool,
    /// The metadata it was created with (OpenAI).
    pub metadata: Value,
}

/// The batches and files of one mock server.
#[derive(Default)]
pub(super) struct Batches {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clock: MockBatchClock,
    expire: Vec<String>,
    files: files::Files,
    batches: Vec<Batch>,
    serial: u64,
}

/// One request of a batch.
struct Item {
    custom_id: String,
    body: Value,
}

/// What became of one request.
enum Outcome {
    /// The chat route's answer: its status and JSON body.
    Answered {
        status: u16,
        body: Value,
    },
    Expired,
    Cancelled,
}

struct Batch {
    id: String,
    api: MockBatchApi,
    items: Vec<Item>,
    polls: u32,
    created: Instant,
    created_at: u64,
    input_file_id: Option<String>,
    metadata: Value,
    cancel_requested: bool,
    /// Set once the batch is over.
    outcomes: Option<Vec<Outcome>>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

impl Batch {
    /// How far along the clock is, from 0 to 1.
    fn progress(&self, clock: MockBatchClock) -> f64 {
        let fraction = match clock {
            MockBatchClock::Polls(n) => f64::from(self.polls) / f64::from(n.max(1)),
            MockBatchClock::Elapsed(d) => {
                self.created.elapsed().as_secs_f64() / d.as_secs_f64().max(1e-9)
            }
        };
        fraction.min(1.0)
    }

    fn summary(&self) -> MockBatch {
        MockBatch {
            id: self.id.clone(),
            api: self.api,
            custom_ids: self.items.iter().map(|i| i.custom_id.clone()).collect(),
            polls: self.polls,
            cancel_requested: self.cancel_requested,
            ended: self.outcomes.is_some(),
            metadata: self.metadata.clone(),
        }
    }
}

impl MockLlmServer {
    /// Sets when batches are over (default: at their second status poll); it applies at the
    /// next poll of every batch that is not over yet.
    pub fn set_batch_clock(&self, clock: MockBatchClock) {
        lock(&self.state.batches.inner).clock = clock;
    }

    /// Requests whose prompt contains `needle` are not answered in the next batch that holds
    /// them: that batch expires, and they come back expired (a resubmitted batch answers them).
    pub fn expire_batch_requests_matching(&self, needle: impl Into<String>) {
        lock(&self.state.batches.inner).expire.push(needle.into());
    }

    /// Every batch created so far, oldest first.
    pub fn batches(&self) -> Vec<MockBatch> {
        let inner = lock(&self.state.batches.inner);
        inner.batches.iter().map(Batch::summary).collect()
    }
}

/// Whether `path` belongs to the batch APIs.
pub(super) fn serves(path: &str) -> bool {
    ["/v1/files", "/v1/batches", "/v1/messages/batches"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

pub(super) async fn handle(req: Request<Incoming>, state: &State) -> Response<MockBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "files"]) => files::upload(state, &content_type, &body),
        (&Method::GET, ["v1", "files"]) => files::list(state, &query),
        (&Method::GET, ["v1", "files", id]) => files::get(state, id),
        (&Method::GET, ["v1", "files", id, "content"]) => files::content(state, id),
        (&Method::POST, ["v1", "batches"]) => create_openai(state, &body),
        (&Method::GET, ["v1", "batches"]) => list_openai(state, &query),
        (&Method::GET, ["v1", "batches", id]) => poll(state, MockBatchApi::OpenAi, id, &host),
        (&Method::POST, ["v1", "batches", id, "cancel"]) => {
            cancel(state, MockBatchApi::OpenAi, id, &host)
        }
        (&Method::POST, ["v1", "messages", "batches"]) => create_anthropic(state, &body, &host),
        (&Method::GET, ["v1", "messages", "batches", id]) => {
            poll(state, MockBatchApi::Anthropic, id, &host)
        }
        (&Method::POST, ["v1", "messages", "batches", id, "cancel"]) => {
            cancel(state, MockBatchApi::Anthropic, id, &host)
        }
        (&Method::GET, ["v1", "messages", "batches", id, "results"]) => {
            results_anthropic(state, id)
        }
        _ => Err(Refusal::new(
            404,
            format!("the mock LLM server has no route {method} {path}"),
        )),
    };
    match result {
        Ok(Reply::Json(value)) => full(200, &[], "application/json", value.to_string()),
        Ok(Reply::Lines(text)) => full(200, &[], "application/binary", text),
        Err(refusal) => full(
            refusal.status,
            &[],
            "application/json",
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": refusal.message}})
                .to_string(),
        ),
    }
}

/// A successful answer of a batch route.
enum Reply {
    Json(Value),
    /// A JSONL file.
    Lines(String),
}

/// An error answer of a batch route.
struct Refusal {
    status: u16,
    message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

type Answer = Result<Reply, Refusal>;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_json(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(400, format!("the request body is not valid JSON: {e}")))
}

fn create_openai(state: &State, body: &[u8]) -> Answer {
    let body = parse_json(body)?;
    let file_id = body
        .get("input_file_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(400, "input_file_id is required"))?;
    if body.get("endpoint").and_then(Value::as_str) != Some("/v1/chat/completions") {
        return Err(Refusal::new(
            400,
            "the mock serves batches for the endpoint /v1/chat/completions only",
        ));
    }
    let mut inner = lock(&state.batches.inner);
    let text = inner
        .files
        .text(file_id)
        .ok_or_else(|| Refusal::new(404, format!("no file `{file_id}`")))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let line: Value = serde_json::from_str(line)
            .map_err(|e| Refusal::new(400, format!("line {} is not JSON: {e}", n + 1)))?;
        let custom_id = line.get("custom_id").and_then(Value::as_str);
        let (Some(custom_id), Some(body)) = (custom_id, line.get("body")) else {
            return Err(Refusal::new(
                400,
                format!("line {} needs custom_id and body", n + 1),
            ));
        };
        items.push(Item {
            custom_id: custom_id.to_string(),
            body: body.clone(),
        });
    }
    let id = inner.next_id("batch_mock");
    let batch = Batch {
        id,
        api: MockBatchApi::OpenAi,
        items,
        polls: 0,
        created: Instant::now(),
        created_at: unix_now(),
        input_file_id: Some(file_id.to_string()),
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        cancel_requested: false,
        outcomes: None,
        output_file_id: None,
        error_file_id: None,
    };
    let reply = render::openai(&batch, inner.clock, "validating");
    inner.batches.push(batch);
    Ok(Reply::Json(reply))
}

fn list_openai(state: &State, query: &str) -> Answer {
    let inner = lock(&state.batches.inner);
    let params = files::query_params(query);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20);
    let newest_first = inner
        .batches
        .iter()
        .rev()
        .filter(|b| b.api == MockBatchApi::OpenAi);
    let after = params.get("after");
    let page: Vec<&Batch> = match after {
        Some(after) => newest_first
            .skip_while(|b| &b.id != after)
            .skip(1)
            .collect(),
        None => newest_first.collect(),
    };
    let has_more = page.len() > limit;
    let data: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|b| render::openai(b, inner.clock, status_of(b)))
        .collect();
    Ok(Reply::Json(
        json!({"object": "list", "data": data, "has_more": has_more}),
    ))
}

fn create_anthropic(state: &State, body: &[u8], host: &str) -> Answer {
    let body = parse_json(body)?;
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| Refusal::new(400, "requests: field required"))?;
    let mut items = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        let custom_id = request.get("custom_id").and_then(Value::as_str);
        let (Some(custom_id), Some(params)) = (custom_id, request.get("params")) else {
            return Err(Refusal::new(
                400,
                format!("requests.{n} needs custom_id and params"),
            ));
        };
        items.push(Item {
            custom_id: custom_id.to_string(),
            body: params.clone(),
        });
    }
    let mut inner = lock(&state.batches.inner);
    let id = inner.next_id("msgbatch_mock");
    let batch = Batch {
        id,
        api: MockBatchApi::Anthropic,
        items,
        polls: 0,
        created: Instant::now(),
        created_at: unix_now(),
        input_file_id: None,
        metadata: Value::Null,
        cancel_requested: false,
        outcomes: None,
        output_file_id: None,
        error_file_id: None,
    };
    let reply = render::anthropic(&batch, inner.clock, host);
    inner.batches.push(batch);
    Ok(Reply::Json(reply))
}

/// A status poll: advances the batch's clock, and ends it when its time has come.
fn poll(state: &State, api: MockBatchApi, id: &str, host: &str) -> Answer {
    let mut inner = lock(&state.batches.inner);
    let clock = inner.clock;
    let expire = inner.expire.clone();
    let index = inner.find(api, id)?;
    let batch = &mut inner.batches[index];
    batch.polls += 1;
    if batch.outcomes.is_none() && (batch.cancel_requested || batch.progress(clock) >= 1.0) {
        let answered = if batch.cancel_requested {
            answered_so_far(batch, clock)
        } else {
            batch.items.len()
        };
        let (outcomes, used) = settle(state, batch, answered, &expire);
        batch.outcomes = Some(outcomes);
        inner.expire.retain(|needle| !used.contains(needle));
        let batch = &mut inner.batches[index];
        if api == MockBatchApi::OpenAi {
            let (output, errors) = render::openai_files(batch);
            let output_id = inner.files.add_output(output);
            let error_id = inner.files.add_output(errors);
            let batch = &mut inner.batches[index];
            batch.output_file_id = Some(output_id);
            batch.error_file_id = Some(error_id);
        }
    }
    let batch = &inner.batches[index];
    Ok(Reply::Json(match api {
        MockBatchApi::OpenAi => render::openai(batch, clock, status_of(batch)),
        MockBatchApi::Anthropic => render::anthropic(batch, clock, host),
    }))
}

fn cancel(state: &State, api: MockBatchApi, id: &str, host: &str) -> Answer {
    let mut inner = lock(&state.batches.inner);
    let clock = inner.clock;
    let index = inner.find(api, id)?;
    let batch = &mut inner.batches[index];
    if batch.outcomes.is_none() {
        batch.cancel_requested = true;
    }
    Ok(Reply::Json(match api {
        MockBatchApi::OpenAi => render::openai(batch, clock, status_of(batch)),
        MockBatchApi::Anthropic => render::anthropic(batch, clock, host),
    }))
}

fn results_anthropic(state: &State, id: &str) -> Answer {
    let inner = lock(&state.batches.inner);
    let index = inner.find(MockBatchApi::Anthropic, id)?;
    let batch = &inner.batches[index];
    if batch.outcomes.is_none() {
        return Err(Refusal::new(
            400,
            format!("batch `{id}` is still processing: no results yet"),
        ));
    }
    Ok(Reply::Lines(render::anthropic_results(batch)))
}

/// The OpenAI status of a batch.
fn status_of(batch: &Batch) -> &'static str {
    match &batch.outcomes {
        None if batch.cancel_requested => "cancelling",
        None => "in_progress",
        Some(_) if batch.cancel_requested => "cancelled",
        Some(outcomes) if outcomes.iter().any(|o| matches!(o, Outcome::Expired)) => "expired",
        Some(_) => "completed",
    }
}

/// How many requests the clock says are answered by now.
fn answered_so_far(batch: &Batch, clock: MockBatchClock) -> usize {
    let answered = (batch.items.len() as f64 * batch.progress(clock)).floor() as usize;
    answered.min(batch.items.len())
}

/// The outcome of every request: the first `answered` are answered as the chat routes would
/// answer them (or expire when their prompt matches a needle of `expire`); the rest are
/// cancelled. Also the needles that expired a request.
fn settle(
    state: &State,
    batch: &Batch,
    answered: usize,
    expire: &[String],
) -> (Vec<Outcome>, Vec<String>) {
    let route = match batch.api {
        MockBatchApi::OpenAi => MockRoute::OpenAiChat,
        MockBatchApi::Anthropic => MockRoute::AnthropicMessages,
    };
    let mut used = Vec::new();
    let outcomes = batch
        .items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            if n >= answered {
                return Outcome::Cancelled;
            }
            let prompt = Prompt::read(route, &item.body);
            if let Some(needle) = expire.iter().find(|needle| prompt.contains(needle)) {
                used.push(needle.clone());
                return Outcome::Expired;
            }
            let serial = state
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let reply = state.next_reply(&prompt);
            match reply::render(route, &prompt, &reply, serial) {
                Wire::Full { status, body, .. } => Outcome::Answered {
                    status,
                    body: serde_json::from_str(&body).unwrap_or_else(|_| json!(body)),
                },
                Wire::Stream { .. } | Wire::Drop => Outcome::Answered {
                    status: 500,
                    body: json!({"error": {"message": "the mock cannot send this scripted reply in a batch", "type": "api_error"}}),
                },
            }
        })
        .collect();
    (outcomes, used)
}

impl Inner {
    fn next_id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}_{}", self.serial)
    }

    fn find(&self, api: MockBatchApi, id: &str) -> Result<usize, Refusal> {
        self.batches
            .iter()
            .position(|b| b.api == api && b.id == id)
            .ok_or_else(|| Refusal::new(404, format!("no batch `{id}`")))
    }
}
