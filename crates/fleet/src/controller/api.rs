//! The fleet API (JSON; errors are `{"error": "…"}`), the host API's conventions: a Unix
//! socket (0600) without authentication, and optionally TCP with a bearer token.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/hosts` | every enrolled host: registry record, availability, last health, report count |
//! | `GET /v1/hosts/{id}` | one host |
//! | `POST /v1/hosts/{id}/revoke` | remove the host's access at once |
//! | `POST /v1/hosts/{id}/reenrol` | let an enrolled (or revoked) host id enrol again, once |
//! | `POST /v1/subscribers/{name}/zero` | `{"csr": PEM}` (CN=zero): sign a zero certificate; answers `{"certificate", "ca"}` |
//! | `GET /v1/reports?host=&guest=&since=&cause=` | diagnoses hosts published |
//! | `GET /v1/reports/{id}[?host=]` | the JSON report from the object store (the host's bytes), or its text with `Accept: text/plain` |
//! | `GET /v1/reports/{id}/core[?host=]` | the ELF core |
//! | `GET /v1/failures?host=` | failure events |
//! | `POST /v1/transactions` | `{"host", "instructions": [...], "subscriber"?, "timeout_ms"?, "no_wait"?}`: 200 with the ended transaction, 202 with `no_wait`, 504 when it expired |
//! | `GET /v1/transactions/{id}` | a transaction and its result |
//! | `GET /v1/images` | the image library: every role's manifests |
//! | `POST /v1/images?role=&cmdline=&memory=&vcpus=` | the kernel as the body (octet-stream): stored under its SHA-256 with the role's manifest |
//! | `DELETE /v1/images/{digest}[?role=]` | remove an image (409 while a slot runs it) |
//! | `GET /v1/pool` | desired counts, actual counts, spares, missing, repurposings in flight |
//! | `PUT /v1/pool` | `{"desired": {"web": 2, …}}`: set counts (0 removes a role) |
//! | `GET /v1/stats` | events and health updates ingested |
//!
//! Errors: 400 (bad request), 401 (TCP without the token), 404, 409, 502 (the engine),
//! 504 (a transaction expired), 500.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ambulance_service::listen;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::Controller;
use crate::error::FleetError;
use crate::model::{FleetEntry, HostView, TxnRequest, TxnStatus};
use crate::names::{self, Artifact};

/// An error as the API answers it (with, for an expired transaction, the transaction).
pub struct ApiError(Box<(FleetError, Option<serde_json::Value>)>);

fn api_err(e: FleetError, extra: Option<serde_json::Value>) -> ApiError {
    ApiError(Box::new((e, extra)))
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        api_err(e, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (error, extra) = *self.0;
        let status = match &error {
            FleetError::NotFound(_) => StatusCode::NOT_FOUND,
            FleetError::Conflict(_) => StatusCode::CONFLICT,
            FleetError::Invalid(_) | FleetError::Pki(_) | FleetError::Refused(_) => {
                StatusCode::BAD_REQUEST
            }
            FleetError::Unavailable(_) => StatusCode::GATEWAY_TIMEOUT,
            FleetError::Engine(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = json!({ "error": error.to_string() });
        if let Some(extra) = extra {
            body["transaction"] = extra;
        }
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn invalid(msg: impl Into<String>) -> ApiError {
    api_err(FleetError::Invalid(msg.into()), None)
}

/// The routes, without authentication (the Unix socket's permissions guard it).
pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{id}", get(host))
        .route("/v1/hosts/{id}/revoke", post(revoke))
        .route("/v1/hosts/{id}/reenrol", post(reenrol))
        .route("/v1/subscribers/{name}/zero", post(zero))
        .route("/v1/reports", get(reports))
        .route("/v1/reports/{id}", get(report))
        .route("/v1/reports/{id}/core", get(core))
        .route("/v1/failures", get(failures))
        .route("/v1/transactions", post(create_txn))
        .route("/v1/transactions/{id}", get(txn))
        .route(
            "/v1/images",
            get(images).post(add_image).layer(DefaultBodyLimit::max(
                super::balance::MAX_IMAGE as usize + 1,
            )),
        )
        .route("/v1/images/{digest}", delete(remove_image))
        .route("/v1/pool", get(pool).put(set_pool))
        .route("/v1/stats", get(stats))
        .fallback(|| async {
            api_err(
                FleetError::NotFound(
                    "no such endpoint; see /v1/hosts, /v1/reports, /v1/transactions".into(),
                ),
                None,
            )
        })
        .with_state(ctl)
}

/// The routes behind a bearer-token check (for TCP listeners).
pub fn router_with_token(ctl: Arc<Controller>, token: String) -> Router {
    listen::with_bearer_token(router(ctl), token)
}

async fn view(ctl: &Controller, record: crate::model::HostRecord) -> HostView {
    let (available, last_seen) = ctl.availability(&record.host);
    let health = ctl
        .seen
        .read()
        .get(&record.host)
        .and_then(|s| s.health.clone());
    let reports = ctl
        .index
        .read()
        .reports
        .range((record.host.clone(), String::new())..)
        .take_while(|((h, _), _)| *h == record.host)
        .count();
    HostView {
        record,
        available,
        last_seen,
        health,
        reports,
    }
}

async fn hosts(State(ctl): State<Arc<Controller>>) -> impl IntoResponse {
    let mut out = Vec::new();
    for r in ctl.host_records().await {
        out.push(view(&ctl, r).await);
    }
    Json(out)
}

async fn host(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let r = ctl
        .host_record(&id)
        .await
        .ok_or_else(|| FleetError::NotFound(format!("no host {id:?} is enrolled")))?;
    Ok(Json(view(&ctl, r).await))
}

async fn revoke(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(ctl.revoke(&id).await?))
}

async fn reenrol(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(ctl.allow_reenrolment(&id).await?))
}

async fn zero(
    State(ctl): State<Arc<Controller>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        csr: String,
    }
    let b: Body = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "malformed JSON body: {e}; expected {{\"csr\": PEM}}"
        ))
    })?;
    let (certificate, ca) = ctl.bootstrap(&name, &b.csr).await?;
    Ok(Json(json!({ "certificate": certificate, "ca": ca })))
}

