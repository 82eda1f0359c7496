//! The boards API: `/api/boards` (make, list) and `/api/boards/{name}` (read, change, delete).
//! A board's shape is checked by `dash_boards`; what its panels name (a pipeline, a view) by the
//! store (`Store::resolve_board`), which keeps a pipeline named by its name by its id.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use dash_boards::{BoardSpec, InvalidBoard};
use dash_store::{BoardRecord, PutMode, StoreError};
use serde_json::{Value, json};

use crate::api::read_json;
use crate::{ApiError, AppState};

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/boards", get(list).post(create))
        .route("/api/boards/{name}", get(read).patch(change).delete(delete))
}

/// How often a change is made again on a board someone else changed meanwhile before it is
/// refused (each try reads the board, checks the change and saves it if the board is as read).
pub(crate) const CHANGE_ATTEMPTS: usize = 50;

fn invalid(err: InvalidBoard) -> ApiError {
    ApiError::unprocessable("invalid_board", err.to_string()).field(err.field)
}

fn store_error(err: StoreError, name: &str) -> ApiError {
    match err {
        StoreError::NotFound(_) => board_not_found(name),
        StoreError::Conflict(_) => {
            ApiError::new(StatusCode::CONFLICT, "board_exists", format!("a board {name:?} exists"))
        }
        StoreError::InvalidBoard(message) => ApiError::unprocessable("invalid_board", message).field("name"),
        StoreError::BoardReference(err) => invalid(err),
        other => ApiError::store_unavailable(&other),
    }
}

pub(crate) fn board_not_found(name: &str) -> ApiError {
    ApiError::not_found("board_not_found", format!("no board {name:?}"))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let boards = state.store.list_boards().await.map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(Json(json!({ "boards": boards })))
}

/// `POST /api/boards`: `{"name": "ops", "range": "24h", "panels": [...]}`.
async fn create(State(state): State<AppState>, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Value::Object(mut fields) = read_json(&body)? else {
        return Err(ApiError::unprocessable(
            "invalid_board",
            "expected a JSON object such as {\"name\": \"ops\", \"panels\": []}",
        ));
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(ApiError::unprocessable("invalid_board", "name: a board needs a name").field("name")),
    };
    dash_boards::check_board_name(&name).map_err(invalid)?;
    let spec = BoardSpec::from_json(Value::Object(fields)).map_err(invalid)?;
    let spec = state.store.resolve_board(spec, &[]).await.map_err(|e| store_error(e, &name))?;
    state.store.put_board(&name, &spec, PutMode::Create).await.map_err(|e| store_error(e, &name))?;
    Ok((StatusCode::CREATED, Json(json!(find_board(&state, &name).await?))))
}

pub(crate) async fn find_board(state: &AppState, name: &str) -> Result<BoardRecord, ApiError> {
    match state.store.find_board(name).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(board_not_found(name)),
        Err(e) => Err(ApiError::store_unavailable(&e)),
    }
}

async fn read(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(find_board(&state, &name).await?)))
}

/// Why [`change_board`] saved nothing: the answer, and the board as last read (for the editor
/// to show again) when there was one.
pub(crate) struct Refusal {
    pub(crate) error: ApiError,
    pub(crate) board: Option<BoardRecord>,
}

/// The one way a board is changed: `change` is applied to the board's JSON as read, the result
/// checked as a new board is (its shape, then what its panels name), and saved only if the board
/// is still at the version it was read at; else all of it is done again on the board as it now
/// is, up to [`CHANGE_ATTEMPTS`] times (then 409 `board_changed`).
///
/// `seen`: the version a change that names a panel by its place was made from. Such a change is
/// refused (409) once the board is at another version, since that place may now hold another
/// panel. A change that names no place (a setting, a panel added at the end) passes `None`.
pub(crate) async fn change_board(
    state: &AppState,
    name: &str,
    seen: Option<i64>,
    change: impl Fn(&mut serde_json::Map<String, Value>) -> Result<(), String>,
) -> Result<(), Refusal> {
    let refused = |error: ApiError, board: &BoardRecord| Refusal { error, board: Some(board.clone()) };
    let changed =
        || ApiError::new(StatusCode::CONFLICT, "board_changed", "the board changed under this change; send it again");
    let mut last = None;
    for _ in 0..CHANGE_ATTEMPTS {
        let record = find_board(state, name).await.map_err(|error| Refusal { error, board: None })?;
        if seen.is_some_and(|seen| seen != record.version) {
            return Err(refused(changed(), &record));
        }
        let Ok(Value::Object(mut fields)) = serde_json::to_value(&record.spec) else {
            return Err(refused(ApiError::internal("a board did not serialize", &"not an object"), &record));
        };
        if let Err(message) = change(&mut fields) {
            return Err(refused(ApiError::unprocessable("invalid_board", message), &record));
        }
        let spec = BoardSpec::from_json(Value::Object(fields)).map_err(|e| refused(invalid(e), &record))?;
        let spec = match state.store.resolve_board(spec, &record.spec.panels).await {
            Ok(spec) => spec,
            Err(err) => return Err(refused(store_error(err, name), &record)),
        };
        match state.store.replace_board_at(name, &spec, record.version).await {
            Ok(true) => return Ok(()),
            // Changed meanwhile: read it again (where `seen` is set, that read refuses).
            Ok(false) => last = Some(record),
            Err(err) => return Err(Refusal { error: store_error(err, name), board: None }),
        }
    }
    Err(Refusal { error: changed(), board: last })
}

/// `PATCH /api/boards/{name}`: the fields given replace the board's (`title: null` removes the
/// title); the name cannot change. Saved through [`change_board`].
async fn change(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let Value::Object(patch) = read_json(&body)? else {
        return Err(ApiError::unprocessable("invalid_board", "expected a JSON object of the fields to change"));
    };
    if patch.contains_key("name") {
        return Err(ApiError::unprocessable("invalid_board", "name: a board's name cannot change").field("name"));
    }
    change_board(&state, &name, None, |fields| {
        fields.extend(patch.clone());
        Ok(())
    })
    .await
    .map_err(|refusal| refusal.error)?;
    Ok(Json(json!(find_board(&state, &name).await?)))
}

async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    match state.store.delete_board(&name).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(board_not_found(&name)),
        Err(e) => Err(store_error(e, &name)),
    }
}
