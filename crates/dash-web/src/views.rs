//! Views on the pipeline page: a card per view (its value over the range, a chart with stacked
//! bars per group, the top groups with their shares), the field explorer, and the form that
//! makes a view. Every card is a fragment the script re-fetches when its pipeline changes.

use leptos::prelude::*;

use crate::ChartRange;
use crate::display::clock;

/// One view as its card shows it.
#[derive(Debug, Clone)]
pub struct ViewCard {
    pub pipeline: String,
    pub name: String,
    /// `sum of /amount by /currency`.
    pub describe: String,
    pub aggregate: String,
    pub range: ChartRange,
    /// While its history is being computed: how far (0 to 1).
    pub computing: Option<f64>,
    /// The value over the whole range (all groups).
    pub total: Option<f64>,
    pub n: u64,
    pub skipped: u64,
    pub from_ms: i64,
    pub bucket_ms: i64,
    /// One series per drawn group (top groups first; `""` for a view without groups), one value
    /// per bucket.
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Stacked bars per group (count and sum); else one bar per bucket of `series[0]`.
    pub stacked: bool,
    pub groups: Vec<GroupLine>,
    /// Delete and edit controls (a session, or no admin token).
    pub can_edit: bool,
    /// Why the card shows no figures (too much to read over the range, the store away).
    pub unavailable: Option<String>,
}

/// One group in a card's table.
#[derive(Debug, Clone)]
pub struct GroupLine {
    pub group: String,
    pub value: Option<f64>,
    pub n: u64,
    /// 0 to 1.
    pub share: f64,
}

/// One pointer of the field explorer.
#[derive(Debug, Clone)]
pub struct FieldLine {
    pub pointer: String,
    pub kinds: String,
    /// Percent of the events looked at that hold it.
    pub seen_pct: u32,
    pub samples: Vec<String>,
    pub numeric: bool,
}

/// What the new-view form holds (from the explorer's link, or as sent back with an error).
#[derive(Debug, Clone, Default)]
pub struct ViewForm {
    pub name: String,
    pub aggregate: String,
    pub field: String,
    pub group_by: String,
    pub filter: String,
    pub keep: String,
    pub pinned: bool,
    /// Changing an existing view (its name stays).
    pub editing: bool,
}

/// The views part of a pipeline page.
#[derive(Debug, Clone, Default)]
pub struct ViewsPart {
    pub cards: Vec<ViewCard>,
    pub fields: Vec<FieldLine>,
    pub events_looked_at: usize,
    pub can_edit: bool,
}

