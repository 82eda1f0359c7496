//! Boards on the dashboard: the list (`/boards`), a board (`/boards/{name}`), each panel as a
//! fragment the script re-fetches (`/boards/{name}/panels/{index}`), and the editor: plain forms
//! that post a change and come back, each change checked as the API checks it.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dash_boards::{BoardSpec, Panel, PanelKind};
use dash_store::{BoardRecord, PutMode, StoreError};
use dash_web::ChartRange;
use dash_web::boards::{
    BoardEditor, BoardLine, BoardPanel, BoardView, Freshness, PanelBody, PanelChoices, PanelLine, ShareLine,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::Client;
use crate::pages::{PageError, chrome, html};
use crate::{ApiError, AppState};

pub(crate) fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/boards", get(list).post(create))
        .route("/boards/{name}", get(board))
        .route("/boards/{name}/edit", get(edit))
        .route("/boards/{name}/settings", post(settings))
        .route("/boards/{name}/delete", post(delete))
        .route("/boards/{name}/panels", post(add_panel))
        .route("/boards/{name}/panels/{index}", get(panel))
        .route("/boards/{name}/panels/{index}/export", get(export))
        .route("/boards/{name}/panels/{index}/settings", post(panel_settings))
        .route("/boards/{name}/panels/{index}/move", post(move_panel))
        .route("/boards/{name}/panels/{index}/remove", post(remove_panel))
        .route("/boards/{name}/shares", post(make_share))
        .route("/boards/{name}/shares/{id}/revoke", post(revoke_share))
}

/// A board through its share link: no session asked, nothing else reachable.
pub(crate) fn share_router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/share/{token}", get(shared_board))
        .route("/share/{token}/panels/{index}", get(shared_panel))
        .route("/share/{token}/panels/{index}/export", get(shared_export))
}

#[derive(Deserialize)]
pub(crate) struct RangeQuery {
    range: Option<String>,
    /// `1`: for a wall display.
    kiosk: Option<String>,
    /// A panel's download: `csv` or `json`.
    format: Option<String>,
    /// A range of the viewer's own (both, else the preset or the board's range).
    from: Option<String>,
    to: Option<String>,
}

impl RangeQuery {
    /// The range asked for (`from` and `to`, else `range`), or the board's own when none is;
    /// what is wrong with the asked one, naming its field.
    fn checked_range(&self, spec: &BoardSpec) -> Result<ChartRange, (&'static str, String)> {
        let instant = |field: &'static str, text: &Option<String>| match text.as_deref() {
            None => Err((field, format!("{field}: give both from and to"))),
            Some(text) => ChartRange::parse_instant(text)
                .ok_or_else(|| (field, format!("{field}: unix ms, RFC 3339 or YYYY-MM-DDTHH:MM (UTC)"))),
        };
        if self.from.is_some() || self.to.is_some() {
            let (from, to) = (instant("from", &self.from)?, instant("to", &self.to)?);
            return ChartRange::custom(from, to)
                .ok_or_else(|| ("to", "to: after from, at most 400 days after it".to_owned()));
        }
        match self.range.as_deref() {
            Some(text) => ChartRange::parse(text)
                .ok_or_else(|| ("range", "range: one of 5m, 1h, 24h, 7d, 30d (or from and to)".to_owned())),
            None => Ok(Self::board_range(spec)),
        }
    }

    /// The range a board opens on.
    fn board_range(spec: &BoardSpec) -> ChartRange {
        ChartRange::parse(&spec.range).unwrap_or(ChartRange::Day)
    }

    /// The range asked for; the board's own when none is, or the asked one is wrong (the board's
    /// page says so: [`Self::checked_range`]).
    fn range(&self, spec: &BoardSpec) -> ChartRange {
        self.checked_range(spec).unwrap_or_else(|_| Self::board_range(spec))
    }
}

async fn find_board(state: &AppState, name: &str) -> Result<BoardRecord, PageError> {
    match state.store.find_board(name).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(PageError::Missing(format!("There is no board {name:?}."))),
        Err(err) => Err(PageError::store(err)),
    }
}

fn title_of(record: &BoardRecord) -> String {
    record.spec.title.clone().unwrap_or_else(|| record.name.clone())
}

