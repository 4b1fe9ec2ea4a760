//! The HTTP job API (feature `http`): submit jobs by name with JSON arguments, wait for them
//! with a timeout and get a job id to poll past it, list, cancel, retry and follow them, from
//! any language.
//!
//! Mount [`router`] in an axum application, or run it alone with [`Jobs::serve`] or
//! [`HttpApi::serve`]:
//!
//! ```no_run
//! # async fn demo(jobs: llmjobs::Jobs) -> llmjobs::Result<()> {
//! use llmjobs::http::HttpApi;
//!
//! // In an axum application of your own, which authenticates requests itself:
//! let api = HttpApi::new(jobs.clone()).allow_unauthenticated_changes().router();
//! let app = axum::Router::new().nest("/api", api);
//! // Or alone, on loopback, with the token from LLMJOBS_HTTP_TOKEN:
//! jobs.serve("127.0.0.1:8787").await?;
//! # Ok(())
//! # }
//! ```
//!
//! | Route | What it does |
//! |---|---|
//! | `POST /jobs/{name}?wait=30s` | spawns job `name` with the JSON body as its arguments; `200` with the job and its result if it ends within the wait, else `202` with the job and a `Location` to poll (the same attempt keeps running). Without `wait`, `202` at once. `Idempotency-Key` header: the call's idempotency key. |
//! | `GET /jobs/{id}` | the job's status, with its result once completed |
//! | `GET /jobs/{id}/wait?timeout=30s` | waits for the job (without `timeout`, up to [`HttpApi::max_wait`]): `200` once it has ended, `202` if it is still running at the timeout |
//! | `GET /jobs?state=&name=&cursor=&limit=` | jobs, newest first, a page at a time (`next_cursor`) |
//! | `DELETE /jobs/{id}` | cancels the job |
//! | `POST /jobs/{id}/retry` | puts a failed or cancelled job back to pending |
//! | `GET /jobs/{id}/events` | Server-Sent Events: the job's status, each progress report, then the job as it ended; numbered, resumable with `Last-Event-ID` |
//! | `GET /openapi.json` | this API as an OpenAPI 3.1 document |
//! | `POST /v1/chat/completions` | (feature `llm`) an OpenAI-compatible endpoint whose calls are durable `llm_call` jobs: the completion if it arrives within `X-Llmjobs-Wait` (30 s by default), streaming included; else `202` with the job to poll at `/jobs/{id}`. A long-running model (`max/*`) answers `202` at once. |
//!
//! [`served_routes`] lists them; the router is built from that list.
//!
//! A job that ended is shown the same way whether it completed, failed or was cancelled: `200`,
//! its `state`, and its `result` or `error`. A wait never changes the job.
//!
//! Errors are JSON, `{"error": "..."}`, with the status code that fits: `404` for an unknown
//! job id or name (naming the known names), `422` for arguments that do not deserialize (with
//! `"path"`, the field that failed), `413` for a body over the limit, `409` for a conflict
//! (an idempotency key held by other work, retrying a job that has not failed), `401` without
//! the token, `503` past the limit of open event streams. `/v1/chat/completions` answers in
//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`.
//!
//! **Security.**
//! - It listens on loopback ([`DEFAULT_ADDR`]) unless told otherwise.
//! - The mutating routes (submit, cancel, retry, chat completions) need `Authorization: Bearer
//!   <token>` with the token of [`HttpApi::token`] or `LLMJOBS_HTTP_TOKEN`. Without a token they
//!   answer `401`, saying how to set one, unless [`HttpApi::allow_unauthenticated_changes`]
//!   opens them. Served on an address other than loopback, every route needs the token, and
//!   serving refuses to start without one.
//! - Results and progress reports are shown with secret-named fields (`api_key`, `password`,
//!   `token`, … at any depth: [`DEFAULT_REDACTED_FIELDS`], [`HttpApi::redact_fields`]) replaced
//!   by `"[redacted]"`.
//! - Request bodies are bounded ([`HttpApi::body_limit`], 1 MiB by default), and so are waits
//!   ([`HttpApi::max_wait`], 5 minutes), open event streams ([`HttpApi::max_event_streams`],
//!   64) and their idle time ([`HttpApi::event_stream_idle`], 5 minutes).
//!
//! **Cross-site requests.** A browser's request to a mutating route is refused with `403`
//! unless it comes from the API's own origin (`Sec-Fetch-Site: same-origin`, or an `Origin`
//! equal to the `Host`) and carries the `X-Llmjobs-Request` header, which no cross-site form
//! can send: a page on another site cannot submit, cancel or retry jobs through a visitor's
//! browser. Requests without `Origin` or `Sec-Fetch-Site` (curl, SDKs, other servers) are not
//! concerned.
//!
//! ## The dashboard
//!
//! `/` serves a web page over the same routes (unless [`HttpApi::no_dashboard`]): the jobs, filtered
//! by state and name or found by id, updated live; counts by state and a chart of the last
//! hour's completions and failures; a page per job with its arguments, result or error, its
//! attempts and earlier runs, its progress and stage, its step journal, tokens and cost; and
//! buttons to cancel and retry, each confirmed first. The page is plain HTML, CSS and
//! JavaScript compiled into the binary: it fetches nothing from elsewhere. With a token in
//! force it asks for it once and keeps it for the browser tab (`sessionStorage`). It reads
//! arguments, results, journals and the chart through an [`Inspector`] of the jobs' database
//! ([`Jobs::inspector`], opened at the first page load; [`HttpApi::dashboard`] gives one of
//! your own). An in-memory SQLite database cannot be opened twice: there, the dashboard's data
//! routes answer with the error that says so.
//!
//! ```no_run
//! # async fn demo(jobs: llmjobs::Jobs) -> llmjobs::Result<()> {
//! use llmjobs::http::HttpApi;
//! HttpApi::new(jobs).serve().await?; // the API, and the dashboard at http://127.0.0.1:8787/
//! # Ok(())
//! # }
//! ```
//!
//! | Dashboard route | What it is |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /dashboard/app.js`, `GET /dashboard/app.css` | its script and style |
//! | `GET /dashboard/overview` | counts by state, by name, and per-minute completions, failures and cancellations over the last hour |
//! | `GET /dashboard/jobs/{id}` | a job with its arguments, result, earlier runs, step journal, tokens and cost |
//! | `GET /dashboard/events?job={id}` | Server-Sent Events for every job: `counts` when they change, `job` when a recent or running job (or `job`) changes |
//!
//! The API uses only the public API of [`Jobs`] (and the dashboard that of [`Inspector`]): it
//! serves what any process sharing the database could.

