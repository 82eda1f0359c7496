//! A board's read-only share links. A link carries a random token (`/share/<token>`); the store
//! keeps only its SHA-256, with the board and the expiry. Whoever holds a live link sees that
//! board (`/share/<token>`, its panels' fragments) and follows its pipelines over
//! `/live?share=<token>`: no other page, API route or subscription. An expired, revoked or
//! unknown link is 401, and a client that keeps presenting bad links is throttled like a wrong
//! admin token.
//!
//! API: `POST/GET /api/boards/{name}/shares` (make, list), `DELETE …/shares/{id}` (revoke).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use dash_domain::now_ms;
use dash_signature::BearerToken;
use dash_store::{BoardRecord, ShareRecord, StoreError};
use serde_json::{Value, json};

use crate::api::read_json;
use crate::throttle::Scope;
use crate::{ApiError, AppState};

/// How long a link lasts when no `expires_in` is given.
pub(crate) const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 86_400);
/// The longest a link may last.
const MAX_EXPIRY: Duration = Duration::from_secs(10 * 365 * 86_400);

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/boards/{name}/shares", get(list).post(create))
        .route("/api/boards/{name}/shares/{id}", delete(revoke))
}

/// A share link's path on this site.
pub(crate) fn share_path(token: &str) -> String {
    format!("/share/{token}")
}

/// `expires_in` as written (`7days`, `12h`): 1 second to 10 years.
pub(crate) fn parse_expiry(text: &str) -> Result<Duration, ApiError> {
    let refused = || {
        ApiError::unprocessable("invalid_share", "expires_in: a duration from 1s to 10 years, e.g. 7days")
            .field("expires_in")
    };
    let expiry = humantime::parse_duration(text.trim()).map_err(|_| refused())?;
    if expiry < Duration::from_secs(1) || expiry > MAX_EXPIRY {
        return Err(refused());
    }
    Ok(expiry)
}

/// Makes a link to `board` lasting `expiry`; the token is in the answer only.
pub(crate) async fn issue(state: &AppState, board: &str, expiry: Duration) -> Result<(ShareRecord, String), ApiError> {
    let token = BearerToken::generate();
    let expires_ms = now_ms().saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX));
    match state.store.create_share(board, &token.hash(), expires_ms).await {
        Ok(record) => Ok((record, token.expose().to_owned())),
        Err(StoreError::NotFound(_)) => Err(crate::boards::board_not_found(board)),
        Err(StoreError::InvalidBoard(message)) => Err(ApiError::new(StatusCode::CONFLICT, "too_many_shares", message)),
        Err(err) => Err(ApiError::store_unavailable(&err)),
    }
}

fn share_json(record: &ShareRecord, now: i64) -> Value {
    let mut value = json!(record);
    value["expired"] = json!(record.expires_ms <= now);
    value
}

async fn list(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let board = crate::boards::find_board(&state, &name).await?;
    let shares = state.store.list_shares(&board.name).await.map_err(|e| ApiError::store_unavailable(&e))?;
    let now = now_ms();
    Ok(Json(json!({ "board": board.name, "shares": shares.iter().map(|s| share_json(s, now)).collect::<Vec<_>>() })))
}

/// `POST /api/boards/{name}/shares`: `{"expires_in": "7days"}` (default 30 days).
async fn create(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields = if body.is_empty() { json!({}) } else { read_json(&body)? };
    let Value::Object(mut fields) = fields else {
        return Err(ApiError::unprocessable(
            "invalid_share",
            "expected a JSON object such as {\"expires_in\": \"7days\"}",
        ));
    };
    let expiry = match fields.remove("expires_in") {
        None | Some(Value::Null) => DEFAULT_EXPIRY,
        Some(Value::String(text)) => parse_expiry(&text)?,
        Some(_) => return Err(parse_expiry("").unwrap_err()),
    };
    if let Some(key) = fields.keys().next() {
        return Err(ApiError::unprocessable("invalid_share", format!("{key}: unknown field (expected expires_in)"))
            .field(key.clone()));
    }
    let (record, token) = issue(&state, &name, expiry).await?;
    let path = share_path(&token);
    let url = match &state.limits.public_url {
        Some(base) => format!("{base}{path}"),
        None => path.clone(),
    };
    let mut value = share_json(&record, now_ms());
    value["token"] = json!(token);
    value["path"] = json!(path);
    value["url"] = json!(url);
    Ok((StatusCode::CREATED, Json(value)))
}

async fn revoke(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    match state.store.delete_share(&name, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("share_not_found", format!("board {name:?} has no share link {id:?}"))),
        Err(err) => Err(ApiError::store_unavailable(&err)),
    }
}

/// The board a share token opens, if the link is live. Bad tokens count against the client
/// as failed admin logins do.
/// The answer is 401 (`share_link_closed`), 429 or 503.
pub(crate) async fn open(
    state: &AppState,
    peer: Option<std::net::IpAddr>,
    token: &str,
) -> Result<BoardRecord, ApiError> {
    state.throttle.admit(peer, Scope::Admin)?;
    let refused = |state: &AppState| {
        let refusal = ApiError::unauthorized("share_link_closed", "this share link is unknown, expired or revoked");
        state.throttle.failed(peer, Scope::Admin, refusal)
    };
    // A token is `dash_` and 48 hex digits; anything else never reaches the store.
    if token.len() > 64 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(refused(state));
    }
    let share = match state.store.find_share(&dash_signature::hash_token(token)).await {
        Ok(Some(share)) if share.expires_ms > now_ms() => share,
        Ok(_) => return Err(refused(state)),
        Err(err) => return Err(ApiError::store_unavailable(&err)),
    };
    match state.store.find_board(&share.board).await {
        Ok(Some(board)) => Ok(board),
        Ok(None) => Err(refused(state)),
        Err(err) => Err(ApiError::store_unavailable(&err)),
    }
}
