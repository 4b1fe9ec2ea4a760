//! `GET /dashboard/events`: one Server-Sent Event stream for the whole page.
//!
//! It reads the database a few times a second, as any process sharing it could, so it shows
//! jobs run by every worker, not only this process's: `counts` (the counts by state) whenever
//! they change, and `job` (a job as `GET /jobs/{id}` shows it, without its result) whenever a
//! job the page may show changes: the running ones, the newest ones, the one named by
//! `?job=<id>`, and, once more, any of those that has just left that set (so its end is seen).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Dashboard;
use crate::http::error::ApiError;
use crate::http::routes::job_id;
use crate::http::sse::EventStream;
use crate::http::view::JobView;
use crate::{Error, JobFilter, JobId, JobState, JobStatus};

/// How often the stream reads the database.
const POLL: Duration = Duration::from_millis(400);
/// The most running jobs, and the most of the newest jobs, followed.
const RUNNING: u32 = 200;
const NEWEST: u32 = 50;

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    job: Option<String>,
}

/// Server-Sent Events for the whole page.
#[utoipa::path(
    get,
    path = "/dashboard/events",
    operation_id = "dashboard_events",
    tag = "dashboard",
    security((), ("bearer" = [])),
    params(("job" = Option<String>, Query, description = "A job id to follow besides the running and newest ones")),
    responses(
        (status = 200, description = "Server-Sent Events: `counts` (by state) when they change, `job` (as `GET /jobs/{id}` shows it, without its result) when a followed job changes", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a job id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Too many event streams are open (`Retry-After`)", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn events(
    State(dash): State<Arc<Dashboard>>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let focus = query.job.as_deref().map(job_id).transpose()?;
    // It counts among the API's open event streams, under the same bound.
    let Some(permit) = dash.api.sse.admit() else {
        return Ok(crate::http::limits::busy());
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(dash, focus, tx));
    Ok(Sse::new(EventStream::new(rx, permit))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What the client was last told.
#[derive(Default)]
struct Sent {
    counts: String,
    jobs: HashMap<JobId, String>,
}

/// Sends what changed, tick after tick, until the client goes away.
async fn follow(dash: Arc<Dashboard>, focus: Option<JobId>, tx: mpsc::Sender<Event>) {
    let mut sent = Sent::default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        let events = match changes(&dash, focus, &mut sent).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "the dashboard's event stream could not read the jobs");
                vec![
                    Event::default()
                        .event("error")
                        .data(r#"{"error":"the jobs could not be read"}"#),
                ]
            }
        };
        for event in events {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The events that bring the client from `sent` to the database as it is now.
async fn changes(
    dash: &Dashboard,
    focus: Option<JobId>,
    sent: &mut Sent,
) -> crate::Result<Vec<Event>> {
    let jobs = &dash.api.jobs;
    let redact = &dash.api.redact;
    let mut events = Vec::new();
    let counts = json(&jobs.counts().await?);
    if counts != sent.counts {
        events.push(Event::default().event("counts").data(&counts));
        sent.counts = counts;
    }
    let mut followed = jobs
        .list(JobFilter::new().state(JobState::Running).limit(RUNNING))
        .await?;
    followed.extend(jobs.list(JobFilter::new().limit(NEWEST)).await?);
    if let Some(id) = focus.filter(|id| !followed.iter().any(|s| s.id == *id)) {
        match jobs.status(id).await {
            Ok(status) => followed.push(status),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // Jobs that left the followed set since the last tick: read once more, then let go.
    let mut leaving: Vec<JobStatus> = Vec::new();
    for id in sent.jobs.keys() {
        if !followed.iter().any(|s| s.id == *id) {
            match jobs.status(*id).await {
                Ok(status) => leaving.push(status),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let mut now = HashMap::with_capacity(followed.len());
    for (status, keep) in followed
        .into_iter()
        .map(|s| (s, true))
        .chain(leaving.into_iter().map(|s| (s, false)))
    {
        let id = status.id;
        if now.contains_key(&id) {
            continue;
        }
        let text = json(&JobView::new(status, None, redact));
        if sent.jobs.get(&id) != Some(&text) {
            events.push(Event::default().event("job").data(&text));
        }
        if keep {
            now.insert(id, text);
        }
    }
    sent.jobs = now;
    Ok(events)
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