mod auth;
mod csrf;
mod dashboard;
mod error;
mod limits;
#[cfg(feature = "llm")]
mod openai;
mod openapi;
mod redact;
mod routes;
mod sse;
mod view;

pub use redact::DEFAULT_REDACTED_FIELDS;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Inspector, Jobs, Result};

/// The environment variable that holds the bearer token, when [`HttpApi::token`] does not set
/// one.
pub const TOKEN_ENV: &str = "LLMJOBS_HTTP_TOKEN";

/// Where [`HttpApi::serve`] listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8787);

/// The HTTP job API over [`Jobs`], with its settings. [`router`] and [`Jobs::serve`] are the
/// short ways to it.
#[derive(Clone)]
pub struct HttpApi {
    jobs: Jobs,
    token: Option<String>,
    open_changes: bool,
    redacted: Vec<String>,
    body_limit: usize,
    max_wait: Duration,
    sse: limits::SseLimits,
    addr: SocketAddr,
    dashboard: Dashboard,
}

/// Whether and how the dashboard is served.
#[derive(Clone)]
enum Dashboard {
    /// At `/`, reading through an inspector opened on the jobs' database when first needed.
    Opened,
    /// At `/`, reading through this inspector.
    Given(Inspector),
    /// Not served.
    Off,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("open_changes", &self.open_changes)
            .field("redacted", &self.redacted)
            .field("sse", &self.sse)
            .field("body_limit", &self.body_limit)
            .field("max_wait", &self.max_wait)
            .field("addr", &self.addr)
            .field("dashboard", &!matches!(self.dashboard, Dashboard::Off))
            .finish_non_exhaustive()
    }
}