/// A panel's body, loaded for `range`. What it names being gone, or unreadable now, is the
/// panel's to say: one panel never takes the board down.
async fn load_panel(
    state: &AppState,
    base: &str,
    links: bool,
    index: usize,
    panel: &Panel,
    range: ChartRange,
) -> BoardPanel {
    let now_ms = dash_domain::now_ms();
    let (title, body) = match &panel.kind {
        PanelKind::Note { text } => (String::new(), PanelBody::Note { html: dash_web::notes::note_html(text) }),
        PanelKind::Pipeline { pipeline } => match crate::pages::find(state, pipeline).await {
            Ok(record) => match crate::pages::load_chart(state, &record, range, now_ms).await {
                Ok((chart, last_hour)) => (
                    record.name.clone(),
                    PanelBody::Pipeline {
                        fresh: freshness(&record, &last_hour, now_ms),
                        pipeline: record.id.clone(),
                        seq: record.stats.seq,
                        count: record.stats.count,
                        rate: dash_web::rate_per_second(&last_hour, now_ms),
                        chart,
                    },
                ),
                Err(err) => (record.name.clone(), absent(state, Some(&record.id), err)),
            },
            Err(err) => (pipeline.clone(), absent(state, None, err)),
        },
        PanelKind::View { pipeline, view, display } => {
            let loaded = async {
                let record = crate::pages::find(state, pipeline).await?;
                let found = state.store.find_view(&record.id, view).await.map_err(PageError::store)?;
                let found = found.ok_or_else(|| {
                    PageError::Missing(format!("Pipeline {:?} has no view {view:?} any more.", record.id))
                })?;
                let card = crate::view_pages::load_card(state, &found, range).await?;
                // Without the last hour, the panel still shows: its silence is just not coloured.
                let last_hour = crate::pages::last_hour(state, &record.id, now_ms).await.unwrap_or_default();
                Ok::<_, PageError>((record.stats.seq, card, freshness(&record, &last_hour, now_ms)))
            }
            .await;
            match loaded {
                Ok((seq, card, fresh)) => (view.clone(), PanelBody::View { seq, display: *display, card, fresh }),
                Err(err) => (view.clone(), absent(state, Some(pipeline), err)),
            }
        }
    };
    BoardPanel {
        base: base.to_owned(),
        links,
        index,
        title: panel.title.clone().unwrap_or(title),
        width: panel.width,
        range,
        body,
    }
}

/// When `record` last took an event, and whether it usually has traffic: events in at least a
/// third of the minutes of `last_hour` (a panel then shows a long silence in amber, then red).
fn freshness(record: &dash_store::PipelineRecord, last_hour: &[i64], now_ms: i64) -> Freshness {
    let busy = !last_hour.is_empty() && last_hour.iter().filter(|&&n| n > 0).count() * 3 >= last_hour.len();
    Freshness { since: record.stats.last_event_at.clone(), busy, now_ms }
}

fn absent(state: &AppState, pipeline: Option<&str>, err: PageError) -> PanelBody {
    match err {
        PageError::NotFound(id) => {
            PanelBody::Absent { pipeline: None, why: format!("There is no pipeline {id:?} any more."), retry: false }
        }
        PageError::Missing(why) => PanelBody::Absent { pipeline: None, why, retry: false },
        PageError::StoreDown(err) => {
            if let Some(held_back) = state.store_warnings.admit() {
                tracing::warn!(error = %err, held_back, "a board panel could not be read");
            }
            PanelBody::Absent {
                pipeline: pipeline.map(str::to_owned),
                why: "Not readable right now; trying again.".into(),
                retry: true,
            }
        }
    }
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.store.list_boards().await {
        Ok(records) => {
            let lines = records.iter().map(board_line).collect();
            html(StatusCode::OK, dash_web::boards::boards(chrome(&state, &headers), lines, true, None))
        }
        Err(err) => PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    }
}

fn board_line(record: &BoardRecord) -> BoardLine {
    BoardLine {
        name: record.name.clone(),
        title: title_of(record),
        panels: record.spec.panels.len(),
        pipelines: record.spec.pipelines().into_iter().map(str::to_owned).collect(),
    }
}

