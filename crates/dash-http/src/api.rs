//! The JSON API: pipelines (admin create), stats, series and recent events, OpenAPI.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, put};
use dash_domain::format_ms;
use dash_jobs::{Source, SourceSpec};
use dash_providers::{Provider, VerifySpec};
use dash_store::{PipelineAuth, PipelineRecord, ProviderAuth, SourceRecord, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::Client;
use crate::throttle::Scope;
use crate::{ApiError, AppState};

/// Most buckets one series request may ask for.
pub(crate) const MAX_POINTS: i64 = 10_000;
const DEFAULT_EVENTS: u32 = 50;
const MAX_EVENTS: u32 = 1000;

pub(crate) fn router(state: AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/pipelines", get(list_pipelines).post(create_pipeline))
        .route("/api/pipelines/{id}", get(get_pipeline).patch(patch_pipeline))
        .route("/api/pipelines/{id}/source", put(put_source).delete(delete_source))
        .route("/api/pipelines/{id}/verify", put(put_verify))
        .route("/api/pipelines/{id}/series", get(series))
        .route("/api/pipelines/{id}/events", get(events))
        .route("/api/pipelines/{id}/events/export", get(export_events))
        .route("/api/cluster", get(cluster))
        .merge(crate::views::router())
        .merge(crate::boards::router())
        .merge(crate::shares::router())
        .route_layer(middleware::from_fn(crate::origin::same_origin_writes))
        .route_layer(middleware::from_fn_with_state(state, require_admin))
        .route("/api/openapi.json", get(openapi))
}

/// With `DASH_ADMIN_TOKEN` set, the API needs `Authorization: Bearer <token>` (or a session).
async fn require_admin(
    State(state): State<AppState>,
    Client(peer): Client,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.limits.admin_token.is_some() {
        state.throttle.admit(peer, Scope::Admin)?;
    }
    if !crate::auth::authorized(request.headers(), &state.limits) {
        let refusal =
            ApiError::unauthorized("admin_token_required", "this API needs Authorization: Bearer <admin token>");
        return Err(state.throttle.failed(peer, Scope::Admin, refusal));
    }
    Ok(next.run(request).await)
}

/// A pipeline with its stats, also flattened to the top level for convenience.
fn pipeline_json(record: &PipelineRecord) -> Value {
    json!({
        "id": record.id,
        "name": record.name,
        "created_at": record.created_at,
        "webhook_path": format!("/webhooks/{}", record.id),
        "count": record.stats.count,
        "seq": record.stats.seq,
        "last_event_at": record.stats.last_event_at,
        "stats": record.stats,
        "retention": record.retention.map(dash_domain::format_retention),
        "set_aside": record.set_aside,
        "verify": verify_json(record),
    })
}

/// What `refused` covers: the last hour.
pub(crate) const REFUSALS_SPAN_MS: i64 = 3_600_000;

/// Deliveries refused for their credentials in the last hour, by reason, and the latest.
fn refused_json(refused: &dash_store::Refusals) -> Value {
    let by_reason: serde_json::Map<String, Value> =
        refused.by_reason.iter().map(|(reason, n)| (reason.clone(), json!(n))).collect();
    json!({
        "last_hour": refused.total(),
        "by_reason": by_reason,
        "latest_at": refused.latest.as_ref().map(|(at, _)| format_ms(*at)),
        "latest_reason": refused.latest.as_ref().map(|(_, reason)| reason),
    })
}

/// The pipeline's provider and its options, never a secret.
fn verify_json(record: &PipelineRecord) -> Value {
    record
        .verify
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_else(|| VerifySpec::standard().to_json())
}

/// A `verify` object with its secret: 422 `invalid_verify` naming the field at fault.
fn parse_verify(value: &Value) -> Result<(VerifySpec, Option<String>), ApiError> {
    VerifySpec::from_json_with_secret(value)
        .map_err(|e| ApiError::unprocessable("invalid_verify", e.to_string()).field(e.field))
}

async fn store_verify(
    state: &AppState,
    pipeline: &str,
    spec: &VerifySpec,
    secret: Option<&str>,
) -> Result<PipelineRecord, ApiError> {
    let (record, _) = state.store.set_verify(pipeline, spec, secret).await.map_err(|err| match err {
        StoreError::NotFound(_) => ApiError::not_found("pipeline_not_found", format!("no pipeline {pipeline:?}")),
        other => ApiError::store_unavailable(&other),
    })?;
    // This node takes the new verification at once; the others at their next refresh.
    if let Some(intake) = &state.intake {
        intake.directory().reload().await;
    }
    Ok(record)
}

/// `PUT /api/pipelines/{id}/verify`: which provider signs the pipeline's deliveries, with its
/// secret. Under the same provider the replaced secret keeps working for 24 hours.
async fn put_verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (spec, secret) = parse_verify(&read_json(&body)?)?;
    let record = find(&state, &id).await?;
    let record = store_verify(&state, &record.id, &spec, secret.as_deref()).await?;
    pipeline_with_source(&state, &record).await.map(Json)
}

