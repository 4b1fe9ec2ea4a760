//! A local mock LLM server for tests and demos: real HTTP on 127.0.0.1, never the internet.
//!
//! It serves OpenAI's `POST /v1/chat/completions` (also `/chat/completions`) and Anthropic's
//! `POST /v1/messages`, plain and streamed (server-sent events). By default it answers
//! deterministically from the prompt ([`MockReply::Default`]); replies can be scripted, for any
//! request or per model, to simulate rate limits, server errors, malformed bodies, truncated
//! streams and dropped connections. It records every request it receives.
//!
//! It also serves both batch APIs (OpenAI's `/v1/files` and `/v1/batches`, Anthropic's
//! `/v1/messages/batches`) on a fast clock ([`MockBatchClock`]), with per-request errors and
//! expiry, for `llm_batch`.
//!
//! ```
//! use llmjobs::llm::mock::{MockLlmServer, MockReply, MockRoute};
//! use llmjobs::llm::{ChatRequest, RetryPolicy};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mock = MockLlmServer::start().await?;
//! mock.push_reply(MockReply::server_error());
//! let client = mock
//!     .client_builder()
//!     .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
//!     .build()?;
//! let answer = client.call(&ChatRequest::new("openai/gpt-4o-mini").user("Hello")).await?;
//! assert_eq!(answer.text, "Mock answer to: Hello");
//! assert_eq!(mock.request_count_for(MockRoute::OpenAiChat), 2); // the 500, then the answer
//! # Ok(())
//! # }
//! ```

mod batch;
mod limits;
mod reply;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{LlmClientBuilder, ProviderConfig};
pub use batch::{MockBatch, MockBatchApi, MockBatchClock};
pub use limits::MockRateLimit;
pub use reply::MockReply;
use reply::{Prompt, Wire};

/// Which API a request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MockRoute {
    /// `POST /v1/chat/completions` (or `/chat/completions`).
    OpenAiChat,
    /// `POST /v1/messages`.
    AnthropicMessages,
}

/// A request the mock received.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// The API it was sent to.
    pub route: MockRoute,
    /// The `model` field of the body.
    pub model: String,
    /// Whether it asked for a stream.
    pub stream: bool,
    /// The JSON body.
    pub body: Value,
    /// The request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// When the mock received it.
    pub received_at: Instant,
    /// Whether the mock's rate limit ([`MockLlmServer::set_rate_limit`]) refused it with a 429.
    pub rate_limited: bool,
}

impl ReceivedRequest {
    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Replies scripted for the requests to one model whose prompt contains a text.
struct PromptScript {
    model: String,
    needle: String,
    queue: VecDeque<MockReply>,
    standing: Option<MockReply>,
}

#[derive(Default)]
struct State {
    delay: Mutex<Duration>,
    prompt_replies: Mutex<Vec<PromptScript>>,
    replies: Mutex<VecDeque<MockReply>>,
    model_replies: Mutex<HashMap<String, VecDeque<MockReply>>>,
    model_defaults: Mutex<HashMap<String, MockReply>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    limits: Mutex<limits::Limits>,
    serial: AtomicU64,
    batches: batch::Batches,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The next scripted reply for a request: the first matching prompt script's queue, then
    /// its standing reply; then the model's queue, then its standing reply, then the shared
    /// queue, then the default.
    fn next_reply(&self, prompt: &Prompt) -> MockReply {
        let model = prompt.model.as_str();
        for script in lock(&self.prompt_replies).iter_mut() {
            if script.model == model
                && prompt.contains(&script.needle)
                && let Some(reply) = script.queue.pop_front().or_else(|| script.standing.clone())
            {
                return reply;
            }
        }
        if let Some(reply) = lock(&self.model_replies)
            .get_mut(model)
            .and_then(VecDeque::pop_front)
        {
            return reply;
        }
        if let Some(reply) = lock(&self.model_defaults).get(model) {
            return reply.clone();
        }
        lock(&self.replies)
            .pop_front()
            .unwrap_or(MockReply::Default)
    }
}

/// The mock server. Stops when dropped.
pub struct MockLlmServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockLlmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlmServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish()
    }
}

