//! The views on the dashboard: each view's card (also a fragment the script re-fetches), the
//! field explorer's rows, and the form that makes a view and the button that deletes one.

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dash_store::{GroupsRead, PutMode, StoreError, ViewRecord};
use dash_views::{Aggregate, Cell};
use dash_web::ChartRange;
use dash_web::views::{DRAWN_GROUPS, FieldLine, GroupLine, ViewCard, ViewForm, ViewsPart};
use serde::Deserialize;

use crate::AppState;
use crate::pages::{PageError, PageQuery, chrome, find, html};
use crate::views::bounded_states;

/// Groups listed in a card's table.
const LISTED_GROUPS: usize = 10;
/// The series of a stacked chart that holds every group past the ones drawn apart.
const OTHER_GROUPS: &str = "other groups";

pub(crate) fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/pipelines/{id}/views", post(create))
        .route("/pipelines/{id}/views/new", get(new_form))
        .route("/pipelines/{id}/views/{view}/card", get(card))
        .route("/pipelines/{id}/views/{view}/delete", post(delete))
}

/// A view's card over `range`: its value, a bucket per bar (stacked by its top groups for
/// `count` and `sum`), its groups ranked.
pub(crate) async fn load_card(state: &AppState, record: &ViewRecord, range: ChartRange) -> Result<ViewCard, PageError> {
    match card_figures(state, record, range).await {
        Ok(figures) => Ok(figures),
        // Too much to read for this range: the card says so, the page goes on.
        Err(StoreError::ReadTooLarge) => Ok(unavailable_card(
            record,
            range,
            "Too many groups and minutes to read at once over this range: choose a shorter one.",
        )),
        Err(err) => Err(PageError::store(err)),
    }
}

/// The reads of a card, each from the coarsest levels that answer it: the groups over the whole
/// range (one bucket), the top groups' series one by one, and the series of all groups together.
async fn card_figures(state: &AppState, record: &ViewRecord, range: ChartRange) -> Result<ViewCard, StoreError> {
    let (from, to) = range.window(dash_domain::now_ms());
    let bucket_ms = range.bucket_ms();
    let aggregate = record.spec.aggregate;
    let series_of = |states: Vec<(i64, String, Cell)>| {
        let merged = dash_store::merge_by_minute(states, aggregate);
        dash_views::bucket(aggregate, from, to, bucket_ms, &merged)
    };
    let grouped = record.spec.group_by.is_some();
    let mut total = Cell::empty(aggregate);
    let mut ranked = Vec::new();
    if grouped {
        let mut by_group: HashMap<String, Cell> = HashMap::new();
        for (_, group, cell) in bounded_states(state, record, (from, to), None, GroupsRead::Each).await? {
            total.merge(&cell);
            by_group.entry(group).or_insert_with(|| Cell::empty(aggregate)).merge(&cell);
        }
        ranked = dash_views::rank_groups(aggregate, by_group);
    }
    let stacked = aggregate.additive() && grouped;
    let series = if stacked {
        // The top groups each in a colour; past them, the rest together in one, so the bars add
        // up to the whole: the whole's series less the drawn groups' (count and sum add up).
        let drawn = if ranked.len() > DRAWN_GROUPS { DRAWN_GROUPS - 1 } else { ranked.len() };
        let mut series: Vec<(String, Vec<Option<f64>>)> = Vec::with_capacity(drawn + 1);
        for g in ranked.iter().take(drawn) {
            let points =
                series_of(bounded_states(state, record, (from, to), Some(bucket_ms), GroupsRead::One(&g.group)).await?);
            series.push((g.group.clone(), points.into_iter().map(|p| p.value).collect()));
        }
        if ranked.len() > drawn {
            let whole =
                series_of(bounded_states(state, record, (from, to), Some(bucket_ms), GroupsRead::Merged).await?);
            let rest = whole
                .iter()
                .enumerate()
                .map(|(i, point)| {
                    let whole = point.value?;
                    let named: f64 = series.iter().filter_map(|(_, values)| values.get(i).copied().flatten()).sum();
                    let rest = whole - named;
                    // What rounding leaves of a sum that is all drawn.
                    Some(if rest.abs() <= 1e-9 * whole.abs().max(1.0) { 0.0 } else { rest })
                })
                .collect();
            series.push((OTHER_GROUPS.to_owned(), rest));
        }
        series
    } else {
        let states = bounded_states(state, record, (from, to), Some(bucket_ms), GroupsRead::Merged).await?;
        if !grouped {
            for (_, _, cell) in &states {
                total.merge(cell);
            }
        }
        vec![(String::new(), series_of(states).into_iter().map(|p| p.value).collect())]
    };
    let groups = if grouped {
        ranked
            .into_iter()
            .take(LISTED_GROUPS)
            .map(|g| GroupLine { group: g.group, value: g.value, n: g.n, share: g.share })
            .collect()
    } else {
        Vec::new()
    };
    Ok(ViewCard {
        pipeline: record.pipeline.clone(),
        name: record.name.clone(),
        describe: record.describe.clone(),
        aggregate: aggregate.as_str().to_owned(),
        range,
        computing: (!record.backfill.done).then(|| record.backfill.fraction()),
        total: total.value(aggregate),
        n: total.n,
        skipped: total.skipped,
        from_ms: from,
        bucket_ms,
        series,
        stacked,
        groups,
        can_edit: true,
        unavailable: None,
    })
}