async fn list_pipelines(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let records = state.store.list_pipelines().await.map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(Json(json!({ "pipelines": records.iter().map(pipeline_json).collect::<Vec<_>>() })))
}

pub(crate) async fn find(state: &AppState, id: &str) -> Result<PipelineRecord, ApiError> {
    match state.store.find_pipeline(id).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(ApiError::not_found("pipeline_not_found", format!("no pipeline {id:?}"))),
        Err(e) => Err(ApiError::store_unavailable(&e)),
    }
}

async fn get_pipeline(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let record = find(&state, &id).await?;
    pipeline_with_source(&state, &record).await.map(Json)
}

/// A `retention` field: a duration such as `"7days"`, or `null` for the node default.
fn parse_retention(value: &Value) -> Result<Option<Duration>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => dash_domain::parse_retention(text)
            .map(Some)
            .map_err(|e| ApiError::unprocessable("invalid_retention", e.to_string())),
        _ => Err(ApiError::unprocessable(
            "invalid_retention",
            "retention is a duration such as \"7days\", or null for the node default",
        )),
    }
}

/// `PATCH /api/pipelines/{id}`: changes a pipeline's settings. Only `retention` may change:
/// `{"retention": "7days"}`, or `{"retention": null}` for the node default.
async fn patch_pipeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Value::Object(fields) = read_json(&body)? else {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "expected a JSON object such as {\"retention\": \"7days\"}",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "retention") {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("{unknown:?} cannot be changed here; only \"retention\" can (the source has its own route)"),
        ));
    }
    let retention = fields.get("retention").map(parse_retention).transpose()?;
    let record = find(&state, &id).await?;
    let record = match retention {
        Some(retention) => {
            state.store.set_retention(&record.id, retention).await.map_err(|err| match err {
                StoreError::NotFound(_) => ApiError::not_found("pipeline_not_found", format!("no pipeline {id:?}")),
                other => ApiError::store_unavailable(&other),
            })?;
            find(&state, &record.id).await?
        }
        None => record,
    };
    pipeline_with_source(&state, &record).await.map(Json)
}

/// The pipeline, with its `source` (redacted, with the record of its polls) when it has one.
async fn pipeline_with_source(state: &AppState, record: &PipelineRecord) -> Result<Value, ApiError> {
    let mut body = pipeline_json(record);
    let since = dash_domain::now_ms() - REFUSALS_SPAN_MS;
    let refused = state.store.refusals(&record.id, since).await.map_err(|e| ApiError::store_unavailable(&e))?;
    body["refused"] = refused_json(&refused);
    let source = state.store.source(&record.id).await.map_err(|e| ApiError::store_unavailable(&e))?;
    if let Some(source) = source {
        body["source"] = source_json(&source, dash_domain::now_ms());
    }
    Ok(body)
}

