//! The HTTP job API (feature `http`): submit jobs by name with JSON arguments, wait for them
//! with a timeout and get a job id to poll past it, list, cancel, retry and follow them, from
//! any language.
//!
//! Mount [`router`] in an axum application, or run it alone with [`Jobs::serve`] or
//! [`HttpApi::serve`]:
//!
//! ```no_run
//! # async fn demo(jobs: llmjobs::Jobs) -> llmjobs::Result<()> {
//! // In an axum application of your own:
//! let app = axum::Router::new().nest("/api", llmjobs::http::router(jobs.clone()));
//! // Or alone, on loopback:
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
//! | `GET /jobs/{id}/events` | Server-Sent Events: each progress report, then the job as it ended |
//!
//! A job that ended is shown the same way whether it completed, failed or was cancelled: `200`,
//! its `state`, and its `result` or `error`. A wait never changes the job.
//!
//! Errors are JSON, `{"error": "..."}`, with the status code that fits: `404` for an unknown
//! job id or name (naming the known names), `422` for arguments that do not deserialize (with
//! `"path"`, the field that failed), `413` for a body over the limit, `409` for a conflict
//! (an idempotency key held by other work, retrying a job that has not failed), `401` without
//! the token.
//!
//! **Security.** With a token ([`HttpApi::token`], or the `LLMJOBS_HTTP_TOKEN` environment
//! variable), the mutating routes (submit, cancel, retry) need `Authorization: Bearer <token>`.
//! Served on an address other than loopback, every route needs it, and serving refuses to start
//! without one. Request bodies are bounded ([`HttpApi::body_limit`], 1 MiB by default) and so
//! are waits ([`HttpApi::max_wait`], 5 minutes by default).
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
//! With [`HttpApi::dashboard`], `/` serves a web page over the same routes: the jobs, filtered
//! by state and name or found by id, updated live; counts by state and a chart of the last
//! hour's completions and failures; a page per job with its arguments, result or error, its
//! attempts and earlier runs, its progress and stage, its step journal, tokens and cost; and
//! buttons to cancel and retry, each confirmed first. The page is plain HTML, CSS and
//! JavaScript compiled into the binary: it fetches nothing from elsewhere. With a token in
//! force it asks for it once and keeps it for the browser tab (`sessionStorage`).
//!
//! ```no_run
//! # async fn demo(jobs: llmjobs::Jobs) -> llmjobs::Result<()> {
//! use llmjobs::{Inspector, http::HttpApi};
//! let inspector = Inspector::open("sqlite://jobs.db").await?;
//! HttpApi::new(jobs).dashboard(inspector).serve().await?;
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
mod routes;
mod sse;
mod view;

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
    body_limit: usize,
    max_wait: Duration,
    addr: SocketAddr,
    dashboard: Option<Inspector>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("body_limit", &self.body_limit)
            .field("max_wait", &self.max_wait)
            .field("addr", &self.addr)
            .field("dashboard", &self.dashboard.is_some())
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
}

impl HttpApi {
    /// The API over `jobs`, with the token from `LLMJOBS_HTTP_TOKEN` if it is set (and not
    /// empty), a body limit of 1 MiB, waits of at most 5 minutes, and [`DEFAULT_ADDR`].
    pub fn new(jobs: Jobs) -> Self {
        HttpApi {
            jobs,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            body_limit: 1024 * 1024,
            max_wait: Duration::from_secs(300),
            addr: DEFAULT_ADDR,
            dashboard: None,
        }
    }

    /// The bearer token that submit, cancel and retry need (and every route, when served beyond
    /// loopback). Overrides `LLMJOBS_HTTP_TOKEN`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// No token, even if `LLMJOBS_HTTP_TOKEN` is set: anyone who reaches the port may submit,
    /// cancel and retry. Serving beyond loopback still refuses to start without one.
    pub fn no_token(mut self) -> Self {
        self.token = None;
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

    /// Serves the web dashboard at `/` too, reading arguments, results, step journals and the
    /// last hour's throughput through `inspector` (opened on the same database as the
    /// [`Jobs`]). See [the module documentation](self#the-dashboard).
    pub fn dashboard(mut self, inspector: Inspector) -> Self {
        self.dashboard = Some(inspector);
        self
    }

    /// The routes, to mount (`nest`) in an axum application. The token applies to mutating
    /// routes; the application decides who reaches the rest.
    pub fn router(self) -> axum::Router {
        self.router_for(false)
    }

    fn router_for(self, token_for_reads: bool) -> axum::Router {
        let state = Arc::new(State {
            jobs: self.jobs,
            max_wait: self.max_wait,
            token: self.token,
            token_for_reads,
        });
        let mut router = routes::routes(state.clone(), self.body_limit);
        if let Some(inspector) = self.dashboard {
            router = router.merge(dashboard::routes(state, inspector));
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

/// The HTTP job API over `jobs`, to mount in an axum application (see the [module](self)
/// documentation). `HttpApi::new(jobs).router()`.
pub fn router(jobs: Jobs) -> axum::Router {
    HttpApi::new(jobs).router()
}

impl Jobs {
    /// Serves the HTTP job API on `addr` (`"127.0.0.1:8787"`) until the task is dropped: for
    /// programs without a web server of their own. See [`llmjobs::http`](crate::http) for the
    /// routes and [`HttpApi`] for the settings.
    pub async fn serve(&self, addr: impl tokio::net::ToSocketAddrs) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        HttpApi::new(self.clone()).serve_on(listener).await
    }
}
