//! Boards: the list of boards, a board's grid of panels (each panel also a fragment the script
//! re-fetches when its pipeline changes), and the editor, which is plain forms.

use dash_boards::Display;
use leptos::prelude::*;

use crate::charts::BarChart;
use crate::display::{rate, timestamp};
use crate::views::{GroupsTable, ViewCard, ViewChart, number};
use crate::{Chart, ChartRange, Chrome};

/// One board in the list.
#[derive(Debug, Clone)]
pub struct BoardLine {
    pub name: String,
    pub title: String,
    pub panels: usize,
    /// The pipelines its panels read.
    pub pipelines: Vec<String>,
}

/// A board as its page shows it.
#[derive(Debug, Clone)]
pub struct BoardView {
    pub name: String,
    pub title: String,
    pub range: ChartRange,
    pub panels: Vec<BoardPanel>,
    pub can_edit: bool,
    /// Seen through a share link: `/live?share=…` for the script, no navigation to the rest of
    /// the site.
    pub shared_live: Option<String>,
    /// For a wall: no chrome, the grid across the screen (`?kiosk=1`, kept in the range links).
    pub kiosk: bool,
    /// Why the range asked for in the address is not the one shown.
    pub range_error: Option<String>,
}

/// One panel of a board, over the board's range.
#[derive(Debug, Clone)]
pub struct BoardPanel {
    /// Where the board is served (`/boards/ops`, or `/share/<token>`): its panels' fragments
    /// are under it.
    pub base: String,
    /// Link a pipeline panel to its pipeline's page (not through a share link, whose visitor
    /// may open nothing else).
    pub links: bool,
    /// Its place on the board, from 0: its fragment's address.
    pub index: usize,
    pub title: String,
    /// Grid columns, 1 to 4.
    pub width: u8,
    pub range: ChartRange,
    pub body: PanelBody,
}

/// How fresh a panel's figures are: when its pipeline last took an event, and whether it
/// usually has traffic (then a long silence is worth a colour).
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// RFC 3339; `None` before the first event.
    pub since: Option<String>,
    /// Events arrived in at least a third of the last 60 minutes.
    pub busy: bool,
    /// Unix ms the page is rendered at.
    pub now_ms: i64,
}

/// Past this silence a busy pipeline's panel turns amber, past [`RED_AFTER_MS`] red.
pub const AMBER_AFTER_MS: i64 = 60_000;
pub const RED_AFTER_MS: i64 = 300_000;

impl Freshness {
    /// `ok`, `amber` or `red` (the script computes the same from the same attributes).
    pub fn level(&self) -> &'static str {
        let age = self.age_ms().unwrap_or(0);
        match self.busy {
            true if age >= RED_AFTER_MS => "red",
            true if age >= AMBER_AFTER_MS => "amber",
            _ => "ok",
        }
    }

    fn age_ms(&self) -> Option<i64> {
        let since = chrono::DateTime::parse_from_rfc3339(self.since.as_deref()?).ok()?;
        Some((self.now_ms - since.timestamp_millis()).max(0))
    }

    /// `updated 5 s ago`, `updated 3 min ago`, `no events yet`.
    pub fn text(&self) -> String {
        match self.age_ms() {
            None => "no events yet".into(),
            Some(ms) => format!("updated {} ago", age(ms)),
        }
    }
}

