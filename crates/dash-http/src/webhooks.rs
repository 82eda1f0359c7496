//! `POST /webhooks/{pipeline}`: the intake edge. Checks run in this order, each answering with
//! its status: pipeline (404) → credentials without the body (401: bearer token, or signature
//! headers present and timestamp fresh) → size and in-flight budget (413, 429) → signature HMAC
//! over the body (401) → content type (415) → room
//! (429/503) → JSON (400) → events (422) → admission (429/503). Room is asked before the parse,
//! waiting up to [`ROOM_WAIT`] for a commit to make some: a sender pushing past the backlog
//! bound costs no parse, and is slowed before it is sent away. Admission asks again with the
//! request's event count. Only then is the request appended to the intake log, and 202 is sent
//! once it is fsync'd.
//!
//! On a web node without intake the same route forwards: the body is read under the same
//! bounds, then handed to an ingestor by the [`Forwarder`](dash_edge::Forwarder) with the
//! client's address, and the answer is relayed as it is: the ingestor throttles failed
//! authentication on the client the edge names (only it can tell a correct delivery from a
//! failed one). With no ingestor answering, 503 with `Retry-After`.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dash_domain::{BodyError, BodyFormat, RequestIdentity, now_ms, parse_body};
use dash_ingest::{Lookup, SubmitError};
use dash_providers::{Delivery, Refusal, RefusalReason, VerifySpec};
use dash_signature::{SignatureError, SignedRequest, token_matches};
use dash_store::PipelineAuth;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::budget::BodyPermit;
use crate::client::{Client, Peer, forwarding_vouched};
use crate::throttle::Scope;
use crate::{ApiError, AppState};

/// How long a client may take to send its body (1 MiB at ~70 KiB/s).
const BODY_READ_DEADLINE: Duration = Duration::from_secs(15);
/// How long a request may wait for its fsync before it is told to retry.
const APPEND_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request may wait for backlog room before it is told to retry (429).
const ROOM_WAIT: Duration = Duration::from_millis(250);
/// Bodies larger than this are parsed off the async runtime.
const PARSE_INLINE_MAX: usize = 64 * 1024;
/// Longest request id (`webhook-id` / `Idempotency-Key`) accepted.
const REQUEST_ID_MAX: usize = 256;

/// How long a sender is asked to wait when no ingestor answered.
const NO_INGESTOR_RETRY_SECS: u64 = 5;

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/webhooks/{pipeline}", post(receive))
}

/// The web edge's route: the same path, forwarded to an ingestor.
pub(crate) fn edge_router() -> axum::Router<AppState> {
    axum::Router::new().route("/webhooks/{pipeline}", post(forward))
}

async fn forward(
    State(state): State<AppState>,
    Client(peer): Client,
    Peer(connection): Peer,
    uri: Uri,
    mut headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Ingestors believe this edge's X-Forwarded-Proto: it passes on only what the operator's
    // proxy said, never a sender's own.
    if !forwarding_vouched(&state, connection, &headers) {
        headers.remove("x-forwarded-proto");
    }
    let edge = state.edge.as_ref().expect("edge routes are mounted only with a forwarder");
    // The failed-authentication throttle is the ingestors', on the client this edge names: only
    // they can tell a correct delivery from a failed one, and a correct one is never refused.
    let (_permit, bytes) = admit_body(&state, &headers, body, peer).await?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    match edge.forward(path, &headers, bytes, peer).await {
        Ok(answer) => Ok((answer.status, answer.headers, answer.body).into_response()),
        Err(err) => {
            // The detail names private addresses: it goes to the log, not to the sender.
            tracing::warn!(error = %err, "webhook not forwarded");
            Err(ApiError::unavailable(
                "no_ingestor",
                "no ingestor could take the request; nothing was stored; retry later",
                NO_INGESTOR_RETRY_SECS,
            ))
        }
    }
}