/// A number as a card shows it: integers without decimals, others with up to 2.
pub fn number(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

const W: f64 = 720.0;
const H: f64 = 160.0;
const AXIS: f64 = 18.0;
/// Colours (CSS classes `g0`…`g5`) for the top groups; the rest are not drawn apart.
pub const DRAWN_GROUPS: usize = 6;

#[component]
pub(crate) fn ViewChart(card: ViewCard) -> impl IntoView {
    let buckets = card.series.first().map_or(0, |(_, v)| v.len());
    let totals: Vec<f64> = (0..buckets)
        .map(|i| {
            if card.stacked {
                card.series.iter().map(|(_, v)| v[i].unwrap_or(0.0).max(0.0)).sum()
            } else {
                card.series.first().and_then(|(_, v)| v[i]).unwrap_or(0.0).max(0.0)
            }
        })
        .collect();
    let max = totals.iter().copied().fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { (H - AXIS - 4.0) / max } else { 0.0 };
    let slot = W / buckets.max(1) as f64;
    let gap = if slot > 4.0 { 1.0 } else { 0.0 };
    let mut rects = Vec::new();
    for i in 0..buckets {
        let x = i as f64 * slot;
        let mut y = H - AXIS;
        let drawn: Vec<(usize, &String, f64)> = if card.stacked {
            card.series.iter().enumerate().map(|(g, (name, v))| (g, name, v[i].unwrap_or(0.0).max(0.0))).collect()
        } else {
            card.series.first().map(|(name, v)| (0, name, v[i].unwrap_or(0.0).max(0.0))).into_iter().collect()
        };
        for (g, name, value) in drawn {
            if value <= 0.0 {
                continue;
            }
            let height = (value * scale).max(1.0);
            y -= height;
            let label = if name.is_empty() { String::new() } else { format!(" · {name}") };
            let title = format!(
                "{}{label} · {}",
                clock(card.from_ms + i as i64 * card.bucket_ms, card.bucket_ms),
                number(Some(value))
            );
            rects.push(view! {
                <rect class=format!("g{}", g % DRAWN_GROUPS) x=format!("{x:.1}") y=format!("{y:.1}")
                    width=format!("{:.1}", (slot - gap).max(0.5)) height=format!("{height:.1}")>
                    <title>{title}</title>
                </rect>
            });
        }
    }
    let first = clock(card.from_ms, card.bucket_ms);
    let last = clock(card.from_ms + (buckets.max(1) as i64 - 1) * card.bucket_ms, card.bucket_ms);
    view! {
        <svg class="chart view-chart" viewBox=format!("0 0 {W} {H}") role="img"
            aria-label=format!("{} per bucket over the {}", card.describe, card.range.span_text())>
            <line class="baseline" x1="0" x2=W.to_string() y1=(H - AXIS).to_string() y2=(H - AXIS).to_string()></line>
            <text class="peak" x="4" y="14">{format!("peak {}", number(Some(max)))}</text>
            {rects}
            <text class="tick" x="0" y=format!("{:.1}", H - 4.0) text-anchor="start">{first}</text>
            <text class="tick" x=W.to_string() y=format!("{:.1}", H - 4.0) text-anchor="end">{last}</text>
        </svg>
    }
}

#[component]
fn Card(card: ViewCard) -> impl IntoView {
    let refresh = format!("/pipelines/{}/views/{}/card?range={}", card.pipeline, card.name, card.range.as_str());
    let delete = format!("/pipelines/{}/views/{}/delete", card.pipeline, card.name);
    let computing = card.computing.map(|f| {
        view! { <p class="computing">{format!("Computing its history: {:.0} %", f * 100.0)}</p> }
    });
    let has_groups = !card.groups.is_empty();
    let skipped = (card.skipped > 0).then(|| {
        view! { <span class="skipped" title="events whose field was missing or not a number">{format!(" · {} skipped", card.skipped)}</span> }
    });
    let edit = format!("/pipelines/{}/views/new?edit={}", card.pipeline, card.name);
    let controls = card.can_edit.then(|| {
        view! {
            <a href=edit class="edit">"Edit"</a>
            <form method="post" action=delete class="inline">
                <button type="submit" class="link">"Delete"</button>
            </form>
        }
    });
    if let Some(why) = card.unavailable.clone() {
        return view! {
            <section class="view-card unavailable" data-pipeline=card.pipeline.clone() data-view=card.name.clone()
                data-refresh=refresh data-refresh-every="5000">
                <div class="view-head">
                    <h3>{card.name.clone()}</h3>
                    <span class="sub">{card.describe.clone()}</span>
                    {controls}
                </div>
                <p class="unavailable">{why}</p>
            </section>
        }
        .into_any();
    }
    view! {
        <section class="view-card" data-pipeline=card.pipeline.clone() data-view=card.name.clone() data-refresh=refresh
            data-refresh-every=card.computing.map(|_| "1000")>
            <div class="view-head">
                <h3>{card.name.clone()}</h3>
                <span class="sub">{card.describe.clone()}</span>
                {controls}
            </div>
            {computing}
            <div class="view-value">
                <span class="value big" data-field="view-value">{number(card.total)}</span>
                <span class="sub">{format!(" {} · {} · {} events", card.aggregate, card.range.span_text(), card.n)}</span>
                {skipped}
            </div>
            <ViewChart card=card.clone() />
            {has_groups.then(|| view! { <GroupsTable groups=card.groups.clone() /> })}
        </section>
    }
    .into_any()
}

/// A view's groups ranked, with their swatches, figures, events and shares.
#[component]
pub(crate) fn GroupsTable(groups: Vec<GroupLine>) -> impl IntoView {
    let rows = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let swatch = format!("swatch g{}", i.min(DRAWN_GROUPS - 1));
            view! {
                <tr>
                    <td><span class=swatch></span>" "{g.group.clone()}</td>
                    <td class="num">{number(g.value)}</td>
                    <td class="num">{g.n.to_string()}</td>
                    <td class="num">{format!("{:.1} %", g.share * 100.0)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="groups">
            <thead><tr><th>"Group"</th><th>"Value"</th><th>"Events"</th><th>"Share"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// One card alone: the fragment at `/pipelines/{id}/views/{view}/card`.
pub fn view_card(card: ViewCard) -> String {
    view! { <Card card=card /> }.to_html()
}

/// The views part of the pipeline page: the cards, then the field explorer.
#[component]
pub fn ViewsSection(
    pipeline: String,
    cards: Vec<ViewCard>,
    fields: Vec<FieldLine>,
    events_looked_at: usize,
    can_edit: bool,
) -> impl IntoView {
    let new = format!("/pipelines/{pipeline}/views/new");
    let cards_view = cards.into_iter().map(|card| view! { <Card card=card /> }).collect_view();
    let field_rows = fields
        .into_iter()
        .map(|f| {
            let base = format!("/pipelines/{pipeline}/views/new");
            let link = |aggregate: &str, as_group: bool| {
                let key = if as_group { "group_by" } else { "field" };
                let query = serde_urlencoded::to_string([("aggregate", aggregate), (key, f.pointer.as_str())])
                    .unwrap_or_default();
                format!("{base}?{query}")
            };
            let by = link("count", true);
            let numeric = f.numeric.then(|| {
                let (sum, p95) = (link("sum", false), link("p95", false));
                view! { " · "<a href=sum class="make-view">"sum"</a>" · "<a href=p95 class="make-view">"p95"</a> }
            });
            let distinct = link("distinct", false);
            view! {
                <tr data-pointer=f.pointer.clone()>
                    <td><code>{f.pointer.clone()}</code></td>
                    <td>{f.kinds}</td>
                    <td class="num">{format!("{} %", f.seen_pct)}</td>
                    <td class="samples">{f.samples.join(", ")}</td>
                    <td>
                        <a href=by class="make-view count-by">"count by"</a>
                        {numeric}
                        " · "<a href=distinct class="make-view">"distinct"</a>
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="views">
            <div class="chart-head">
                <h2>"Views"</h2>
                {can_edit.then(|| view! { <a href=new.clone()>"New view"</a> })}
            </div>
            {cards_view}
            <h2>"Fields"</h2>
            <p class="sub">{format!("In the latest {events_looked_at} events. Pick one to make a view of it.")}</p>
            <table class="fields">
                <thead><tr><th>"Field"</th><th>"Types"</th><th>"Seen"</th><th>"Samples"</th><th>"Make a view"</th></tr></thead>
                <tbody>{field_rows}</tbody>
            </table>
        </section>
    }
}

/// `/pipelines/{id}/views/new`: the form that makes a view (prefilled from the explorer).
pub fn view_form(
    chrome: crate::Chrome,
    pipeline: &str,
    pipeline_name: &str,
    form: ViewForm,
    error: Option<String>,
) -> String {
    let action = format!("/pipelines/{pipeline}/views");
    let back = format!("/pipelines/{pipeline}");
    let options = dash_aggregates()
        .into_iter()
        .map(|a| {
            let selected = a == form.aggregate;
            view! { <option value=a selected=selected>{a}</option> }
        })
        .collect_view();
    let content = view! {
        <nav class="crumbs"><a href="/">"Pipelines"</a>" / "<a href=back>{pipeline_name.to_owned()}</a>" / new view"</nav>
        <h1>{if form.editing { "Edit view" } else { "New view" }}</h1>
        {error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
        <form method="post" action=action class="view-form">
            <label>"Name "<input name="name" required value=form.name pattern="[a-z0-9][a-z0-9_-]*" maxlength="64"
                readonly=form.editing /></label>
            {form.editing.then(|| view! { <input type="hidden" name="replace" value="true" /> })}
            <label>"Aggregate "<select name="aggregate">{options}</select></label>
            <label>"Field (JSON pointer) "<input name="field" value=form.field placeholder="/amount" /></label>
            <label>"Group by (JSON pointer) "<input name="group_by" value=form.group_by placeholder="/currency" /></label>
            <label>"Filter (pointer=value, one per line) "<textarea name="filter" rows="2">{form.filter}</textarea></label>
            <label>"Keep "<input name="keep" value=form.keep placeholder="as long as the events" /></label>
            <label><input type="checkbox" name="pinned" value="true" checked=form.pinned />" Show on the overview"</label>
            <button type="submit">{if form.editing { "Save view" } else { "Create view" }}</button>
        </form>
    };
    crate::pages::document("New view", Some(chrome), content)
}

fn dash_aggregates() -> [&'static str; 10] {
    ["count", "sum", "avg", "min", "max", "distinct", "p50", "p90", "p95", "p99"]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(stacked: bool) -> ViewCard {
        ViewCard {
            pipeline: "orders".into(),
            name: "by-type".into(),
            describe: "count of events by /type".into(),
            aggregate: "count".into(),
            range: ChartRange::FiveMinutes,
            computing: Some(0.5),
            total: Some(6.0),
            n: 6,
            skipped: 1,
            from_ms: 0,
            bucket_ms: 60_000,
            series: vec![
                ("order".into(), vec![Some(2.0), None, Some(1.0)]),
                ("refund".into(), vec![Some(3.0), None, None]),
            ],
            stacked,
            groups: vec![
                GroupLine { group: "refund".into(), value: Some(3.0), n: 3, share: 0.5 },
                GroupLine { group: "order".into(), value: Some(3.0), n: 3, share: 0.5 },
            ],
            can_edit: true,
            unavailable: None,
        }
    }

    #[test]
    fn a_card_draws_stacked_groups_and_its_table() {
        let html = view_card(card(true));
        assert_eq!(html.matches("<rect").count(), 3, "{html}");
        assert!(html.contains("00:00 · refund · 3"), "{html}");
        assert!(html.contains("50.0 %") && html.contains("Computing its history: 50 %"), "{html}");
        assert!(html.contains("data-refresh=\"/pipelines/orders/views/by-type/card?range=5m\""), "{html}");
        assert!(html.contains("1 skipped") && html.contains("Delete"), "{html}");
        assert_eq!(number(Some(2.0)), "2");
        assert_eq!(number(Some(2.345)), "2.35");
        assert_eq!(number(None), "–");
    }
}