/// A source as the API shows it: header and query values masked, plus what its polls did.
pub fn source_json(record: &SourceRecord, now_ms: i64) -> Value {
    let fmt = |ms: Option<i64>| ms.map(format_ms);
    let mut body = match SourceSpec::from_stored(&record.spec) {
        Ok(source) => {
            let mut shown = serde_json::to_value(source.spec.redacted()).unwrap_or_default();
            shown["next_run"] = json!(fmt(dash_jobs::next_poll(record, &source, now_ms)));
            shown
        }
        Err(err) => json!({ "error": err.to_string() }),
    };
    body["last_run"] = json!(fmt(record.last_run_at));
    body["last_ok"] = json!(fmt(record.last_ok_at));
    body["last_error"] = json!(record.last_error);
    body["last_events"] = json!(record.last_events);
    body["runs"] = json!(record.runs);
    body["failures"] = json!(record.failures);
    body["consecutive_failures"] = json!(record.consecutive_failures);
    body["events"] = json!(record.events_total);
    body["cursor_saved"] = json!(record.cursor.is_some());
    body
}

/// Reads and checks a `source` object: 422 with the reason when it does not hold.
fn parse_source(value: Value) -> Result<(SourceSpec, Source), ApiError> {
    let spec: SourceSpec =
        serde_json::from_value(value).map_err(|e| ApiError::unprocessable("invalid_source", format!("source: {e}")))?;
    let source = spec.validate().map_err(|e| ApiError::unprocessable("invalid_source", e.to_string()))?;
    Ok((spec, source))
}

async fn store_source(state: &AppState, pipeline: &str, spec: &SourceSpec) -> Result<(), ApiError> {
    let json = serde_json::to_string(spec).map_err(|e| ApiError::internal("encoding the source", &e))?;
    state.store.set_source(pipeline, &json, dash_domain::now_ms()).await.map_err(|err| match err {
        StoreError::NotFound(_) => ApiError::not_found("pipeline_not_found", format!("no pipeline {pipeline:?}")),
        other => ApiError::store_unavailable(&other),
    })
}

pub(crate) fn read_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))
}

/// `PUT /api/pipelines/{id}/source`: sets or replaces the source; the saved cursor stays.
async fn put_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (spec, _) = parse_source(read_json(&body)?)?;
    let record = find(&state, &id).await?;
    store_source(&state, &record.id, &spec).await?;
    pipeline_with_source(&state, &record).await.map(Json)
}

/// `DELETE /api/pipelines/{id}/source`: the pipeline stops polling (webhooks still work).
async fn delete_source(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let record = find(&state, &id).await?;
    match state.store.remove_source(&record.id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("source_not_found", format!("pipeline {id:?} has no source"))),
        Err(e) => Err(ApiError::store_unavailable(&e)),
    }
}

#[derive(Deserialize)]
struct CreatePipeline {
    name: String,
    #[serde(default)]
    source: Option<Value>,
    #[serde(default)]
    retention: Option<Value>,
    #[serde(default)]
    verify: Option<Value>,
}