/// Reads a body within the size limit, the in-flight budget and the client's share of it; the
/// permit holds the budget until dropped.
async fn admit_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    peer: Option<IpAddr>,
) -> Result<(BodyPermit, Bytes), ApiError> {
    let max_body = state.limits.max_body;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max_body) {
        // A client that waits for `100 Continue` has sent nothing yet: it gets the 413 at once.
        if !headers.contains_key(header::EXPECT) {
            drain(body).await;
        }
        return Err(too_large(max_body));
    }
    let budget_kib = (declared.unwrap_or(max_body) / 1024 + 1) as u32;
    let permit = state.inflight.try_take(peer, budget_kib).ok_or_else(|| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "too many requests in flight; retry later")
            .retry_after(1)
    })?;
    Ok((permit, read_body(body, max_body).await?))
}

async fn receive(
    State(state): State<AppState>,
    Client(peer): Client,
    Peer(connection): Peer,
    Path(pipeline): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let from = Sender { client: peer, connection };
    let outcome = accept(&state, &pipeline, &uri, &headers, body, from).await;
    match &outcome {
        Ok(Taken::Events(accepted)) => metrics::counter!("dash_events_accepted_total").increment(*accepted as u64),
        Ok(Taken::Challenge(_)) => {}
        Err(err) => metrics::counter!("dash_requests_rejected_total", "reason" => err.code).increment(1),
    }
    outcome.map(|taken| match taken {
        Taken::Events(accepted) => (StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))),
        Taken::Challenge(challenge) => (StatusCode::OK, Json(json!({ "challenge": challenge }))),
    })
}

/// Who sent a request: the client (by the trust rules) and the connection's own peer.
#[derive(Clone, Copy)]
struct Sender {
    client: Option<IpAddr>,
    connection: Option<IpAddr>,
}

/// What a provider's delivery says about itself beyond its signature.
#[derive(Default)]
struct Delivered {
    /// Its duplicate key.
    key: Option<String>,
    /// Its event type, where not in the payload's own `/type`.
    event_type: Option<String>,
    /// Slack's handshake challenge, when it is one.
    challenge: Option<String>,
}

/// What a delivery that was taken gets.
enum Taken {
    /// Its events are durable: 202.
    Events(usize),
    /// Slack's `url_verification` handshake, answered with its challenge (200), stored nowhere.
    Challenge(String),
}

/// A failed authentication: counted by reason (`dash_webhook_refused_total`, and the pipeline's
/// own counts in the store), then throttled: the refusal, or 429 once the client's budget for
/// this pipeline is spent. While it is, failures get the 429 without counting again.
fn refused_credentials(
    state: &AppState,
    pipeline: &str,
    peer: Option<IpAddr>,
    scope: Scope<'_>,
    err: ApiError,
) -> ApiError {
    let reason = match err.code {
        "missing_credentials" | "missing_signature_headers" | "missing_signature" => "missing_signature",
        "stale_timestamp" => "stale_timestamp",
        "invalid_token" => "bad_token",
        _ => "bad_signature",
    };
    metrics::counter!("dash_webhook_refused_total", "reason" => reason).increment(1);
    state.refusals.count(pipeline, reason, now_ms());
    match state.throttle.admit(peer, scope) {
        Err(throttled) => throttled,
        Ok(()) => state.throttle.failed(peer, scope, err),
    }
}