/// A card that shows why it has no figures instead of them.
fn unavailable_card(record: &ViewRecord, range: ChartRange, why: &str) -> ViewCard {
    let (from, _) = range.window(dash_domain::now_ms());
    ViewCard {
        pipeline: record.pipeline.clone(),
        name: record.name.clone(),
        describe: record.describe.clone(),
        aggregate: record.spec.aggregate.as_str().to_owned(),
        range,
        computing: None,
        total: None,
        n: 0,
        skipped: 0,
        from_ms: from,
        bucket_ms: range.bucket_ms(),
        series: Vec::new(),
        stacked: false,
        groups: Vec::new(),
        can_edit: true,
        unavailable: Some(why.to_owned()),
    }
}

/// Every card of a pipeline and the field explorer over the page's latest events (their
/// payloads, and the types of those that have one).
pub(crate) async fn load_views(
    state: &AppState,
    pipeline: &str,
    range: ChartRange,
    payloads: &[&str],
    types: &[&str],
) -> Result<ViewsPart, PageError> {
    let records = state.store.list_views(pipeline).await.map_err(PageError::store)?;
    let mut cards = Vec::with_capacity(records.len());
    // One card that cannot be read never takes the page down: it says so, and retries.
    for record in &records {
        let card = match load_card(state, record, range).await {
            Ok(card) => card,
            Err(err) => {
                let (PageError::StoreDown(err) | PageError::NotFound(err) | PageError::Missing(err)) = err;
                if let Some(held_back) = state.store_warnings.admit() {
                    tracing::warn!(view = %record.name, error = %err, held_back, "a view card could not be read");
                }
                unavailable_card(record, range, "Not readable right now; trying again.")
            }
        };
        cards.push(card);
    }
    let (events, stats) = dash_views::explore(payloads.iter().copied());
    let percent = |seen: usize| (seen * 100).checked_div(events).unwrap_or(0) as u32;
    // The event type first, where events have one: what a provider pipeline is best seen by.
    let type_line = (!types.is_empty()).then(|| {
        let mut samples: Vec<String> = Vec::new();
        for kind in types {
            if samples.len() < 3 && !samples.iter().any(|s| s == kind) {
                samples.push((*kind).to_owned());
            }
        }
        FieldLine {
            pointer: dash_views::EVENT_TYPE.to_owned(),
            kinds: "string".into(),
            seen_pct: percent(types.len()).min(100),
            samples,
            numeric: false,
        }
    });
    let fields = type_line
        .into_iter()
        .chain(stats.into_iter().map(|f| FieldLine {
            seen_pct: percent(f.seen),
            kinds: f.kinds.join(", "),
            numeric: f.numeric(),
            samples: f.samples,
            pointer: f.pointer,
        }))
        .collect();
    Ok(ViewsPart { cards, fields, events_looked_at: events, can_edit: true })
}

async fn find_view(state: &AppState, id: &str, view: &str) -> Result<ViewRecord, PageError> {
    let pipeline = find(state, id).await?;
    match state.store.find_view(&pipeline.id, view).await.map_err(PageError::store)? {
        Some(record) => Ok(record),
        None => Err(PageError::NotFound(format!("{id}/views/{view}"))),
    }
}

