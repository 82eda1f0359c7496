//! The views API: `…/views` (make, list), `…/views/{view}` (read, change, delete), and a view's
//! `series` and `groups` over a range.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use dash_domain::format_ms;
use dash_store::{GroupsRead, PutMode, StoreError, ViewRecord};
use dash_views::{Cell, InvalidView, ViewSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{SeriesWindow, find, query_error, read_json};
use crate::{ApiError, AppState};

/// Most stored states one read of a view merges; past it the caller narrows the range or picks
/// a group. A sketch state (distinct, percentiles) is up to a few KiB, a plain one a few bytes.
pub(crate) const MAX_STATES_READ: usize = 500_000;
pub(crate) const MAX_SKETCH_STATES_READ: usize = 50_000;

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/pipelines/{id}/views", get(list).post(create))
        .route("/api/pipelines/{id}/views/{view}", get(read).patch(change).delete(delete))
        .route("/api/pipelines/{id}/views/{view}/series", get(series))
        .route("/api/pipelines/{id}/views/{view}/groups", get(groups))
}

/// A view as the API shows it.
pub(crate) fn view_json(record: &ViewRecord) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    value["backfill"]["fraction"] = json!(record.backfill.fraction());
    value
}

fn invalid(err: InvalidView) -> ApiError {
    ApiError::unprocessable("invalid_view", err.to_string()).field(err.field)
}

fn store_error(err: StoreError, view: &str) -> ApiError {
    match err {
        StoreError::NotFound(_) => ApiError::not_found("view_not_found", format!("no view {view:?}")),
        StoreError::Conflict(_) => {
            ApiError::new(StatusCode::CONFLICT, "view_exists", format!("a view {view:?} exists"))
        }
        StoreError::InvalidView(message) => {
            let field = if message.starts_with("name") { "name" } else { "view" };
            ApiError::unprocessable("invalid_view", message).field(field)
        }
        other => ApiError::store_unavailable(&other),
    }
}

async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let pipeline = find(&state, &id).await?;
    let views = state.store.list_views(&pipeline.id).await.map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(Json(json!({ "pipeline": pipeline.id, "views": views.iter().map(view_json).collect::<Vec<_>>() })))
}

/// `POST …/views`: `{"name": "revenue", "aggregate": "sum", "field": "/amount", …}`.
async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Value::Object(mut fields) = read_json(&body)? else {
        return Err(ApiError::unprocessable(
            "invalid_view",
            "expected a JSON object such as {\"name\": \"orders\", \"aggregate\": \"count\"}",
        ));
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(ApiError::unprocessable("invalid_view", "name: a view needs a name").field("name")),
    };
    dash_views::check_view_name(&name).map_err(invalid)?;
    let spec = ViewSpec::from_json(Value::Object(fields)).map_err(invalid)?;
    let pipeline = find(&state, &id).await?;
    let (record, _) =
        state.store.put_view(&pipeline.id, &name, &spec, PutMode::Create).await.map_err(|e| store_error(e, &name))?;
    Ok((StatusCode::CREATED, Json(view_json(&record))))
}

async fn find_view(state: &AppState, id: &str, view: &str) -> Result<ViewRecord, ApiError> {
    let pipeline = find(state, id).await?;
    match state.store.find_view(&pipeline.id, view).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(ApiError::not_found("view_not_found", format!("no view {view:?}"))),
        Err(e) => Err(ApiError::store_unavailable(&e)),
    }
}

async fn read(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view_json(&find_view(&state, &id, &view).await?)))
}

/// `PATCH …/views/{view}`: the fields given replace the view's (`null` removes an optional one).
/// A change of what the view holds computes its history again.
async fn change(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Value::Object(patch) = read_json(&body)? else {
        return Err(ApiError::unprocessable("invalid_view", "expected a JSON object of the fields to change"));
    };
    let record = find_view(&state, &id, &view).await?;
    let mut fields = match serde_json::to_value(&record.spec) {
        Ok(Value::Object(fields)) => fields,
        _ => return Err(ApiError::internal("a view's definition did not serialize", &"not an object")),
    };
    for (key, value) in patch {
        if key == "name" {
            return Err(ApiError::unprocessable("invalid_view", "name: a view's name cannot change").field("name"));
        }
        // `null` takes a field out; a name that is no field of a definition goes in as it
        // is, null or not, for the definition's own check to refuse.
        if value.is_null() && ViewSpec::FIELDS.contains(&key.as_str()) {
            fields.remove(&key);
        } else {
            fields.insert(key, value);
        }
    }
    let spec = ViewSpec::from_json(Value::Object(fields)).map_err(invalid)?;
    let (record, _) = state
        .store
        .put_view(&record.pipeline, &view, &spec, PutMode::Replace)
        .await
        .map_err(|e| store_error(e, &view))?;
    Ok(Json(view_json(&record)))
}

async fn delete(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let pipeline = find(&state, &id).await?;
    match state.store.delete_view(&pipeline.id, &view).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("view_not_found", format!("no view {view:?}"))),
        Err(e) => Err(store_error(e, &view)),
    }
}

#[derive(Deserialize)]
struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
    group: Option<String>,
}