async fn create_pipeline(State(state): State<AppState>, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: CreatePipeline = serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            ApiError::unprocessable("invalid_request", format!("expected {{\"name\": \"…\"}}: {e}"))
        } else {
            ApiError::bad_request("malformed_json", format!("malformed JSON: {e}"))
        }
    })?;
    // Checked before the pipeline exists, so a bad source creates nothing.
    let source = request.source.map(parse_source).transpose()?;
    let retention = request.retention.as_ref().map(parse_retention).transpose()?.flatten();
    let verify = request.verify.as_ref().map(parse_verify).transpose()?;
    let issued = state.store.create_pipeline(&request.name).await.map_err(|err| match err {
        StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "pipeline_exists", err.to_string()),
        StoreError::InvalidName(_) => ApiError::unprocessable("invalid_name", err.to_string()),
        other => ApiError::store_unavailable(&other),
    })?;
    if let Some(intake) = &state.intake
        && let Ok(id) = dash_domain::PipelineId::parse(&issued.record.id)
    {
        intake
            .directory()
            .insert(PipelineAuth {
                id,
                name: issued.record.name.clone(),
                secrets: vec![issued.secret.clone()],
                token_hashes: vec![issued.token.hash()],
                previous_expires_ms: None,
                provider: verify.as_ref().and_then(|(spec, secret)| {
                    Some(ProviderAuth { spec: spec.clone(), secrets: vec![secret.clone()?], previous_expires_ms: None })
                }),
            })
            .await;
    }
    let provider = verify.as_ref().map_or(Provider::StandardWebhooks, |(spec, _)| spec.provider);
    if let Some((spec, _)) = &source {
        store_source(&state, &issued.record.id, spec).await?;
    }
    let mut record = issued.record;
    if let Some((spec, secret)) = verify.as_ref().filter(|_| provider != Provider::StandardWebhooks) {
        record = store_verify(&state, &record.id, spec, secret.as_deref()).await?;
    }
    if let Some(retention) = retention {
        state.store.set_retention(&record.id, Some(retention)).await.map_err(|e| ApiError::store_unavailable(&e))?;
        record.retention = Some(retention);
    }
    let mut body = pipeline_with_source(&state, &record).await?;
    // A provider's secret is the user's own, never echoed; Dash's own is shown this once.
    if provider == Provider::StandardWebhooks {
        body["secret"] = json!(issued.secret.expose());
    }
    body["token"] = json!(issued.token.expose());
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Deserialize)]
struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

pub(crate) fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

/// Earliest and latest instant a query may name: the same range as event times (1970 to 9999).
const MIN_INSTANT_MS: i64 = 0;
const MAX_INSTANT_MS: i64 = 253_402_300_799_999;
/// Widest bucket a series may ask for.
const MAX_BUCKET_MS: i64 = 366 * 86_400_000;

/// RFC 3339 text or unix milliseconds, within [`MIN_INSTANT_MS`]..=[`MAX_INSTANT_MS`].
fn parse_instant(name: &str, raw: &str) -> Result<i64, ApiError> {
    let ms = dash_domain::parse_instant(raw).ok_or_else(|| {
        ApiError::bad_request("invalid_query", format!("{name} must be RFC 3339 or unix milliseconds"))
    })?;
    if !(MIN_INSTANT_MS..=MAX_INSTANT_MS).contains(&ms) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must lie between 1970-01-01 and 9999-12-31 (0 to {MAX_INSTANT_MS} ms)"),
        ));
    }
    Ok(ms)
}

/// A series' time window and bucket, checked: whole minutes, `from < to`, at most
/// [`MAX_POINTS`] buckets. Every step is checked arithmetic, so no input can wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesWindow {
    pub from: i64,
    pub to: i64,
    pub bucket_ms: i64,
}

impl SeriesWindow {
    pub(crate) fn parse(from: Option<&str>, to: Option<&str>, bucket: &str, now: i64) -> Result<Self, ApiError> {
        let bucket_ms = humantime::parse_duration(bucket)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .filter(|ms| (60_000..=MAX_BUCKET_MS).contains(ms) && ms % 60_000 == 0)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "bucket must be a whole number of minutes from 1m to 366days, e.g. 1m, 5m, 1h",
                )
            })?;
        let to = match to {
            Some(raw) => parse_instant("to", raw)?,
            None => now.clamp(MIN_INSTANT_MS, MAX_INSTANT_MS),
        };
        let from = match from {
            Some(raw) => parse_instant("from", raw)?,
            None => to.saturating_sub(3_600_000).max(MIN_INSTANT_MS),
        };
        // Buckets align to whole minutes.
        let from = from - from.rem_euclid(60_000);
        if to <= from {
            return Err(ApiError::bad_request("invalid_query", "to must be after from"));
        }
        let points = to.checked_sub(from).map(|span| span / bucket_ms + i64::from(span % bucket_ms != 0));
        if points.is_none_or(|n| n > MAX_POINTS) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("at most {MAX_POINTS} buckets per request; widen the bucket or narrow from..to"),
            ));
        }
        Ok(Self { from, to, bucket_ms })
    }
}