async fn accept(
    state: &AppState,
    pipeline: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    from: Sender,
) -> Result<Taken, ApiError> {
    let peer = from.client;
    let intake = state.intake.as_ref().expect("webhook routes are mounted only with intake");
    let received_ms = now_ms();

    let auth = match intake.directory().lookup(pipeline).await {
        Lookup::Found(auth) => auth,
        Lookup::NotFound => {
            return Err(ApiError::not_found("pipeline_not_found", format!("no pipeline {pipeline:?}")));
        }
        Lookup::Unknown => {
            return Err(ApiError::unavailable(
                "store_unavailable",
                "pipeline list unavailable while the database is down; retry later",
                5,
            ));
        }
    };

    // Everything about the credentials that needs no body is checked before it is read, so a
    // client without them cannot hold any of the body budget. The throttle answers failures
    // only: a client it blocks still gets correct credentials taken, because providers send
    // every pipeline's deliveries from shared address pools, and anyone can point a webhook
    // with a wrong secret at a pipeline from the same pool. Guessing stays out of reach: tokens
    // and Dash's secrets are random, a provider's secret is at least 16 bytes.
    // Scoped by the id the lookup found, so the name and the id share one budget.
    let scope = Scope::Pipeline(auth.id.as_str());
    let now_secs = received_ms / 1000;
    let credentials = precheck_credentials(&auth, headers, now_secs)
        .map_err(|e| refused_credentials(state, auth.id.as_str(), peer, scope, e))?;
    let (_permit, bytes) = admit_body(state, headers, body, peer).await?;
    match (credentials, &auth.provider) {
        (Credentials::Signature, _) => verify_signature(&auth, headers, &bytes, now_secs),
        (Credentials::Provider, Some(provider)) => {
            let url = signed_url(state, uri, headers, from.connection);
            let secrets: Vec<&str> = provider.secrets.iter().map(String::as_str).collect();
            let delivery = Delivery { headers, body: &bytes, url: &url, now_secs };
            provider.spec.verify(&secrets, &delivery).map_err(provider_refused)
        }
        _ => Ok(()),
    }
    .map_err(|e| refused_credentials(state, auth.id.as_str(), peer, scope, e))?;

    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let provider = auth.provider.as_ref().map(|p| &p.spec);
    let (format, bytes) = match BodyFormat::from_content_type(content_type) {
        Some(format) => (format, bytes),
        None if is_form(content_type) && provider.is_some_and(VerifySpec::takes_forms) => {
            let spec = provider.expect("checked");
            let event = spec.form_event(&bytes).map_err(|e| ApiError::unprocessable("invalid_event", e.to_string()))?;
            // Escaping can make the event longer than the form: the limit holds for it too.
            if event.len() > state.limits.max_body {
                return Err(too_large(state.limits.max_body));
            }
            (BodyFormat::Json, Bytes::from(event))
        }
        None => {
            let forms =
                if provider.is_some_and(VerifySpec::takes_forms) { ", application/x-www-form-urlencoded" } else { "" };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content type {:?} is not supported; send application/json or application/x-ndjson{forms}",
                    content_type.unwrap_or("(none)")
                ),
            ));
        }
    };
    // A provider's delivery is one JSON object; its duplicate key and its type may be inside it
    // (parsed off the async threads when it is large, as the events are below).
    let Delivered { key: provider_key, event_type, challenge } = match provider {
        Some(spec) if format == BodyFormat::Json && spec.reads_body() => {
            let event: Option<Value> = if bytes.len() <= PARSE_INLINE_MAX {
                serde_json::from_slice(&bytes).ok()
            } else {
                let body = bytes.clone();
                tokio::task::spawn_blocking(move || serde_json::from_slice(&body).ok())
                    .await
                    .map_err(|e| ApiError::internal("body parser task failed", &e))?
            };
            let event = event.as_ref();
            Delivered {
                key: spec.duplicate_key(headers, event),
                event_type: spec.event_type(headers, event),
                challenge: event.and_then(|e| spec.handshake_challenge(e)),
            }
        }
        Some(spec) => Delivered {
            key: spec.duplicate_key(headers, None),
            event_type: spec.event_type(headers, None),
            challenge: None,
        },
        None => Delivered::default(),
    };
    if let Some(challenge) = challenge {
        return Ok(Taken::Challenge(challenge));
    }

    let permit = intake.permit(&auth.id, tokio::time::Instant::now() + ROOM_WAIT);
    if !bytes.is_empty() {
        permit.wait_for_room().await.map_err(refused)?;
    }
    let request_id = match &provider_key {
        Some(key) => Some(key.clone()),
        None => request_id(headers)?,
    };
    let events = if bytes.len() <= PARSE_INLINE_MAX {
        parse_body(format, &bytes, &RequestIdentity { request_id: request_id.as_deref(), received_ms })
    } else {
        tokio::task::spawn_blocking(move || {
            parse_body(format, &bytes, &RequestIdentity { request_id: request_id.as_deref(), received_ms })
        })
        .await
        .map_err(|e| ApiError::internal("body parser task failed", &e))?
    }
    .map_err(|err| match err {
        BodyError::Malformed { .. } => ApiError::bad_request("malformed_json", err.to_string()),
        BodyError::Invalid { .. } => ApiError::unprocessable("invalid_event", err.to_string()),
    })?;
    // The provider's key is the delivery's identity, whatever the body's own `id` says, so a
    // redelivery is stored once. Its type, named outside the payload's own `/type`, goes with
    // each of its events.
    let mut events = events;
    if let (Some(key), [event]) = (provider_key, events.as_mut_slice()) {
        event.id = key;
    }
    if let Some(event_type) = event_type {
        for event in &mut events {
            event.event_type = Some(event_type.clone());
        }
    }

    let submitted =
        tokio::time::timeout(APPEND_DEADLINE, permit.submit(events)).await.unwrap_or(Err(SubmitError::LogUnavailable));
    submitted.map(Taken::Events).map_err(refused)
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The URL the sender posted to, as it sees it: `DASH_PUBLIC_URL` and the path, else the
/// scheme of `X-Forwarded-Proto` (`http` without one) and the host of `X-Forwarded-Host` (a web
/// edge passes the sender's on) or `Host`. The forwarded headers count only from the operator's
/// proxy or a known edge: anyone else could make a signature meant for another endpoint fit.
fn signed_url(state: &AppState, uri: &Uri, headers: &HeaderMap, connection: Option<IpAddr>) -> String {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if let Some(base) = &state.limits.public_url {
        return format!("{base}{path}");
    }
    let forwarded = forwarding_vouched(state, connection, headers);
    let first =
        |name: &str| header_str(headers, name).filter(|_| forwarded).and_then(|v| v.split(',').next()).map(str::trim);
    let proto = first("x-forwarded-proto").filter(|p| *p == "https" || *p == "http").unwrap_or("http");
    let host = first("x-forwarded-host").or_else(|| header_str(headers, "host")).unwrap_or_default();
    format!("{proto}://{host}{path}")
}