fn parse_since(v: &str) -> ApiResult<ambulance_report::Timestamp> {
    let t = match v.parse::<i64>() {
        Ok(secs) => ambulance_report::Timestamp::from_second(secs).ok(),
        Err(_) => v.parse::<ambulance_report::Timestamp>().ok(),
    };
    t.ok_or_else(|| {
        invalid(format!(
            "since={v:?}: expected RFC 3339 (2026-05-01T10:00:00Z) or Unix seconds"
        ))
    })
}

async fn reports(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let (mut host, mut guest, mut cause, mut since) = (None, None, None, None);
    for (k, v) in q {
        match k.as_str() {
            "host" => host = Some(v),
            "guest" => guest = Some(v),
            "cause" => cause = Some(v),
            "since" => since = Some(parse_since(&v)?),
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?}; known: host, guest, since, cause"
                )))
            }
        }
    }
    let idx = ctl.index.read();
    let mut out: Vec<FleetEntry> = idx
        .reports
        .values()
        .filter(|e| {
            host.as_ref().is_none_or(|h| *h == e.host)
                && guest.as_ref().is_none_or(|g| *g == e.guest)
                && cause.as_ref().is_none_or(|c| *c == e.cause)
                && since.is_none_or(|s| e.time >= s)
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| (a.time, &a.host, &a.id).cmp(&(b.time, &b.host, &b.id)));
    Ok(Json(out))
}

async fn failures(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let host = q.get("host").cloned();
    if let Some(k) = q.keys().find(|k| *k != "host") {
        return Err(invalid(format!(
            "unknown query parameter {k:?}; known: host"
        )));
    }
    let idx = ctl.index.read();
    let out: Vec<_> = idx
        .failures
        .iter()
        .filter(|f| host.as_ref().is_none_or(|h| *h == f.host))
        .cloned()
        .collect();
    Ok(Json(out))
}

/// The entry of report `id` (on `host`, when given or needed).
fn find(ctl: &Controller, id: &str, host: Option<&String>) -> ApiResult<FleetEntry> {
    let idx = ctl.index.read();
    let hosts = idx.by_id.get(id).cloned().unwrap_or_default();
    let h = match (host, hosts.as_slice()) {
        (Some(h), _) if hosts.contains(h) => h.clone(),
        (None, [h]) => h.clone(),
        (None, many) if many.len() > 1 => {
            return Err(api_err(
                FleetError::Conflict(format!(
                    "report id {id} was published by several hosts ({}); add ?host=",
                    many.join(", ")
                )),
                None,
            ))
        }
        _ => {
            return Err(api_err(
                FleetError::NotFound(format!("no report {id:?} in the fleet")),
                None,
            ))
        }
    };
    Ok(idx.reports[&(h, id.to_string())].clone())
}

async fn object(ctl: &Controller, e: &FleetEntry, artifact: Artifact) -> ApiResult<Vec<u8>> {
    let bucket = ctl
        .js
        .get_object_store(names::report_bucket(&e.host))
        .await
        .map_err(|err| FleetError::engine("cannot open the report bucket", err))?;
    let name = names::object_name(&e.host, &e.id, artifact);
    let mut obj = bucket
        .get(&name)
        .await
        .map_err(|err| FleetError::NotFound(format!("object {name}: {err}")))?;
    let mut out = Vec::new();
    obj.read_to_end(&mut out)
        .await
        .map_err(|err| FleetError::engine(&format!("cannot read object {name}"), err))?;
    Ok(out)
}