async fn series(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let bucket_text = query.bucket.unwrap_or_else(|| "1m".into());
    let window = SeriesWindow::parse(query.from.as_deref(), query.to.as_deref(), &bucket_text, dash_domain::now_ms())?;
    let record = find(&state, &id).await?;
    let SeriesWindow { from, to, bucket_ms } = window;
    let points =
        state.store.series(&record.id, from, to, bucket_ms).await.map_err(|e| ApiError::store_unavailable(&e))?;
    let filled: Vec<Value> = points.iter().map(|p| json!({ "t": format_ms(p.t), "count": p.count })).collect();
    Ok(Json(json!({
        "pipeline": record.id,
        "bucket": bucket_text,
        "from": format_ms(from),
        "to": format_ms(to),
        "points": filled,
    })))
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<u32>,
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<RecentEvents>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let record = find(&state, &id).await?;
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS);
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_EVENTS}")));
    }
    let events = state.store.recent_events(&record.id, limit).await.map_err(|e| ApiError::store_unavailable(&e))?;
    // Serialized as they are: each payload is written out verbatim, never re-parsed into a
    // `Value` (which would refuse deep nesting or numbers past a float).
    Ok(Json(RecentEvents { pipeline: record.id, events }))
}

#[derive(Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /api/pipelines/{id}/events/export?from=&to=`: the events whose time lies in `from..to`
/// (RFC 3339 or unix ms; by default all of them), oldest first, one JSON object a line, as the
/// events API shows each. Streamed a page at a time as the client reads ([`dash_store`]'s
/// `export_pages`): memory stays one page whatever the range. The first page is read before the
/// answer, so a store that is down gets a 503; one that fails later cuts the stream short (the
/// client sees the chunked body end without its last chunk, never a complete-looking file).
async fn export_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    use futures_util::{StreamExt, TryStreamExt};

    let Query(query) = query.map_err(query_error)?;
    let from = query.from.as_deref().map(|raw| parse_instant("from", raw)).transpose()?.unwrap_or(MIN_INSTANT_MS);
    let to = query.to.as_deref().map(|raw| parse_instant("to", raw)).transpose()?.unwrap_or(MAX_INSTANT_MS + 1);
    if to <= from {
        return Err(ApiError::bad_request("invalid_query", "to must be after from"));
    }
    let record = find(&state, &id).await?;
    let mut pages = Box::pin(state.store.export_pages(&record.id, from, to));
    let first = pages.try_next().await.map_err(|e| ApiError::store_unavailable(&e))?;
    let pipeline = record.id.clone();
    let body = futures_util::stream::iter(first.map(Ok)).chain(pages).map(move |page| match page {
        Ok(page) => Ok(Bytes::from(dash_store::ndjson(&page))),
        Err(err) => {
            tracing::warn!(pipeline = %pipeline, error = %err, "an export was cut short by the store");
            Err(std::io::Error::other(err))
        }
    });
    let filename = format!("{}.ndjson", record.id);
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .header(axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\""))
        .header(axum::http::header::CACHE_CONTROL, "no-store")
        .body(axum::body::Body::from_stream(body))
        .map_err(|e| ApiError::internal("export response", &e))
}

#[derive(serde::Serialize)]
struct RecentEvents {
    pipeline: String,
    events: Vec<dash_store::StoredEvent>,
}

/// Every node heard from (heartbeats), with this node's health.
async fn cluster(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Json<Value> {
    let (_, report) = crate::ops::readiness(&state, crate::ops::Detail::for_caller(&state, &headers)).await;
    let mut nodes = serde_json::to_value(state.members()).unwrap_or_default();
    if let Some(me) = nodes.as_array_mut().and_then(|n| n.iter_mut().find(|n| n["this_node"] == true)) {
        me["health"] = report["status"].clone();
    }
    Json(json!({ "nodes": nodes }))
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}