/// A provider's refusal as a 401 naming the header expected.
fn provider_refused(refusal: Refusal) -> ApiError {
    let code = match refusal.reason {
        RefusalReason::MissingSignature => "missing_signature",
        RefusalReason::BadSignature => "invalid_signature",
        RefusalReason::StaleTimestamp => "stale_timestamp",
        RefusalReason::BadToken => "invalid_token",
    };
    ApiError::unauthorized(code, refusal.message)
}

/// The answer to a request intake did not take.
fn refused(err: SubmitError) -> ApiError {
    let retry = err.retry_after_secs();
    match err {
        SubmitError::Backlog { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "backlog_full", err.to_string()).retry_after(retry)
        }
        SubmitError::SpoolFull => ApiError::unavailable("intake_log_full", err.to_string(), retry),
        SubmitError::DiskFull => ApiError::unavailable("intake_disk_full", err.to_string(), retry),
        SubmitError::LogUnavailable | SubmitError::ShuttingDown => {
            ApiError::unavailable("intake_unavailable", err.to_string(), retry)
        }
    }
}

fn too_large(max_body: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than the limit of {max_body} bytes"),
    )
}

/// Most of a refused body read and thrown away, and for how long, before the refusal is sent:
/// a client that writes its whole body before reading (most do) then gets the 413 rather than a
/// connection reset.
const DRAIN_MAX: usize = 8 * 1024 * 1024;
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

async fn drain(body: Body) {
    let mut stream = Limited::new(body, DRAIN_MAX);
    let _ = tokio::time::timeout(DRAIN_DEADLINE, async { while let Some(Ok(_)) = stream.frame().await {} }).await;
}

async fn read_body(body: Body, max_body: usize) -> Result<Bytes, ApiError> {
    let collected =
        tokio::time::timeout(BODY_READ_DEADLINE, Limited::new(body, max_body).collect()).await.map_err(|_| {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "request body took too long to arrive")
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max_body)),
        Err(err) => Err(ApiError::bad_request("unreadable_body", format!("request body could not be read: {err}"))),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `webhook-id`, else `Idempotency-Key`.
