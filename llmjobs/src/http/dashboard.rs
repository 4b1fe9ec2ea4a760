//! The web dashboard: a page compiled into the binary, and the reads it needs beyond the job
//! API's (arguments, results, step journals, throughput, one event stream for every job).

mod data;
mod live;
mod openapi;

pub(crate) use openapi::DashboardApi;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Inspector;

/// What the dashboard's handlers share.
pub(crate) struct Dashboard {
    pub(crate) api: Arc<super::State>,
    /// Given, or opened on the jobs' database at the first request that needs it.
    inspector: tokio::sync::OnceCell<Inspector>,
}

impl Dashboard {
    /// The inspector, opened now if it was not given and this is the first read.
    pub(crate) async fn inspector(&self) -> crate::Result<&Inspector> {
        self.inspector
            .get_or_try_init(|| self.api.jobs.inspector())
            .await
    }
}

/// The page and its data routes. The page and its assets hold no job data and need no token
/// (a browser cannot send one when it navigates); the data routes go through the API's token
/// check like its other reads.
pub(crate) fn routes(api: Arc<super::State>, inspector: Option<Inspector>) -> Router {
    let [
        page_path,
        script_path,
        style_path,
        overview_path,
        job_path,
        events_path,
    ] = PATHS;
    let data = Router::new()
        .route(overview_path, get(data::overview))
        .route(job_path, get(data::job))
        .route(events_path, get(live::events))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            super::auth::require_token,
        ))
        .with_state(Arc::new(Dashboard {
            api,
            inspector: tokio::sync::OnceCell::new_with(inspector),
        }));
    Router::new()
        .route(page_path, get(page))
        .route(script_path, get(script))
        .route(style_path, get(style))
        .merge(data)
}

/// The dashboard's routes, all `GET`, in the order [`routes`] serves them: the page, its
/// script and style, then the data routes. The OpenAPI document describes each.
pub(crate) const PATHS: [&str; 6] = [
    "/",
    "/dashboard/app.js",
    "/dashboard/app.css",
    "/dashboard/overview",
    "/dashboard/jobs/{job}",
    "/dashboard/events",
];

/// Every response of the page forbids framing (clickjacking) and anything fetched from
/// elsewhere.
const SECURITY: [(header::HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// The dashboard: a web page over the job API.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    security(()),
    responses((status = 200, description = "The dashboard page (no job data; needs no token)", content_type = "text/html", body = String))
)]
pub(crate) async fn page() -> impl IntoResponse {
    asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/assets/index.html"),
    )
}

/// The dashboard's script.
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    tag = "dashboard",
    security(()),
    responses((status = 200, description = "The page's JavaScript", content_type = "text/javascript", body = String))
)]
pub(crate) async fn script() -> impl IntoResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/app.js"),
    )
}

/// The dashboard's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/app.css",
    tag = "dashboard",
    security(()),
    responses((status = 200, description = "The page's CSS", content_type = "text/css", body = String))
)]
pub(crate) async fn style() -> impl IntoResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("dashboard/assets/app.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let [a, b, c] = SECURITY;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            a,
            b,
            c,
        ],
        body,
    )
}