async fn card(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Response {
    let result = async { load_card(&state, &find_view(&state, &id, &view).await?, query.range()).await }.await;
    match result {
        Ok(card) => html(StatusCode::OK, dash_web::views::view_card(card)),
        Err(err) => err.into_response(&state, None),
    }
}

#[derive(Deserialize, Default)]
struct NewQuery {
    /// A view to change instead.
    edit: Option<String>,
    aggregate: Option<String>,
    field: Option<String>,
    group_by: Option<String>,
}

/// A name people would give the view: `by-type`, `amount-sum`.
fn suggested_name(aggregate: &str, field: Option<&str>, group_by: Option<&str>) -> String {
    let last = |pointer: &str| {
        pointer
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect::<String>()
    };
    let name = match (field, group_by) {
        (_, Some(group)) if aggregate == "count" => format!("by-{}", last(group)),
        (Some(field), Some(group)) => format!("{}-{aggregate}-by-{}", last(field), last(group)),
        (Some(field), None) => format!("{}-{aggregate}", last(field)),
        (None, _) => aggregate.to_owned(),
    };
    let name: String = name.trim_start_matches(['-', '_']).chars().take(64).collect();
    if name.is_empty() { "view".to_owned() } else { name }
}

async fn new_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<NewQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let pipeline = match find(&state, &id).await {
        Ok(p) => p,
        Err(err) => return err.into_response(&state, Some(chrome(&state, &headers))),
    };
    if let Some(name) = &query.edit {
        let record = match find_view(&state, &pipeline.id, name).await {
            Ok(record) => record,
            Err(err) => return err.into_response(&state, Some(chrome(&state, &headers))),
        };
        let spec = &record.spec;
        let form = ViewForm {
            name: record.name.clone(),
            aggregate: spec.aggregate.as_str().to_owned(),
            field: spec.field.clone().unwrap_or_default(),
            group_by: spec.group_by.clone().unwrap_or_default(),
            filter: spec.filter.iter().map(|(p, v)| format!("{p}={v}")).collect::<Vec<_>>().join("\n"),
            keep: spec.keep.map(|k| humantime::format_duration(k).to_string()).unwrap_or_default(),
            pinned: spec.pinned,
            editing: true,
        };
        let page = dash_web::views::view_form(chrome(&state, &headers), &pipeline.id, &pipeline.name, form, None);
        return html(StatusCode::OK, page);
    }
    let aggregate = query.aggregate.as_deref().and_then(Aggregate::parse).map_or("count", Aggregate::as_str).to_owned();
    let form = ViewForm {
        name: suggested_name(&aggregate, query.field.as_deref(), query.group_by.as_deref()),
        aggregate,
        field: query.field.unwrap_or_default(),
        group_by: query.group_by.unwrap_or_default(),
        ..ViewForm::default()
    };
    html(StatusCode::OK, dash_web::views::view_form(chrome(&state, &headers), &pipeline.id, &pipeline.name, form, None))
}

#[derive(Deserialize)]
struct ViewFormInput {
    name: String,
    aggregate: String,
    #[serde(default)]
    field: String,
    #[serde(default)]
    group_by: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    keep: String,
    pinned: Option<String>,
    /// Change the view of that name (the edit form).
    replace: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ViewFormInput>, FormRejection>,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let pipeline = match find(&state, &id).await {
        Ok(p) => p,
        Err(err) => return err.into_response(&state, Some(chrome(&state, &headers))),
    };
    let Ok(Form(input)) = form else {
        let page = dash_web::views::view_form(
            chrome(&state, &headers),
            &pipeline.id,
            &pipeline.name,
            ViewForm::default(),
            Some("The form was incomplete.".into()),
        );
        return html(StatusCode::BAD_REQUEST, page);
    };
    let filters: Vec<&str> = input.filter.lines().collect();
    let spec = dash_views::check_view_name(input.name.trim()).and_then(|()| {
        dash_views::ViewSpec::from_parts(
            &input.aggregate,
            Some(&input.field),
            Some(&input.group_by),
            None,
            &filters,
            Some(&input.keep),
            input.pinned.is_some(),
        )
    });
    let refused = |message: String| {
        let form = ViewForm {
            name: input.name.clone(),
            aggregate: input.aggregate.clone(),
            field: input.field.clone(),
            group_by: input.group_by.clone(),
            filter: input.filter.clone(),
            keep: input.keep.clone(),
            pinned: input.pinned.is_some(),
            editing: input.replace.is_some(),
        };
        let page =
            dash_web::views::view_form(chrome(&state, &headers), &pipeline.id, &pipeline.name, form, Some(message));
        html(StatusCode::UNPROCESSABLE_ENTITY, page)
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(err) => return refused(err.to_string()),
    };
    let mode = if input.replace.is_some() { PutMode::Replace } else { PutMode::Create };
    match state.store.put_view(&pipeline.id, input.name.trim(), &spec, mode).await {
        Ok(_) => Redirect::to(&format!("/pipelines/{}", pipeline.id)).into_response(),
        Err(StoreError::Conflict(name)) => refused(format!("name: a view {name:?} exists")),
        Err(StoreError::InvalidView(message)) => refused(message),
        Err(StoreError::NotFound(name)) => refused(format!("name: there is no view {name:?} to change")),
        Err(err) => PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    }
}

async fn delete(
    State(state): State<AppState>,
    Path((id, view)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let result = async {
        let pipeline = find(&state, &id).await?;
        state.store.delete_view(&pipeline.id, &view).await.map_err(PageError::store)?;
        Ok::<_, PageError>(pipeline.id)
    }
    .await;
    match result {
        Ok(pipeline) => Redirect::to(&format!("/pipelines/{pipeline}")).into_response(),
        Err(err) => err.into_response(&state, Some(chrome(&state, &headers))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_names_are_valid_view_names() {
        assert_eq!(suggested_name("count", None, Some("/type")), "by-type");
        assert_eq!(suggested_name("sum", Some("/amount"), Some("/currency")), "amount-sum-by-currency");
        assert_eq!(suggested_name("p95", Some("/latency_ms"), None), "latency_ms-p95");
        for name in [suggested_name("count", None, Some("/Ünï cödé/~1")), suggested_name("count", None, None)] {
            assert!(dash_views::check_view_name(&name).is_ok(), "{name}");
        }
    }
}
