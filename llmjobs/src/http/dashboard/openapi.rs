//! The dashboard's routes in the OpenAPI document.

use utoipa::OpenApi;

use super::{data, live};

#[derive(OpenApi)]
#[openapi(
    paths(
        super::page,
        super::script,
        super::style,
        data::overview,
        data::job,
        live::events,
    ),
    tags((name = "dashboard", description = "The web dashboard and the reads it makes"))
)]
pub(crate) struct DashboardApi;