impl Drop for MockLlmServer {
    fn drop(&mut self) {
        // Dropping the accept loop's task also drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl MockLlmServer {
    /// Starts a server on `127.0.0.1` with a free port.
    pub async fn start() -> io::Result<MockLlmServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(MockLlmServer { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`: the Anthropic base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1`: the OpenAI-compatible base URL.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// A client builder whose `openai`, `anthropic`, `ollama` and `max` providers all point at
    /// this server (with placeholder keys).
    pub fn client_builder(&self) -> LlmClientBuilder {
        Self::client_builder_for(&self.base_url())
    }

    /// Like [`MockLlmServer::client_builder`], for a mock server known only by its
    /// [`base_url`](MockLlmServer::base_url) (one started by another process).
    pub fn client_builder_for(base_url: &str) -> LlmClientBuilder {
        let base_url = base_url.trim_end_matches('/');
        let openai = format!("{base_url}/v1");
        LlmClientBuilder::new()
            .base_url("openai", openai.clone())
            .api_key("openai", "mock-openai-key")
            .base_url("anthropic", base_url)
            .api_key("anthropic", "mock-anthropic-key")
            .base_url("ollama", openai.clone())
            .provider(ProviderConfig::openai_compatible("max", openai))
    }

    /// Delays every response by `delay` (on top of any [`MockReply::Delayed`]).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Queues a reply for the next request that has no model-specific reply.
    pub fn push_reply(&self, reply: MockReply) {
        lock(&self.state.replies).push_back(reply);
    }

    /// Queues a reply for the next request to `model` (the name as sent, without a stripped
    /// routing prefix).
    pub fn push_reply_for(&self, model: impl Into<String>, reply: MockReply) {
        lock(&self.state.model_replies)
            .entry(model.into())
            .or_default()
            .push_back(reply);
    }

    /// Answers every request to `model` with `reply` once its queue is empty.
    pub fn always_reply_for(&self, model: impl Into<String>, reply: MockReply) {
        lock(&self.state.model_defaults).insert(model.into(), reply);
    }

    /// Queues a reply for the next request to `model` (as sent) whose prompt (system prompt
    /// and messages) contains `needle`. This scripts one call among many to the same model;
    /// later answers of the same call (feedback retries) still match, since the conversation
    /// keeps the original prompt.
    pub fn push_reply_matching(
        &self,
        model: impl Into<String>,
        needle: impl Into<String>,
        reply: MockReply,
    ) {
        self.script_matching(model.into(), needle.into(), |s| s.queue.push_back(reply));
    }

    /// Answers every request to `model` whose prompt contains `needle` with `reply`, once its
    /// queue ([`MockLlmServer::push_reply_matching`]) is empty.
    pub fn always_reply_matching(
        &self,
        model: impl Into<String>,
        needle: impl Into<String>,
        reply: MockReply,
    ) {
        self.script_matching(model.into(), needle.into(), |s| s.standing = Some(reply));
    }

    fn script_matching(&self, model: String, needle: String, edit: impl FnOnce(&mut PromptScript)) {
        let mut scripts = lock(&self.state.prompt_replies);
        let index = match scripts
            .iter()
            .position(|s| s.model == model && s.needle == needle)
        {
            Some(index) => index,
            None => {
                scripts.push(PromptScript {
                    model,
                    needle,
                    queue: VecDeque::new(),
                    standing: None,
                });
                scripts.len() - 1
            }
        };
        edit(&mut scripts[index]);
    }

    /// Enforces `limit` on the requests to `model` (the name as sent), as a provider would:
    /// past it, requests are answered 429 with `Retry-After` and reset headers (see
    /// [`MockRateLimit`]). The limit is checked after the request's reply is chosen, so a
    /// refused request uses up a scripted reply meant for it.
    pub fn set_rate_limit(&self, model: impl Into<String>, limit: MockRateLimit) {
        lock(&self.state.limits).set(model.into(), limit);
    }

    /// How many requests the rate limits refused with a 429.
    pub fn rate_limited_count(&self) -> u64 {
        lock(&self.state.limits).refused
    }

    /// How many requests arrived (on the two API routes).
    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// How many requests arrived on `route`.
    pub fn request_count_for(&self, route: MockRoute) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "mock LLM server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            // Errors here are clients going away and deliberate drops: nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Why the mock closes a connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("mock LLM server: connection dropped on purpose")]
struct Dropped;

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<MockBody>, Dropped> {
    if batch::serves(req.uri().path()) {
        return Ok(batch::handle(req, &state).await);
    }
    let route = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => MockRoute::OpenAiChat,
        (&Method::POST, "/v1/messages") => MockRoute::AnthropicMessages,
        (_, path) => {
            let message = format!("the mock LLM server has no route {} {path}", req.method());
            return Ok(full(
                404,
                &[],
                "application/json",
                serde_json::json!({"error": {"message": message}}).to_string(),
            ));
        }
    };
    let received_at = Instant::now();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Err(Dropped);
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("the request body is not valid JSON: {e}");
            return Ok(full(
                400,
                &[],
                "application/json",
                serde_json::json!({"error": {"message": message}}).to_string(),
            ));
        }
    };
    let prompt = Prompt::read(route, &body);
    let reply = state.next_reply(&prompt);
    let refusal = lock(&state.limits).admit(&prompt, &reply);
    lock(&state.requests).push(ReceivedRequest {
        route,
        model: prompt.model.clone(),
        stream: prompt.stream,
        body,
        headers,
        received_at,
        rate_limited: refusal.is_some(),
    });
    // A provider refuses at once; only answers take the configured latency.
    let mut delay = match refusal {
        Some(_) => Duration::ZERO,
        None => *lock(&state.delay),
    };
    let reply = refusal.unwrap_or(reply);
    let mut inner = &reply;
    while let MockReply::Delayed(d, next) = inner {
        delay += *d;
        inner = next;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let serial = state.serial.fetch_add(1, Ordering::Relaxed) + 1;
    match reply::render(route, &prompt, inner, serial) {
        Wire::Full {
            status,
            headers,
            content_type,
            body,
        } => Ok(full(status, &headers, content_type, body)),
        Wire::Stream { chunks, abort } => Ok(stream(chunks, abort)),
        Wire::Drop => Err(Dropped),
    }
}

fn full(
    status: u16,
    headers: &[(String, String)],
    content_type: &'static str,
    body: String,
) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(Some(Bytes::from(body))));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// An event stream fed chunk by chunk from a task; `abort` ends it with an error, which makes
/// hyper cut the connection mid-body.
fn stream(chunks: Vec<String>, abort: bool) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if abort {
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock reset",
                )))
                .await;
        }
    });
    let mut response = Response::new(MockBody::Channel(rx));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// A response body: all at once, or streamed from a channel.
enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut *self {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            MockBody::Full(Some(bytes)) => hyper::body::SizeHint::with_exact(bytes.len() as u64),
            MockBody::Full(None) => hyper::body::SizeHint::with_exact(0),
            MockBody::Channel(_) => hyper::body::SizeHint::default(),
        }
    }
}