fn request_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(id) = standard_header(headers, StandardHeader::Id).or_else(|| header_str(headers, "idempotency-key"))
    else {
        return Ok(None);
    };
    let id = id.trim();
    // The same rule as an event's own `id` field: no control characters (a tab included).
    if id.is_empty() || id.len() > REQUEST_ID_MAX || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_request_id",
            format!(
                "webhook-id / Idempotency-Key must be 1 to {REQUEST_ID_MAX} characters, none of them control characters"
            ),
        ));
    }
    Ok(Some(id.to_owned()))
}

/// How a request proves it may post to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    /// A valid bearer token: nothing more to check.
    Token,
    /// Standard Webhooks headers that pass every check but the HMAC, which needs the body.
    Signature,
    /// A provider's signature that passes every check but the one over the body.
    Provider,
}

/// A Standard Webhooks header: `webhook-{name}`, or Svix's `svix-{name}` alias (senders that go
/// through Svix sign the same way under those names).
fn standard_header(headers: &HeaderMap, name: StandardHeader) -> Option<&str> {
    let (standard, svix) = match name {
        StandardHeader::Id => ("webhook-id", "svix-id"),
        StandardHeader::Timestamp => ("webhook-timestamp", "svix-timestamp"),
        StandardHeader::Signature => ("webhook-signature", "svix-signature"),
    };
    header_str(headers, standard).or_else(|| header_str(headers, svix))
}

/// The three Standard Webhooks headers, each under its two names.
#[derive(Clone, Copy)]
enum StandardHeader {
    Id,
    Timestamp,
    Signature,
}

fn signed_request(headers: &HeaderMap) -> SignedRequest<'_> {
    SignedRequest {
        msg_id: standard_header(headers, StandardHeader::Id),
        timestamp: standard_header(headers, StandardHeader::Timestamp),
        signature: standard_header(headers, StandardHeader::Signature),
    }
}

fn signature_refused(err: SignatureError) -> ApiError {
    let code = match err {
        SignatureError::MissingHeaders => "missing_signature_headers",
        SignatureError::BadTimestamp => "invalid_timestamp",
        SignatureError::StaleTimestamp => "stale_timestamp",
        SignatureError::NoMatch | SignatureError::BadSecret => "invalid_signature",
    };
    ApiError::unauthorized(code, err.to_string())
}

/// A matching bearer token, or Standard Webhooks headers that are complete, fresh and carry a
/// `v1` signature; either suffices. Checked before the body is read.
fn precheck_credentials(auth: &PipelineAuth, headers: &HeaderMap, now_secs: i64) -> Result<Credentials, ApiError> {
    let bearer = crate::auth::bearer_token(headers);
    let hashes: Vec<&str> = auth.token_hashes.iter().map(String::as_str).collect();
    if bearer.is_some_and(|token| token_matches(token, &hashes)) {
        return Ok(Credentials::Token);
    }
    if let Some(provider) = &auth.provider {
        provider.spec.precheck(headers, now_secs).map_err(provider_refused)?;
        return Ok(Credentials::Provider);
    }
    let signed = signed_request(headers);
    if !signed.is_present() {
        return Err(match bearer {
            Some(_) => ApiError::unauthorized("invalid_token", "the bearer token is not valid for this pipeline"),
            None => ApiError::unauthorized(
                "missing_credentials",
                "sign the request (webhook-id, webhook-timestamp, webhook-signature) or send Authorization: Bearer <token>",
            ),
        });
    }
    signed.precheck(now_secs).map_err(signature_refused)?;
    Ok(Credentials::Signature)
}

/// The signature's HMAC over the body, under any of the pipeline's secrets.
fn verify_signature(auth: &PipelineAuth, headers: &HeaderMap, body: &[u8], now_secs: i64) -> Result<(), ApiError> {
    let secrets: Vec<&_> = auth.secrets.iter().collect();
    signed_request(headers).verify(&secrets, body, now_secs).map_err(signature_refused)
}