/// What the handlers share.
pub(crate) struct State {
    pub(crate) jobs: Jobs,
    pub(crate) max_wait: Duration,
    /// The bearer token, if any.
    pub(crate) token: Option<String>,
    /// Whether reads need the token too (served beyond loopback).
    pub(crate) token_for_reads: bool,
    /// Whether, without a token, mutating routes are open to anyone
    /// ([`HttpApi::allow_unauthenticated_changes`]).
    pub(crate) open_changes: bool,
    /// Hides secrets in every argument, result and progress report shown.
    pub(crate) redact: redact::Redactor,
    /// How many event streams may be open, and how long one may sit idle.
    pub(crate) sse: limits::SseGate,
}

impl HttpApi {
    /// The API over `jobs`, with the token from `LLMJOBS_HTTP_TOKEN` if it is set (and not
    /// empty), a body limit of 1 MiB, waits of at most 5 minutes, at most 64 event streams
    /// idle for at most 5 minutes each, [`DEFAULT_REDACTED_FIELDS`] hidden, and
    /// [`DEFAULT_ADDR`].
    ///
    /// Without a token, the mutating routes (submit, cancel, retry, chat completions) answer
    /// `401` until [`HttpApi::token`] sets one or [`HttpApi::allow_unauthenticated_changes`]
    /// opens them.
    pub fn new(jobs: Jobs) -> Self {
        HttpApi {
            jobs,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            open_changes: false,
            redacted: DEFAULT_REDACTED_FIELDS
                .iter()
                .map(|f| f.to_string())
                .collect(),
            body_limit: 1024 * 1024,
            max_wait: Duration::from_secs(300),
            sse: limits::SseLimits::default(),
            addr: DEFAULT_ADDR,
            dashboard: Dashboard::Opened,
        }
    }

    /// The bearer token that submit, cancel and retry need (and every route, when served beyond
    /// loopback). Overrides `LLMJOBS_HTTP_TOKEN`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// No token, even if `LLMJOBS_HTTP_TOKEN` is set. The mutating routes then answer `401`
    /// unless [`HttpApi::allow_unauthenticated_changes`] opens them; serving beyond loopback
    /// refuses to start.
    pub fn no_token(mut self) -> Self {
        self.token = None;
        self
    }

    /// Without a token, lets anyone who reaches the API submit, cancel and retry jobs, instead
    /// of answering `401`. For loopback and for applications that authenticate requests
    /// before they reach the router. A token, when set, is still required; served beyond
    /// loopback, every route needs one whatever this says.
    pub fn allow_unauthenticated_changes(mut self) -> Self {
        self.open_changes = true;
        self
    }

