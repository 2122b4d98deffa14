//! The HTTP API (JSON) and `GET /metrics`.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/guests` | every guest's status |
//! | `GET /v1/guests/{id}` | one guest's status |
//! | `POST /v1/guests/{id}/diagnose` | freeze a running guest briefly, diagnose, resume; answers the index entry |
//! | `POST /v1/guests/{id}/release` | `{"action": "restart" \| "destroy"}` (default restart) for a held guest (a guest QEMU runs: `system_reset` and run, or `quit`) |
//! | `POST /v1/guests/{id}/boot-flag` | `{"flag": "primary" \| "rescue"}` |
//! | `GET /v1/reports?guest=&since=&cause=` | index entries (`since`: RFC 3339 or Unix seconds) |
//! | `GET /v1/reports/{id}` | the JSON report, or its text with `Accept: text/plain` |
//! | `GET /v1/reports/{id}/core` | the ELF core |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are `{"error": "…"}` with 400 (bad request or body), 401 (TCP without the bearer
//! token), 404, 409 (not possible in the guest's state) or 500.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::error::ServiceError;
use crate::store::{BootFlag, Filter, Status};
use crate::supervisor::Service;

/// An error as the API answers it.
pub struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError(ServiceError::Invalid(msg.into()))
}

/// A JSON body; an empty body is the default value.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("malformed JSON body: {e}")))
}

/// The routes, without authentication (the Unix socket's permissions guard it).
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/guests", get(guests))
        .route("/v1/guests/{id}", get(guest))
        .route("/v1/guests/{id}/diagnose", post(diagnose))
        .route("/v1/guests/{id}/release", post(release))
        .route("/v1/guests/{id}/boot-flag", post(boot_flag))
        .route("/v1/reports", get(reports))
        .route("/v1/reports/{id}", get(report))
        .route("/v1/reports/{id}/core", get(core))
        .route("/metrics", get(metrics))
        .fallback(|| async { invalid_route() })
        .with_state(svc)
}

fn invalid_route() -> ApiError {
    ApiError(ServiceError::NotFound(
        "no such endpoint; see /v1/guests, /v1/reports, /metrics".into(),
    ))
}

/// The routes behind a bearer-token check (for TCP listeners).
pub fn router_with_token(svc: Arc<Service>, token: String) -> Router {
    crate::listen::with_bearer_token(router(svc), token)
}

async fn guests(State(svc): State<Arc<Service>>) -> impl IntoResponse {
    Json(svc.guests())
}

async fn guest(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    svc.guest(&id)
        .map(Json)
        .ok_or_else(|| ApiError(ServiceError::NotFound(format!("no guest named {id:?}"))))
}

async fn diagnose(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let _: serde_json::Map<String, serde_json::Value> = body(&bytes)?;
    let entry = svc.diagnose_now(&id).await?;
    Ok(Json(entry))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    action: Option<String>,
}

async fn release(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: ReleaseBody = body(&bytes)?;
    let destroy = match b.action.as_deref() {
        None | Some("restart") => false,
        Some("destroy") => true,
        Some(other) => {
            return Err(invalid(format!(
                "action {other:?}: expected \"restart\" or \"destroy\""
            )))
        }
    };
    Ok(Json(svc.release(&id, destroy).await?))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootFlagBody {
    flag: Option<BootFlag>,
}

async fn boot_flag(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let b: BootFlagBody = body(&bytes)?;
    let flag = b.flag.ok_or_else(|| {
        invalid("the body needs {\"flag\": \"primary\"} or {\"flag\": \"rescue\"}")
    })?;
    Ok(Json(svc.set_boot_flag(&id, flag).await?))
}

async fn reports(
    State(svc): State<Arc<Service>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let mut filter = Filter::default();
    for (k, v) in q {
        match k.as_str() {
            "guest" => filter.guest = Some(v),
            "cause" => filter.cause = Some(v),
            "since" => {
                let since = match v.parse::<i64>() {
                    Ok(secs) => ambulance_report::Timestamp::from_second(secs).ok(),
                    Err(_) => v.parse::<ambulance_report::Timestamp>().ok(),
                };
                filter.since = Some(since.ok_or_else(|| {
                    invalid(format!(
                        "since={v:?}: expected RFC 3339 (2026-05-01T10:00:00Z) or Unix seconds"
                    ))
                })?);
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?}; known: guest, since, cause"
                )))
            }
        }
    }
    Ok(Json(svc.store().list(&filter)?))
}

fn entry(svc: &Service, id: &str) -> ApiResult<crate::store::IndexEntry> {
    let e = svc
        .store()
        .get(id)?
        .ok_or_else(|| ApiError(ServiceError::NotFound(format!("no report {id:?}"))))?;
    if e.status == Status::DiagnosisFailed {
        return Err(ApiError(ServiceError::NotFound(format!(
            "report {id} has no document: {}",
            e.error.as_deref().unwrap_or("diagnosis failed")
        ))));
    }
    Ok(e)
}

async fn report(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let e = entry(&svc, &id)?;
    let text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"));
    let (path, ctype) = if text {
        (e.text, "text/plain; charset=utf-8")
    } else {
        (e.json, "application/json")
    };
    let path = path.ok_or_else(|| {
        ApiError(ServiceError::NotFound(format!(
            "report {id} has no such file"
        )))
    })?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ServiceError::io("cannot read", &path, e))?;
    Ok(([(header::CONTENT_TYPE, ctype)], bytes).into_response())
}

async fn core(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> ApiResult<Response> {
    let e = entry(&svc, &id)?;
    let path = e.core.ok_or_else(|| {
        ApiError(ServiceError::NotFound(format!(
            "report {id} has no core (set core = true on the guest to keep one)"
        )))
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ServiceError::io("cannot open", &path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ServiceError::io("cannot stat", &path, e))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn metrics(State(svc): State<Arc<Service>>) -> impl IntoResponse {
    let text = svc
        .metrics()
        .render(&svc.guests_by_state(), svc.reports_stored());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