/// An age in the largest unit that keeps it readable: `5 s`, `3 min`, `2 h`, `4 days`.
fn age(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        ..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

#[component]
fn Fresh(fresh: Freshness) -> impl IntoView {
    view! {
        <span class="fresh" data-fresh-since=fresh.since.clone().unwrap_or_default() data-busy=fresh.busy.then_some("1")
            data-fresh=fresh.level() title="time since its pipeline last took an event">{fresh.text()}</span>
    }
}

/// What a panel holds.
#[derive(Debug, Clone)]
pub enum PanelBody {
    /// A pipeline's events per bucket.
    Pipeline { pipeline: String, seq: i64, count: i64, rate: f64, chart: Chart, fresh: Freshness },
    /// A view, as its card would show it.
    View { seq: i64, display: Display, card: ViewCard, fresh: Freshness },
    /// A note, already HTML ([`crate::notes::note_html`]).
    Note { html: String },
    /// What it names cannot be shown: gone (`retry` false) or not readable now (`retry` true).
    Absent { pipeline: Option<String>, why: String, retry: bool },
}

/// One of a board's share links, as its editor lists it.
#[derive(Debug, Clone)]
pub struct ShareLine {
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    pub expired: bool,
}

/// How long a new share link may last, as the editor offers it: (value, label).
pub const SHARE_EXPIRIES: [(&str, &str); 4] =
    [("1day", "1 day"), ("7days", "7 days"), ("30days", "30 days"), ("365days", "1 year")];

/// Everything the editor needs besides the board: what a panel can show.
#[derive(Debug, Clone, Default)]
pub struct PanelChoices {
    /// Pipeline ids.
    pub pipelines: Vec<String>,
    /// (pipeline id, view name).
    pub views: Vec<(String, String)>,
}

fn panel_url(base: &str, index: usize, range: ChartRange) -> String {
    format!("{base}/panels/{index}?{}", range.query())
}

/// `/boards`: every board, and the form that makes one.
pub fn boards(chrome: Chrome, boards: Vec<BoardLine>, can_edit: bool, error: Option<String>) -> String {
    let rows = boards
        .into_iter()
        .map(|b| {
            let href = format!("/boards/{}", b.name);
            view! {
                <tr>
                    <td><a href=href>{b.title}</a><div class="sub">{b.name}</div></td>
                    <td class="num">{b.panels.to_string()}</td>
                    <td>{b.pipelines.join(", ")}</td>
                </tr>
            }
        })
        .collect_view();
    let form = can_edit.then(|| {
        view! {
            <h2>"New board"</h2>
            {error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <form method="post" action="/boards" class="board-form">
                <label>"Name "<input name="name" required pattern="[a-z0-9][a-z0-9_-]*" maxlength="63"
                    placeholder="operations" /></label>
                <label>"Title "<input name="title" maxlength="120" placeholder="Operations" /></label>
                <button type="submit">"Create board"</button>
            </form>
        }
    });
    let content = view! {
        <h1>"Boards"</h1>
        <table class="boards">
            <thead><tr><th>"Board"</th><th class="num">"Panels"</th><th>"Pipelines"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {form}
    };
    crate::pages::document("Boards", Some(chrome), content)
}

/// `/boards/{name}`: the board's panels in a grid, over its range.
pub fn board(chrome: Option<Chrome>, board: BoardView) -> String {
    let kiosk = if board.kiosk { "&kiosk=1" } else { "" };
    let tabs = ChartRange::BOARD
        .into_iter()
        .map(|r| {
            let current = (r == board.range).then_some("page");
            view! { <a href=format!("?range={}{kiosk}", r.as_str()) aria-current=current>{r.label()}</a> }
        })
        .collect_view();
    let can_edit = board.can_edit && board.shared_live.is_none();
    // Any span of the viewer's, in UTC; the link then reproduces it.
    let (custom_from, custom_to) = match board.range {
        ChartRange::Custom { from_ms, to_ms } => (ChartRange::form_value(from_ms), ChartRange::form_value(to_ms)),
        _ => (String::new(), String::new()),
    };
    let custom = view! {
        <form method="get" class="custom-range">
            <input type="datetime-local" name="from" value=custom_from aria-label="From (UTC)" required="" />
            " to "<input type="datetime-local" name="to" value=custom_to aria-label="To (UTC)" required="" />
            " UTC "
            {board.kiosk.then(|| view! { <input type="hidden" name="kiosk" value="1" /> })}
            <button type="submit">"Show"</button>
        </form>
    };
    let edit = format!("/boards/{}/edit", board.name);
    let empty = board.panels.is_empty().then(|| {
        view! { <p class="empty">"This board has no panels yet. "{can_edit.then(|| view! { <a href=edit.clone()>"Add one"</a> })}</p> }
    });
    let panels = board.panels.into_iter().map(|panel| view! { <PanelSection panel=panel /> }).collect_view();
    let title = board.title.clone();
    let shared = board.shared_live.is_some();
    let content = view! {
        {(!shared).then(|| view! { <nav class="crumbs"><a href="/boards">"Boards"</a>" / "{board.name.clone()}</nav> })}
        <div class="board-head">
            <h1>{board.title}</h1>
            <nav class="ranges">{tabs}</nav>
            {custom}
            {can_edit.then(|| view! { <a class="edit" href=edit.clone()>"Edit"</a> })}
        </div>
        {board.range_error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
        {empty}
        <div class="board-grid">{panels}</div>
    };
    if shared || board.kiosk {
        crate::pages::document_bare(&title, content, board.kiosk, board.shared_live)
    } else {
        crate::pages::document(&title, chrome, content)
    }
}

/// One panel alone: the fragment at `/boards/{name}/panels/{index}`.
pub fn board_panel(panel: BoardPanel) -> String {
    view! { <PanelSection panel=panel /> }.to_html()
}

#[component]
fn PanelSection(panel: BoardPanel) -> impl IntoView {
    let class = format!("board-panel w{}", panel.width.clamp(1, 4));
    let refresh = panel_url(&panel.base, panel.index, panel.range);
    let exports = crate::export::panel_table(&panel).is_some().then(|| {
        let export = |format: &str| {
            format!("{}/panels/{}/export?format={format}&{}", panel.base, panel.index, panel.range.query())
        };
        view! {
            <span class="exports"><a href=export("csv") download="">"CSV"</a>" · "<a href=export("json") download="">"JSON"</a></span>
        }
    });
    let title = panel.title.clone();
    let head = move |sub: String, fresh: Option<Freshness>| {
        view! {
            <div class="panel-head">
                <h2>{title.clone()}</h2>
                <span class="sub">{sub}</span>
                {fresh.map(|fresh| view! { <Fresh fresh=fresh /> })}
                {exports.clone()}
            </div>
        }
    };
    match panel.body {
        PanelBody::Pipeline { pipeline, seq, count, rate: per_second, chart, fresh } => {
            let sub = format!("events per {}, {}", panel.range.bucket_label(), panel.range.span_text());
            let href = format!("/pipelines/{pipeline}");
            view! {
                <section class=class data-pipeline=pipeline data-seq=seq.to_string() data-refresh=refresh>
                    {head(sub, Some(fresh))}
                    <div class="panel-figures">
                        <span><span class="value" data-field="count">{count.to_string()}</span>" events"</span>
                        <span>{format!("{} /s", rate(per_second))}</span>
                        {panel.links.then(|| view! { <a href=href>"pipeline"</a> })}
                    </div>
                    <BarChart chart=chart />
                </section>
            }
            .into_any()
        }
        PanelBody::View { seq, display, card, fresh } => {
            let sub = format!("{} · {}", card.describe, panel.range.span_text());
            let figure = view! {
                <div class="view-value">
                    <span class="value big">{number(card.total)}</span>
                    <span class="sub">{format!(" {} · {} events", card.aggregate, card.n)}</span>
                </div>
            };
            let unavailable = card.unavailable.clone();
            let computing = card.computing.map(|f| {
                view! { <p class="computing">{format!("Computing its history: {:.0} %", f * 100.0)}</p> }
            });
            let body = match (unavailable, display) {
                (Some(why), _) => view! { <p class="unavailable">{why}</p> }.into_any(),
                (None, Display::Chart) => view! { {figure}<ViewChart card=card.clone() /> }.into_any(),
                (None, Display::Stat) => figure.into_any(),
                (None, Display::Table) if card.groups.is_empty() => {
                    view! { {figure}<p class="sub">"No groups over this range."</p> }.into_any()
                }
                (None, Display::Table) => view! { {figure}<GroupsTable groups=card.groups.clone() /> }.into_any(),
            };
            let every = (card.unavailable.is_some() || card.computing.is_some()).then_some("5000");
            view! {
                <section class=class data-pipeline=card.pipeline.clone() data-seq=seq.to_string()
                    data-view=card.name.clone() data-refresh=refresh data-refresh-every=every>
                    {head(sub, Some(fresh))}
                    {computing}
                    {body}
                </section>
            }
            .into_any()
        }
        PanelBody::Note { html } => view! {
            <section class=class>
                {(!panel.title.is_empty()).then(|| head(String::new(), None))}
                <div class="note" inner_html=html></div>
            </section>
        }
        .into_any(),
        PanelBody::Absent { pipeline, why, retry } => {
            let every = retry.then_some("5000");
            let refresh = retry.then_some(refresh);
            view! {
                <section class=format!("{class} absent") data-pipeline=pipeline data-refresh=refresh data-refresh-every=every>
                    {head(String::new(), None)}
                    <p class="unavailable">{why}</p>
                </section>
            }
            .into_any()
        }
    }
}

/// One panel as the editor lists it.
#[derive(Debug, Clone)]
pub struct PanelLine {
    /// What it shows, in words.
    pub what: String,
    /// Its own title (empty: the default).
    pub title: String,
    pub width: u8,
}

/// What the editor shows.
#[derive(Debug, Clone)]
pub struct BoardEditor {
    pub name: String,
    /// The board's version as shown: forms that name a panel by its place carry it.
    pub version: i64,
    pub title: String,
    pub range: ChartRange,
    pub panels: Vec<PanelLine>,
    pub choices: PanelChoices,
    pub shares: Vec<ShareLine>,
    /// A share link just made: shown this once.
    pub new_link: Option<String>,
    /// Why the last change was refused.
    pub error: Option<String>,
}

/// `/boards/{name}/edit`: the board's settings, each panel with its controls, the form that
/// adds one, and the share links. Every control is a form that posts and comes back here.
pub fn editor(chrome: Chrome, editor: BoardEditor) -> String {
    let BoardEditor { name, version, title, range, panels, choices, shares, new_link, error } = editor;
    let version = version.to_string();
    let (name, title) = (name.as_str(), title.as_str());
    let base = format!("/boards/{name}");
    let range_options = ChartRange::BOARD
        .into_iter()
        .map(|r| view! { <option value=r.as_str() selected={r == range}>{r.label()}</option> })
        .collect_view();
    let last = panels.len().saturating_sub(1);
    let rows = panels
        .into_iter()
        .enumerate()
        .map(|(i, PanelLine { what, title: panel_title, width })| {
            let at = format!("{base}/panels/{i}");
            let widths = (1..=4u8)
                .map(|w| view! { <option value=w.to_string() selected={w == width}>{format!("{w} of 4")}</option> })
                .collect_view();
            view! {
                <tr data-panel=i.to_string()>
                    <td>{what}</td>
                    <td>
                        <form method="post" action=format!("{at}/settings") class="inline">
                            <input type="hidden" name="version" value=version.clone() />
                            <input name="title" value=panel_title maxlength="120" aria-label="Panel title" />
                            <select name="width" aria-label="Width">{widths}</select>
                            <button type="submit">"Save"</button>
                        </form>
                    </td>
                    <td>
                        <form method="post" action=format!("{at}/move") class="inline">
                            <input type="hidden" name="version" value=version.clone() />
                            <button type="submit" name="to" value="up" disabled={i == 0}>"Up"</button>
                            <button type="submit" name="to" value="down" disabled={i == last}>"Down"</button>
                        </form>
                        <form method="post" action=format!("{at}/remove") class="inline">
                            <input type="hidden" name="version" value=version.clone() />
                            <button type="submit" class="link">"Remove"</button>
                        </form>
                    </td>
                </tr>
            }
        })
        .collect_view();
    let mut what_options = vec![view! { <option value="note">"Note (Markdown)"</option> }.into_any()];
    for pipeline in &choices.pipelines {
        let label = format!("Events of {pipeline}");
        what_options.push(view! { <option value=format!("pipeline:{pipeline}")>{label}</option> }.into_any());
    }
    for (pipeline, view_name) in &choices.views {
        let label = format!("View {view_name} of {pipeline}");
        let value = format!("view:{pipeline}/{view_name}");
        what_options.push(view! { <option value=value>{label}</option> }.into_any());
    }
    let content = view! {
        <nav class="crumbs"><a href="/boards">"Boards"</a>" / "<a href=base.clone()>{name.to_owned()}</a>" / edit"</nav>
        <h1>{format!("Edit {title}")}</h1>
        {error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
        <form method="post" action=format!("{base}/settings") class="board-form">
            <label>"Title "<input name="title" value=title.to_owned() maxlength="120" /></label>
            <label>"Opens on "<select name="range">{range_options}</select></label>
            <button type="submit">"Save board"</button>
        </form>
        <h2>"Panels"</h2>
        <table class="board-panels">
            <thead><tr><th>"Shows"</th><th>"Title and width"</th><th>"Place"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <h2>"Add a panel"</h2>
        <form method="post" action=format!("{base}/panels") class="board-form add-panel">
            <label>"Shows "<select name="what">{what_options}</select></label>
            <label>"View as "<select name="display">
                <option value="chart">"chart"</option>
                <option value="stat">"single figure"</option>
                <option value="table">"groups table"</option>
            </select></label>
            <label>"Title "<input name="title" maxlength="120" placeholder="as it shows by default" /></label>
            <label>"Width "<select name="width">
                <option value="1">"1 of 4"</option>
                <option value="2" selected=true>"2 of 4"</option>
                <option value="3">"3 of 4"</option>
                <option value="4">"4 of 4"</option>
            </select></label>
            <label>"Note (Markdown, for a note) "<textarea name="text" rows="4"></textarea></label>
            <button type="submit">"Add panel"</button>
        </form>
        <h2>"Share links"</h2>
        <p class="sub">"Anyone with a link sees this board, live, and nothing else, until the link expires or is revoked."</p>
        {new_link.map(|link| view! {
            <p class="new-link" role="status">"New link (shown once; copy it now): "<a href=link.clone() class="share-url">{link.clone()}</a></p>
        })}
        <table class="share-links">
            <thead><tr><th>"Link"</th><th>"Made (UTC)"</th><th>"Expires (UTC)"</th><th></th></tr></thead>
            <tbody>{shares.into_iter().map(|share| {
                let revoke = format!("{base}/shares/{}/revoke", share.id);
                let expires = if share.expired { format!("expired {}", timestamp(Some(&share.expires_at))) } else { timestamp(Some(&share.expires_at)) };
                view! {
                    <tr data-share=share.id.clone()>
                        <td><code>{share.id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<String>()}</code></td>
                        <td>{timestamp(Some(&share.created_at))}</td>
                        <td class=share.expired.then_some("expired")>{expires}</td>
                        <td><form method="post" action=revoke class="inline"><button type="submit" class="link">"Revoke"</button></form></td>
                    </tr>
                }
            }).collect_view()}</tbody>
        </table>
        <form method="post" action=format!("{base}/shares") class="inline">
            <label>"New link, valid for "<select name="expires_in">
                {SHARE_EXPIRIES.into_iter().map(|(value, label)| view! { <option value=value selected={value == "30days"}>{label}</option> }).collect_view()}
            </select></label>
            " "<button type="submit">"Make a share link"</button>
        </form>
        <h2>"Delete"</h2>
        <form method="post" action=format!("{base}/delete") class="inline">
            <button type="submit" class="danger">"Delete this board"</button>
        </form>
    };
    crate::pages::document(&format!("Edit {title}"), Some(chrome), content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_colours_only_a_busy_pipelines_silence() {
        let at = |busy: bool, now_ms: i64| Freshness { since: Some("1970-01-01T00:00:00Z".into()), busy, now_ms };
        assert_eq!((at(true, 5_000).level(), at(true, 5_000).text().as_str()), ("ok", "updated 5 s ago"));
        assert_eq!(at(true, AMBER_AFTER_MS).level(), "amber");
        assert_eq!(
            (at(true, RED_AFTER_MS).level(), at(true, RED_AFTER_MS).text().as_str()),
            ("red", "updated 5 min ago")
        );
        assert_eq!(at(false, 10 * RED_AFTER_MS).level(), "ok", "a quiet pipeline is quiet, not late");
        assert_eq!(at(false, 3 * 86_400_000).text(), "updated 3 days ago");
        assert_eq!(Freshness::default().text(), "no events yet");
    }

    fn panel(body: PanelBody) -> BoardPanel {
        BoardPanel {
            base: "/boards/ops".into(),
            links: true,
            index: 2,
            title: "Orders".into(),
            width: 3,
            range: ChartRange::Week,
            body,
        }
    }

    #[test]
    fn a_pipeline_panel_follows_its_pipeline_and_refreshes_over_the_boards_range() {
        let chart = Chart { range: ChartRange::Week, from_ms: 0, bucket_ms: 3_600_000, counts: vec![1, 2, 3] };
        let html = board_panel(panel(PanelBody::Pipeline {
            pipeline: "orders".into(),
            seq: 7,
            count: 6,
            rate: 0.5,
            chart,
            fresh: Freshness { since: Some("1970-01-01T00:00:10Z".into()), busy: true, now_ms: 100_000 },
        }));
        assert!(html.contains(r#"data-fresh="amber""#) && html.contains("updated 1 min ago"), "{html}");
        assert!(html.contains(r#"class="board-panel w3""#), "{html}");
        assert!(html.contains(r#"data-pipeline="orders""#) && html.contains(r#"data-seq="7""#), "{html}");
        assert!(html.contains(r#"data-refresh="/boards/ops/panels/2?range=7d""#), "{html}");
        assert!(html.contains("events per hour, last 7 days"), "{html}");
        assert_eq!(html.matches("<rect").count(), 3, "{html}");
    }

    #[test]
    fn a_note_is_its_html_and_follows_nothing() {
        let html = board_panel(panel(PanelBody::Note { html: crate::notes::note_html("*hi* <script>") }));
        assert!(html.contains("<em>hi</em>") && html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("data-pipeline") && !html.contains("data-refresh"), "{html}");
    }

    #[test]
    fn a_panel_whose_pipeline_is_gone_says_so_without_retrying() {
        let html = board_panel(panel(PanelBody::Absent {
            pipeline: None,
            why: "There is no pipeline \"gone\".".into(),
            retry: false,
        }));
        assert!(html.contains("no pipeline") && !html.contains("data-refresh"), "{html}");
    }
}