    /// The field names whose values are hidden (`"[redacted]"`) in every argument, result and
    /// progress report the API shows, at any depth; replaces [`DEFAULT_REDACTED_FIELDS`].
    /// Names match without regard to case, `-` or `_`, and also as a suffix: `api_key` hides
    /// `openai_api_key` and `X-Api-Key` too.
    pub fn redact_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redacted = fields.into_iter().map(Into::into).collect();
        self
    }

    /// How many event streams (`GET /jobs/{id}/events`) may be open at once (default 64);
    /// one more is answered `503` with `Retry-After`.
    pub fn max_event_streams(mut self, streams: usize) -> Self {
        self.sse.max_streams = streams;
        self
    }

    /// How long an event stream may go without an event before it is closed (default 5
    /// minutes; keep-alive comments do not count). A client reconnects with `Last-Event-ID`.
    pub fn event_stream_idle(mut self, idle: Duration) -> Self {
        self.sse.idle = idle;
        self
    }

    /// The largest request body accepted, in bytes (default 1 MiB); a larger one is `413`.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The longest a request waits for a job (`?wait=`, `?timeout=`; default 5 minutes): a
    /// longer wait is cut to this, and the job keeps running past it as always.
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }

    /// Where [`HttpApi::serve`] listens (default [`DEFAULT_ADDR`], loopback).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The dashboard reads arguments, results, step journals and the last hour's throughput
    /// through `inspector` (opened on the same database as the [`Jobs`]) instead of one it
    /// opens itself with [`Jobs::inspector`]. See [the module documentation](self#the-dashboard).
    pub fn dashboard(mut self, inspector: Inspector) -> Self {
        self.dashboard = Dashboard::Given(inspector);
        self
    }

    /// Serves no dashboard: only the job API's routes (for an application with a page of its
    /// own at `/`).
    pub fn no_dashboard(mut self) -> Self {
        self.dashboard = Dashboard::Off;
        self
    }

    /// The routes, to mount (`nest`) in an axum application. The token applies to mutating
    /// routes (or, without one, they are refused unless
    /// [`HttpApi::allow_unauthenticated_changes`]); the application decides who reaches the
    /// rest.
    pub fn router(self) -> axum::Router {
        self.router_for(false)
    }

    fn router_for(self, token_for_reads: bool) -> axum::Router {
        let state = Arc::new(State {
            jobs: self.jobs,
            max_wait: self.max_wait,
            token: self.token,
            token_for_reads,
            open_changes: self.open_changes,
            redact: redact::Redactor::new(&self.redacted),
            sse: limits::SseGate::new(self.sse),
        });
        let mut router = routes::routes(state.clone(), self.body_limit);
        match self.dashboard {
            Dashboard::Opened => router = router.merge(dashboard::routes(state, None)),
            Dashboard::Given(inspector) => {
                router = router.merge(dashboard::routes(state, Some(inspector)));
            }
            Dashboard::Off => {}
        }
        router.layer(axum::middleware::from_fn(csrf::refuse_cross_site))
    }

    /// Binds [`HttpApi::addr`] and serves the API until the task is dropped or the listener
    /// fails.
    pub async fn serve(self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve_on(listener).await
    }

    /// Serves the API on a listener already bound (port 0, say, to let the system pick).
    ///
    /// On an address other than loopback every route needs the token, and without one this
    /// refuses to start ([`Error::Config`]).
    pub async fn serve_on(self, listener: tokio::net::TcpListener) -> Result<()> {
        let local = listener.local_addr()?;
        let exposed = !local.ip().is_loopback();
        if exposed && self.token.is_none() {
            return Err(Error::Config(format!(
                "refusing to serve the job API on {local}, beyond loopback, without a token: \
                 set {TOKEN_ENV} or HttpApi::token"
            )));
        }
        tracing::info!(addr = %local, "llmjobs HTTP API listening");
        axum::serve(listener, self.router_for(exposed)).await?;
        Ok(())
    }
}

/// Every route the API serves, as a method and a path relative to where it is mounted
/// (`/jobs/{job}`, with the OpenAI-compatible endpoint when the `llm` feature is on, and the
/// dashboard's unless [`HttpApi::no_dashboard`]). The router is built from these lists, and
/// `GET /openapi.json` documents each entry.
pub fn served_routes() -> Vec<(axum::http::Method, &'static str)> {
    routes::table()
        .into_iter()
        .map(|route| (route.method, route.path))
        .chain(
            dashboard::PATHS
                .into_iter()
                .map(|path| (axum::http::Method::GET, path)),
        )
        .collect()
}

/// The HTTP job API over `jobs`, to mount in an axum application (see the [module](self)
/// documentation). `HttpApi::new(jobs).router()`: without `LLMJOBS_HTTP_TOKEN`, its mutating
/// routes answer `401`; use [`HttpApi`] to set a token or open them.
pub fn router(jobs: Jobs) -> axum::Router {
    HttpApi::new(jobs).router()
}

impl Jobs {
    /// Serves the HTTP job API on `addr` (`"127.0.0.1:8787"`) until the task is dropped: for
    /// programs without a web server of their own. See [`llmjobs::http`](crate::http) for the
    /// routes and [`HttpApi`] for the settings. Changing jobs needs the token from
    /// `LLMJOBS_HTTP_TOKEN`; without one, use [`HttpApi::allow_unauthenticated_changes`].
    pub async fn serve(&self, addr: impl tokio::net::ToSocketAddrs) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        HttpApi::new(self.clone()).serve_on(listener).await
    }
}