#[derive(Deserialize)]
struct NewBoard {
    name: String,
    #[serde(default)]
    title: String,
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<NewBoard>, FormRejection>,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let refused = |state: &AppState, boards: Vec<BoardLine>, message: String| {
        let page = dash_web::boards::boards(chrome(state, &headers), boards, true, Some(message));
        html(StatusCode::UNPROCESSABLE_ENTITY, page)
    };
    let boards = match state.store.list_boards().await {
        Ok(records) => records.iter().map(board_line).collect(),
        Err(err) => return PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    };
    let Ok(Form(input)) = form else {
        return refused(&state, boards, "The form was incomplete.".into());
    };
    let name = input.name.trim();
    let spec = dash_boards::check_board_name(name).and_then(|()| BoardSpec::from_json(json!({ "title": input.title })));
    let spec = match spec {
        Ok(spec) => spec,
        Err(err) => return refused(&state, boards, err.to_string()),
    };
    match state.store.put_board(name, &spec, PutMode::Create).await {
        Ok(_) => Redirect::to(&format!("/boards/{name}/edit")).into_response(),
        Err(StoreError::Conflict(_)) => refused(&state, boards, format!("name: a board {name:?} exists")),
        Err(err) => PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    }
}

/// Every panel of `record` over the asked range, served under `base`.
async fn board_view(
    state: &AppState,
    record: BoardRecord,
    base: &str,
    query: &RangeQuery,
    shared_live: Option<String>,
) -> BoardView {
    let (range, range_error) = match query.checked_range(&record.spec) {
        Ok(range) => (range, None),
        Err((_, message)) => {
            let range = RangeQuery::board_range(&record.spec);
            (range, Some(format!("{message}. Showing the last {} instead.", range.label())))
        }
    };
    let links = shared_live.is_none();
    let loads = record.spec.panels.iter().enumerate().map(|(i, panel)| load_panel(state, base, links, i, panel, range));
    let panels = futures_util::future::join_all(loads).await;
    BoardView {
        title: title_of(&record),
        name: record.name,
        range,
        panels,
        can_edit: true,
        shared_live,
        kiosk: query.kiosk.as_deref() == Some("1"),
        range_error,
    }
}

async fn board(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RangeQuery>,
    headers: HeaderMap,
) -> Response {
    let record = match find_board(&state, &name).await {
        Ok(record) => record,
        Err(err) => return err.into_response(&state, Some(chrome(&state, &headers))),
    };
    let base = format!("/boards/{}", record.name);
    let view = board_view(&state, record, &base, &query, None).await;
    html(StatusCode::OK, dash_web::boards::board(Some(chrome(&state, &headers)), view))
}

/// One panel of `record`, or 404.
async fn panel_of_board(
    state: &AppState,
    record: &BoardRecord,
    base: &str,
    links: bool,
    index: usize,
    query: &RangeQuery,
) -> Response {
    let Some(panel) = record.spec.panels.get(index) else {
        return PageError::Missing(format!("Board {:?} has no panel {index}.", record.name)).into_response(state, None);
    };
    let loaded = load_panel(state, base, links, index, panel, query.range(&record.spec)).await;
    html(StatusCode::OK, dash_web::boards::board_panel(loaded))
}

async fn panel(
    State(state): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
    Query(query): Query<RangeQuery>,
) -> Response {
    match find_board(&state, &name).await {
        Ok(record) => panel_of_board(&state, &record, &format!("/boards/{}", record.name), true, index, &query).await,
        Err(err) => err.into_response(&state, None),
    }
}

/// What panel `index` of `record` shows over the asked range, as CSV or JSON to download.
async fn export_panel(
    state: &AppState,
    record: &BoardRecord,
    base: &str,
    index: usize,
    query: &RangeQuery,
) -> Response {
    let Some(panel) = record.spec.panels.get(index) else {
        return ApiError::not_found("panel_not_found", format!("board {:?} has no panel {index}", record.name))
            .into_response();
    };
    let range = match query.checked_range(&record.spec) {
        Ok(range) => range,
        Err((field, message)) => return ApiError::unprocessable("invalid_range", message).field(field).into_response(),
    };
    let loaded = load_panel(state, base, false, index, panel, range).await;
    let Some(table) = dash_web::export::panel_table(&loaded) else {
        let why = match &loaded.body {
            PanelBody::Absent { retry: true, .. } => {
                return ApiError::unavailable("store_unavailable", "the panel's figures cannot be read right now", 5)
                    .into_response();
            }
            PanelBody::Note { .. } => "a note has no figures",
            _ => "what the panel shows is gone",
        };
        return ApiError::not_found("no_figures", why).into_response();
    };
    let (body, content_type, extension) = match query.format.as_deref() {
        Some("json") => {
            (table.to_json(&record.name, &loaded, dash_domain::now_ms()).to_string(), "application/json", "json")
        }
        None | Some("csv") => (table.to_csv(), "text/csv; charset=utf-8", "csv"),
        Some(_) => {
            return ApiError::unprocessable("invalid_format", "format: csv or json").field("format").into_response();
        }
    };
    let file = format!("{}-{}-{}.{extension}", record.name, index + 1, loaded.range.as_str());
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, value);
    }
    response
}

