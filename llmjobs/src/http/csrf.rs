//! Refusing cross-site requests to the mutating routes.
//!
//! A page on another site can make a visitor's browser post a form, or send a "simple"
//! `fetch`, to the API: on loopback without a token that would submit, cancel or retry jobs.
//! Browsers say where a request comes from (`Sec-Fetch-Site`, `Origin`); a request that comes
//! from a browser must come from the API's own origin and carry [`HEADER`], which a form cannot
//! send and a cross-site script cannot send without a CORS preflight the API never approves.
//! Requests that name no origin at all come from programs (curl, SDKs), which a web page cannot
//! steer, and are not concerned.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The header the dashboard sends with every request; its value does not matter.
pub(crate) const HEADER: &str = "x-llmjobs-request";

/// Lets through safe methods, requests from programs, and same-origin requests from the
/// dashboard; `403` for the rest.
pub(crate) async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    match refusal(request.headers()) {
        None => next.run(request).await,
        Some(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
    }
}

/// Why a mutating request is refused, if it is.
fn refusal(headers: &HeaderMap) -> Option<&'static str> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let site = text(header::HeaderName::from_static("sec-fetch-site"));
    let origin = text(header::ORIGIN);
    if site.is_none() && origin.is_none() {
        // Not from a browser.
        return None;
    }
    let same_origin = match site {
        // Browsers that send it know best (a reverse proxy may rewrite `Host`).
        Some(site) => site == "same-origin",
        None => match (origin, text(header::HOST)) {
            (Some(origin), Some(host)) => authority(origin) == Some(host),
            _ => false,
        },
    };
    if !same_origin {
        return Some("cross-site requests may not change jobs");
    }
    if !headers.contains_key(HEADER) {
        return Some("a browser's request that changes jobs needs the `X-Llmjobs-Request` header");
    }
    None
}

/// `host:port` of an origin (`http://host:port`); `None` for `null` and the like.
fn authority(origin: &str) -> Option<&str> {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn programs_pass_and_browsers_need_the_same_origin_and_the_header() {
        assert_eq!(refusal(&headers(&[])), None);
        assert_eq!(
            refusal(&headers(&[
                ("sec-fetch-site", "same-origin"),
                ("x-llmjobs-request", "1")
            ])),
            None
        );
        assert_eq!(
            refusal(&headers(&[
                ("origin", "http://127.0.0.1:8787"),
                ("host", "127.0.0.1:8787"),
                ("x-llmjobs-request", "1")
            ])),
            None
        );
        assert!(refusal(&headers(&[("sec-fetch-site", "cross-site")])).is_some());
        assert!(refusal(&headers(&[("sec-fetch-site", "same-site")])).is_some());
        assert!(refusal(&headers(&[("sec-fetch-site", "same-origin")])).is_some());
        assert!(
            refusal(&headers(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:8787"),
                ("x-llmjobs-request", "1")
            ]))
            .is_some()
        );
        assert!(
            refusal(&headers(&[
                ("origin", "null"),
                ("host", "127.0.0.1:8787"),
                ("x-llmjobs-request", "1")
            ]))
            .is_some()
        );
    }
}