async fn report(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let e = find(&ctl, &id, q.get("host"))?;
    if e.status != ambulance_service::store::Status::Ok {
        return Err(api_err(
            FleetError::NotFound(format!(
                "report {id} has no document: {}",
                e.error.as_deref().unwrap_or("diagnosis failed")
            )),
            None,
        ));
    }
    let text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"));
    let (artifact, ctype) = if text {
        (Artifact::Text, "text/plain; charset=utf-8")
    } else {
        (Artifact::Json, "application/json")
    };
    let bytes = object(&ctl, &e, artifact).await?;
    Ok(([(header::CONTENT_TYPE, ctype)], bytes).into_response())
}

async fn core(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let e = find(&ctl, &id, q.get("host"))?;
    if !e.core {
        return Err(api_err(
            FleetError::NotFound(format!("report {id} has no core")),
            None,
        ));
    }
    let bytes = object(&ctl, &e, Artifact::Core).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn create_txn(State(ctl): State<Arc<Controller>>, bytes: Bytes) -> ApiResult<Response> {
    let req: TxnRequest = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "malformed transaction: {e} (expected {{\"host\": ..., \"instructions\": [{{\"op\": \
             \"diagnose\"|\"release\"|\"boot-flag\"|\"repurpose\", \"guest\": ...}}]}})"
        ))
    })?;
    let t = ctl.create_transaction(&req).await?;
    if req.no_wait {
        let v = ctl.transaction(&t.txn).await?;
        return Ok((StatusCode::ACCEPTED, Json(v)).into_response());
    }
    let v = ctl.wait_transaction(&t.txn).await?;
    if v.status == TxnStatus::Expired {
        let why = v
            .result
            .as_ref()
            .and_then(|r| r.error.clone())
            .unwrap_or_else(|| format!("transaction {} expired", t.txn));
        return Err(api_err(
            FleetError::Unavailable(why),
            serde_json::to_value(&v).ok(),
        ));
    }
    Ok(Json(v).into_response())
}

async fn txn(State(ctl): State<Arc<Controller>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(ctl.transaction(&id).await?).into_response())
}

async fn images(State(ctl): State<Arc<Controller>>) -> impl IntoResponse {
    Json(ctl.images())
}

async fn add_image(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<HashMap<String, String>>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let (mut role, mut cmdline, mut memory, mut vcpus) = (None, String::new(), 32u64 << 20, 1u32);
    for (k, v) in q {
        match k.as_str() {
            "role" => role = Some(v),
            "cmdline" => cmdline = v,
            "memory" => {
                memory = ambulance_service::config::parse_size(&v)
                    .map_err(|e| invalid(format!("memory={v:?}: {e}")))?
            }
            "vcpus" => {
                vcpus = v
                    .parse()
                    .map_err(|_| invalid(format!("vcpus={v:?}: not a number")))?
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?}; known: role, cmdline, memory, vcpus"
                )))
            }
        }
    }
    let role = role.ok_or_else(|| invalid("role= is required"))?;
    let m = ctl
        .add_image(
            &super::balance::NewImage {
                role,
                cmdline,
                memory_bytes: memory,
                vcpus,
            },
            bytes,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn remove_image(
    State(ctl): State<Arc<Controller>>,
    Path(digest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    if let Some(k) = q.keys().find(|k| *k != "role") {
        return Err(invalid(format!(
            "unknown query parameter {k:?}; known: role"
        )));
    }
    Ok(Json(
        ctl.remove_image(&digest, q.get("role").map(String::as_str))
            .await?,
    ))
}

async fn pool(State(ctl): State<Arc<Controller>>) -> impl IntoResponse {
    Json(ctl.pool_view())
}

async fn set_pool(
    State(ctl): State<Arc<Controller>>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        desired: std::collections::BTreeMap<String, u32>,
    }
    let b: Body = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "malformed pool: {e} (expected {{\"desired\": {{\"web\": 2, ...}}}})"
        ))
    })?;
    Ok(Json(ctl.set_pool(&b.desired).await?))
}

async fn stats(State(ctl): State<Arc<Controller>>) -> impl IntoResponse {
    let idx = ctl.index.read();
    Json(json!({
        "events": ctl.stats.events.load(Ordering::Relaxed),
        "duplicates": ctl.stats.duplicates.load(Ordering::Relaxed),
        "health_updates": ctl.stats.health.load(Ordering::Relaxed),
        "hosts_seen": ctl.seen.read().len(),
        "reports": idx.reports.len(),
        "failures": idx.failures.len(),
    }))
}

/// Serves the API until SIGINT or SIGTERM, on the listeners the host daemon uses.
pub async fn serve(ctl: Arc<Controller>) -> crate::Result<()> {
    let api = &ctl.config().api;
    if let Some(dir) = api.socket.parent() {
        crate::pki::create_private_dir(dir)?;
    }
    let listeners = listen::Listeners::bind(api, "controller").await?;
    tracing::info!(api = %listeners.describe(), "fleet API serving");
    listeners
        .serve_until_signal(router(ctl.clone()), std::future::pending())
        .await?;
    Ok(())
}