async fn export(
    State(state): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
    Query(query): Query<RangeQuery>,
) -> Response {
    match find_board(&state, &name).await {
        Ok(record) => export_panel(&state, &record, &format!("/boards/{}", record.name), index, &query).await,
        Err(PageError::StoreDown(err)) => ApiError::store_unavailable(&err).into_response(),
        Err(_) => crate::boards::board_not_found(&name).into_response(),
    }
}

async fn shared_export(
    State(state): State<AppState>,
    Client(peer): Client,
    Path((token, index)): Path<(String, usize)>,
    Query(query): Query<RangeQuery>,
) -> Response {
    match crate::shares::open(&state, peer, &token).await {
        Ok(record) => export_panel(&state, &record, &crate::shares::share_path(&token), index, &query).await,
        Err(err) => err.into_response(),
    }
}

/// A share link that opens nothing, as a page (with the status and `Retry-After` of `err`).
fn closed_page(err: ApiError) -> Response {
    let (title, text) = match err.status {
        StatusCode::UNAUTHORIZED => {
            ("Link closed", "This share link is unknown, has expired or was revoked. Ask for a new one.")
        }
        StatusCode::TOO_MANY_REQUESTS => {
            ("Too many attempts", "Too many closed links were tried from here; wait a moment.")
        }
        _ => ("Unavailable", "The database is not reachable right now; try again in a few seconds."),
    };
    let mut response = html(err.status, dash_web::pages::message(None, title, text));
    if let Some(secs) = err.retry_after_secs {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn shared_board(
    State(state): State<AppState>,
    Client(peer): Client,
    Path(token): Path<String>,
    Query(query): Query<RangeQuery>,
) -> Response {
    let record = match crate::shares::open(&state, peer, &token).await {
        Ok(record) => record,
        Err(err) => return closed_page(err),
    };
    let base = crate::shares::share_path(&token);
    let live = format!("/live?share={token}");
    let view = board_view(&state, record, &base, &query, Some(live)).await;
    let mut response = html(StatusCode::OK, dash_web::boards::board(None, view));
    // The token is in the address: never send it on to another site.
    response.headers_mut().insert(axum::http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn shared_panel(
    State(state): State<AppState>,
    Client(peer): Client,
    Path((token, index)): Path<(String, usize)>,
    Query(query): Query<RangeQuery>,
) -> Response {
    match crate::shares::open(&state, peer, &token).await {
        Ok(record) => panel_of_board(&state, &record, &crate::shares::share_path(&token), false, index, &query).await,
        Err(err) => closed_page(err),
    }
}

/// The editor, with `error` shown above it when a change was refused.
async fn editor(state: &AppState, headers: &HeaderMap, record: &BoardRecord, error: Option<String>) -> Response {
    editor_with(state, headers, record, None, error).await
}

/// The editor, showing `new_link` (a share link just made, shown this once).
async fn editor_with(
    state: &AppState,
    headers: &HeaderMap,
    record: &BoardRecord,
    new_link: Option<String>,
    error: Option<String>,
) -> Response {
    let pipelines = match state.store.list_pipelines().await {
        Ok(pipelines) => pipelines,
        Err(err) => return PageError::store(err).into_response(state, Some(chrome(state, headers))),
    };
    let mut choices = PanelChoices::default();
    for pipeline in pipelines {
        let views = state.store.list_views(&pipeline.id).await.unwrap_or_default();
        choices.views.extend(views.into_iter().map(|v| (pipeline.id.clone(), v.name)));
        choices.pipelines.push(pipeline.id);
    }
    let panels = record
        .spec
        .panels
        .iter()
        .map(|p| {
            let what = match &p.kind {
                PanelKind::Pipeline { pipeline } => format!("Events of {pipeline}"),
                PanelKind::View { pipeline, view, display } => {
                    format!("View {view} of {pipeline} ({})", display.as_str())
                }
                PanelKind::Note { .. } => "Note".to_owned(),
            };
            PanelLine { what, title: p.title.clone().unwrap_or_default(), width: p.width }
        })
        .collect();
    let shares = match state.store.list_shares(&record.name).await {
        Ok(shares) => shares,
        Err(err) => return PageError::store(err).into_response(state, Some(chrome(state, headers))),
    };
    let now = dash_domain::now_ms();
    let shares = shares
        .into_iter()
        .map(|s| ShareLine {
            expired: s.expires_ms <= now,
            id: s.id,
            created_at: s.created_at,
            expires_at: s.expires_at,
        })
        .collect();
    let range = RangeQuery::board_range(&record.spec);
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let page = dash_web::boards::editor(
        chrome(state, headers),
        BoardEditor {
            version: record.version,
            name: record.name.clone(),
            title: title_of(record),
            range,
            panels,
            choices,
            shares,
            new_link,
            error,
        },
    );
    html(status, page)
}

async fn edit(State(state): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    match find_board(&state, &name).await {
        Ok(record) => editor(&state, &headers, &record, None).await,
        Err(err) => err.into_response(&state, Some(chrome(&state, &headers))),
    }
}

/// Makes `change` through [`crate::boards::change_board`] (the API's own way, with `seen` as
/// there) and goes back to the editor; a refused change shows the editor, with the board as it
/// now is, and the reason.
async fn change_board(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    seen: Option<i64>,
    change: impl Fn(&mut serde_json::Map<String, Value>) -> Result<(), String>,
) -> Response {
    if crate::origin::is_cross_origin(headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let refusal = match crate::boards::change_board(state, name, seen, change).await {
        Ok(()) => return Redirect::to(&format!("/boards/{name}/edit")).into_response(),
        Err(refusal) => refusal,
    };
    let status = refusal.error.status;
    match refusal.board {
        Some(board) if status == StatusCode::CONFLICT => {
            let message = "The board changed while you were editing it; here it is as it is now.";
            editor(state, headers, &board, Some(message.into())).await
        }
        Some(board) if status == StatusCode::UNPROCESSABLE_ENTITY => {
            editor(state, headers, &board, Some(refusal.error.message)).await
        }
        _ if status == StatusCode::NOT_FOUND => PageError::Missing(format!("There is no board {name:?}."))
            .into_response(state, Some(chrome(state, headers))),
        _ => PageError::store(refusal.error.message).into_response(state, Some(chrome(state, headers))),
    }
}

fn panels(fields: &mut serde_json::Map<String, Value>) -> &mut Vec<Value> {
    let entry = fields.entry("panels").or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    entry.as_array_mut().expect("made an array above")
}

#[derive(Deserialize)]
struct BoardSettings {
    #[serde(default)]
    title: String,
    range: Option<String>,
}

async fn settings(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<BoardSettings>, FormRejection>,
) -> Response {
    change_board(&state, &headers, &name, None, |fields| {
        let Ok(Form(input)) = &form else { return Err("The form was incomplete.".into()) };
        fields.insert("title".into(), json!(input.title));
        if let Some(range) = &input.range {
            fields.insert("range".into(), json!(range));
        }
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
struct NewPanel {
    /// `note`, `pipeline:<id>` or `view:<id>/<view>`.
    what: String,
    #[serde(default)]
    display: String,
    #[serde(default)]
    title: String,
    width: Option<String>,
    #[serde(default)]
    text: String,
}

/// The panel object a new-panel form describes, checked by `BoardSpec::from_json` after.
fn panel_of(input: &NewPanel) -> Result<Value, String> {
    let mut panel = match input.what.split_once(':') {
        None if input.what == "note" => json!({ "type": "note", "text": input.text }),
        Some(("pipeline", pipeline)) => json!({ "type": "pipeline", "pipeline": pipeline }),
        Some(("view", rest)) => match rest.rsplit_once('/') {
            Some((pipeline, view)) => {
                let display = if input.display.is_empty() { "chart" } else { input.display.as_str() };
                json!({ "type": "view", "pipeline": pipeline, "view": view, "display": display })
            }
            None => return Err("what: pick a view".into()),
        },
        _ => return Err("what: pick what the panel shows".into()),
    };
    if !input.title.trim().is_empty() {
        panel["title"] = json!(input.title);
    }
    if let Some(width) = &input.width {
        panel["width"] = width.trim().parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(width));
    }
    Ok(panel)
}

async fn add_panel(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<NewPanel>, FormRejection>,
) -> Response {
    change_board(&state, &headers, &name, None, |fields| {
        let Ok(Form(input)) = &form else { return Err("The form was incomplete.".into()) };
        let panel = panel_of(input)?;
        panels(fields).push(panel);
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
struct PanelSettings {
    #[serde(default)]
    title: String,
    width: Option<String>,
    /// The board's version the form was shown at.
    version: Option<String>,
}

/// The board's version a form naming a panel by its place was shown at.
fn seen(version: Option<&String>) -> Option<i64> {
    version.and_then(|v| v.trim().parse().ok())
}

async fn panel_settings(
    State(state): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
    headers: HeaderMap,
    form: Result<Form<PanelSettings>, FormRejection>,
) -> Response {
    let version = seen(form.as_ref().ok().and_then(|Form(input)| input.version.as_ref()));
    change_board(&state, &headers, &name, version, |fields| {
        let Ok(Form(input)) = &form else { return Err("The form was incomplete.".into()) };
        let panel = panels(fields).get_mut(index).ok_or_else(|| format!("panels[{index}]: no such panel"))?;
        panel["title"] = if input.title.trim().is_empty() { Value::Null } else { json!(input.title) };
        if let Some(width) = &input.width {
            panel["width"] = width.trim().parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(width));
        }
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
struct MoveTo {
    to: String,
    version: Option<String>,
}

#[derive(Deserialize)]
struct Seen {
    version: Option<String>,
}

async fn move_panel(
    State(state): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
    headers: HeaderMap,
    form: Result<Form<MoveTo>, FormRejection>,
) -> Response {
    let version = seen(form.as_ref().ok().and_then(|Form(input)| input.version.as_ref()));
    change_board(&state, &headers, &name, version, |fields| {
        let Ok(Form(input)) = &form else { return Err("The form was incomplete.".into()) };
        let panels = panels(fields);
        let other = match input.to.as_str() {
            "up" => index.checked_sub(1),
            "down" => Some(index + 1),
            _ => None,
        };
        match other {
            Some(other) if index < panels.len() && other < panels.len() => {
                panels.swap(index, other);
                Ok(())
            }
            _ => Err(format!("panels[{index}]: cannot move it {}", input.to)),
        }
    })
    .await
}

async fn remove_panel(
    State(state): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
    headers: HeaderMap,
    form: Result<Form<Seen>, FormRejection>,
) -> Response {
    let version = seen(form.as_ref().ok().and_then(|Form(input)| input.version.as_ref()));
    change_board(&state, &headers, &name, version, |fields| {
        let panels = panels(fields);
        if index >= panels.len() {
            return Err(format!("panels[{index}]: no such panel"));
        }
        panels.remove(index);
        Ok(())
    })
    .await
}

async fn delete(State(state): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    match state.store.delete_board(&name).await {
        Ok(_) => Redirect::to("/boards").into_response(),
        Err(err) => PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    }
}

#[derive(Deserialize)]
struct NewShare {
    expires_in: Option<String>,
}

/// Makes a share link and shows it, once, in the editor.
async fn make_share(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<NewShare>, FormRejection>,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    let record = match find_board(&state, &name).await {
        Ok(record) => record,
        Err(err) => return err.into_response(&state, Some(chrome(&state, &headers))),
    };
    let expiry = match form.ok().and_then(|Form(input)| input.expires_in) {
        None => Ok(crate::shares::DEFAULT_EXPIRY),
        Some(text) => crate::shares::parse_expiry(&text),
    };
    let made = match expiry {
        Ok(expiry) => crate::shares::issue(&state, &record.name, expiry).await,
        Err(err) => Err(err),
    };
    match made {
        Ok((_, token)) => {
            let path = crate::shares::share_path(&token);
            let link = match &state.limits.public_url {
                Some(base) => format!("{base}{path}"),
                None => crate::pages::site_url(&headers, &path),
            };
            editor_with(&state, &headers, &record, Some(link), None).await
        }
        Err(err) if err.status == StatusCode::SERVICE_UNAVAILABLE => {
            PageError::store(err.message).into_response(&state, Some(chrome(&state, &headers)))
        }
        Err(err) => editor(&state, &headers, &record, Some(err.message)).await,
    }
}

async fn revoke_share(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if crate::origin::is_cross_origin(&headers) {
        return crate::origin::cross_origin_refused().into_response();
    }
    match state.store.delete_share(&name, &id).await {
        Ok(_) => Redirect::to(&format!("/boards/{name}/edit")).into_response(),
        Err(err) => PageError::store(err).into_response(&state, Some(chrome(&state, &headers))),
    }
}