/// The most states one read of a view of `aggregate` takes in: [`MAX_STATES_READ`], or
/// [`MAX_SKETCH_STATES_READ`] for sketches (each holds up to a few KiB).
fn states_bound(aggregate: dash_views::Aggregate) -> usize {
    match aggregate {
        dash_views::Aggregate::Count
        | dash_views::Aggregate::Sum
        | dash_views::Aggregate::Avg
        | dash_views::Aggregate::Min
        | dash_views::Aggregate::Max => MAX_STATES_READ,
        _ => MAX_SKETCH_STATES_READ,
    }
}

/// A view's states over a range, each part from the coarsest level that answers buckets of
/// `bucket_ms` from `from` (`None`: one bucket), bounded by [`states_bound`]: the store's
/// answer, for the API (below) and the cards.
pub(crate) async fn bounded_states(
    state: &AppState,
    record: &ViewRecord,
    (from, to): (i64, i64),
    bucket_ms: Option<i64>,
    groups: GroupsRead<'_>,
) -> Result<Vec<(i64, String, Cell)>, StoreError> {
    let bound = states_bound(record.spec.aggregate);
    state.store.view_states(&record.pipeline, &record.name, from, to, bucket_ms, groups, bound).await
}

/// [`bounded_states`] with the store's refusals as the API's errors.
pub(crate) async fn read_states(
    state: &AppState,
    record: &ViewRecord,
    (from, to): (i64, i64),
    bucket_ms: Option<i64>,
    groups: GroupsRead<'_>,
) -> Result<Vec<(i64, String, Cell)>, ApiError> {
    match bounded_states(state, record, (from, to), bucket_ms, groups).await {
        Ok(minutes) => Ok(minutes),
        Err(StoreError::ReadTooLarge) => Err(ApiError::unprocessable(
            "range_too_large",
            format!(
                "the range holds more than {} view states (or {} MiB of them); narrow from..to or pick a group",
                states_bound(record.spec.aggregate),
                dash_store::MAX_VIEW_READ_BYTES >> 20
            ),
        )),
        Err(err @ StoreError::UnreadableView(_)) => {
            Err(ApiError::internal("a view's stored state is unreadable", &err))
        }
        Err(err) => Err(ApiError::store_unavailable(&err)),
    }
}

/// `GET …/views/{view}/series?from=&to=&bucket=&group=`: every bucket, the view's value over all
/// groups (or over `group`).
async fn series(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    if query.group.as_ref().is_some_and(|g| g.chars().count() > dash_views::MAX_GROUP_LEN || g.contains('\0')) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("group: a group name has at most {} characters and no NUL", dash_views::MAX_GROUP_LEN),
        ));
    }
    let bucket_text = query.bucket.unwrap_or_else(|| "1m".into());
    let window = SeriesWindow::parse(query.from.as_deref(), query.to.as_deref(), &bucket_text, dash_domain::now_ms())?;
    let record = find_view(&state, &id, &view).await?;
    let groups = query.group.as_deref().map_or(GroupsRead::Merged, GroupsRead::One);
    let minutes = read_states(&state, &record, (window.from, window.to), Some(window.bucket_ms), groups).await?;
    let aggregate = record.spec.aggregate;
    let merged = dash_store::merge_by_minute(minutes, aggregate);
    let points = dash_views::bucket(aggregate, window.from, window.to, window.bucket_ms, &merged);
    let points: Vec<Value> = points
        .iter()
        .map(|p| json!({ "t": format_ms(p.t), "value": p.value, "n": p.n, "skipped": p.skipped }))
        .collect();
    Ok(Json(json!({
        "pipeline": record.pipeline,
        "view": record.name,
        "aggregate": aggregate.as_str(),
        "group": query.group,
        "bucket": bucket_text,
        "from": format_ms(window.from),
        "to": format_ms(window.to),
        "backfill": view_json(&record)["backfill"],
        "points": points,
    })))
}

#[derive(Deserialize)]
struct GroupsQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET …/views/{view}/groups?from=&to=`: every group over the range, largest first, with its
/// share of the total.
async fn groups(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
    query: Result<Query<GroupsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    // The range checked as a series' is; only from..to count here, so the widest bucket (no
    // range between 1970 and 9999 holds more buckets of it than a series may have).
    let window = SeriesWindow::parse(query.from.as_deref(), query.to.as_deref(), "366days", dash_domain::now_ms())?;
    let record = find_view(&state, &id, &view).await?;
    let minutes = read_states(&state, &record, (window.from, window.to), None, GroupsRead::Each).await?;
    let aggregate = record.spec.aggregate;
    let mut by_group: HashMap<String, Cell> = HashMap::new();
    let mut total = Cell::empty(aggregate);
    for (_, group, cell) in minutes {
        total.merge(&cell);
        by_group.entry(group).or_insert_with(|| Cell::empty(aggregate)).merge(&cell);
    }
    let ranked = dash_views::rank_groups(aggregate, by_group);
    Ok(Json(json!({
        "pipeline": record.pipeline,
        "view": record.name,
        "aggregate": aggregate.as_str(),
        "from": format_ms(window.from),
        "to": format_ms(window.to),
        "total": { "value": total.value(aggregate), "n": total.n, "skipped": total.skipped },
        "groups": ranked,
    })))
}
