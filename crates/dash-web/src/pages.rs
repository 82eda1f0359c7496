//! The pages and the fragments the browser script re-fetches. Each function returns finished
//! HTML: a whole document for pages, one element for fragments.

use leptos::prelude::*;

use crate::charts::{BarChart, Sparkline};
use crate::display::{preview, rate, timestamp, uptime};
use crate::{
    ChartRange, Chrome, LatestEvents, NodeRow, NodeStatus, PipelinePanel, PipelineSummary, REFRESH_MS,
    RefusedDeliveries, SendInstructions, SourceStatus,
};

/// Characters of payload shown per event.
const PREVIEW_CHARS: usize = 140;

pub(crate) fn document(title: &str, chrome: Option<Chrome>, content: impl IntoView + 'static) -> String {
    document_reloading(title, chrome, content, None)
}

/// A page without the site's navigation: a board seen through a share link (whose visitor may
/// open nothing else), or on a wall (`kiosk`: no header or footer, the grid across the screen).
/// `live` is the WebSocket path the script opens (`/live` when `None`).
pub(crate) fn document_bare(
    title: &str,
    content: impl IntoView + 'static,
    kiosk: bool,
    live: Option<String>,
) -> String {
    let title = format!("{title} · Dash");
    let page = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <meta name="referrer" content="no-referrer" />
                <title>{title}</title>
                <link rel="stylesheet" href="/assets/dash.css" />
                <script type="module" src="/assets/live.js"></script>
                <noscript><meta http-equiv="refresh" content="30" /></noscript>
            </head>
            <body data-refresh-ms=REFRESH_MS.to_string() data-live=live class=kiosk.then_some("kiosk")>
                <header class="top bare">
                    <span class="brand">"Dash"</span>
                    <span id="live-status" class="status" data-state="static"
                        title="static: this page shows the moment it was loaded">"static"</span>
                </header>
                <main>{content}</main>
            </body>
        </html>
    };
    format!("<!DOCTYPE html>{}", page.to_html())
}

/// [`document`], reloading itself every `reload_secs` when given (a page waiting for something
/// to come back), with or without scripts.
fn document_reloading(
    title: &str,
    chrome: Option<Chrome>,
    content: impl IntoView + 'static,
    reload_secs: Option<u32>,
) -> String {
    let title = format!("{title} · Dash");
    let signed_in = chrome.as_ref().is_some_and(|c| c.signed_in);
    let footer = chrome.map(|c| format!("node {} · {} · {} · dashd {}", c.node, c.role, c.region, c.version));
    let page = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <title>{title}</title>
                <link rel="stylesheet" href="/assets/dash.css" />
                <script type="module" src="/assets/live.js"></script>
                {match reload_secs {
                    Some(secs) => view! { <meta http-equiv="refresh" content=secs.to_string() /> }.into_any(),
                    None => view! { <noscript><meta http-equiv="refresh" content="30" /></noscript> }.into_any(),
                }}
            </head>
            <body data-refresh-ms=REFRESH_MS.to_string()>
                <header class="top">
                    <a class="brand" href="/">"Dash"</a>
                    <nav>
                        <a href="/">"Pipelines"</a>
                        <a href="/boards">"Boards"</a>
                        <a href="/cluster">"Cluster"</a>
                    </nav>
                    <span id="live-status" class="status" data-state="static"
                        title="static: this page shows the moment it was loaded">"static"</span>
                    {signed_in.then(|| view! {
                        <form class="signout" method="post" action="/logout"><button type="submit">"Sign out"</button></form>
                    })}
                </header>
                <main>{content}</main>
                {footer.map(|text| view! { <footer>{text}</footer> })}
            </body>
        </html>
    };
    format!("<!DOCTYPE html>{}", page.to_html())
}

/// `/`: every pipeline with its count, rate, last event and last hour.
pub fn overview(chrome: Chrome, pipelines: Vec<PipelineSummary>) -> String {
    let content = if pipelines.is_empty() {
        view! {
            <h1>"Pipelines"</h1>
            <p class="empty">
                "No pipelines yet. Create one with " <code>"dashd pipeline create NAME"</code> " or "
                <code>"POST /api/pipelines"</code> "."
            </p>
        }
        .into_any()
    } else {
        let rows = pipelines.into_iter().map(|p| view! { <OverviewRow summary=p /> }).collect_view();
        view! {
            <h1>"Pipelines"</h1>
            <table class="pipelines">
                <thead>
                    <tr>
                        <th>"Pipeline"</th>
                        <th class="num">"Events"</th>
                        <th class="num">"Events/s"</th>
                        <th>"Last event (UTC)"</th>
                        <th>"Last hour"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    document("Pipelines", Some(chrome), content)
}

/// One overview row; also the fragment at `/pipelines/{id}/row`.
pub fn overview_row(summary: PipelineSummary) -> String {
    view! { <OverviewRow summary=summary /> }.to_html()
}

#[component]
fn OverviewRow(summary: PipelineSummary) -> impl IntoView {
    let href = format!("/pipelines/{}", summary.id);
    let refresh = format!("/pipelines/{}/row", summary.id);
    let pipeline = summary.id.clone();
    view! {
        <tr data-pipeline=pipeline data-seq=summary.stats.seq.to_string() data-refresh=refresh>
            <td>
                <a href=href>{summary.name}</a>
                <div class="sub">{summary.id}</div>
                {summary.pinned.into_iter().map(|(name, aggregate, value)| view! {
                    <div class="pinned" data-view=name.clone()>{format!("{name} ({aggregate}, last hour): ")}<strong>{value}</strong></div>
                }).collect_view()}
            </td>
            <td class="num" data-field="count">{summary.stats.count.to_string()}</td>
            <td class="num">{rate(summary.rate)}</td>
            <td>
                <time data-field="last_event_at" datetime=summary.stats.last_event_at.clone().unwrap_or_default()>
                    {timestamp(summary.stats.last_event_at.as_deref())}
                </time>
            </td>
            <td><Sparkline counts=summary.last_hour /></td>
        </tr>
    }
}

/// `/pipelines/{id}`: what people look at first (live counters, the chart, the view cards), then
/// the latest events and how to send (first, for a pipeline without events yet).
pub fn pipeline(
    chrome: Chrome,
    summary: PipelineSummary,
    panel: PipelinePanel,
    latest: LatestEvents,
    send: SendInstructions,
    source: Option<SourceStatus>,
    views: crate::views::ViewsPart,
) -> String {
    let title = summary.name.clone();
    let range = panel.chart.range;
    let stats = summary.stats;
    let pipeline = summary.id.clone();
    let pipeline_id = summary.id.clone();
    let retention = summary.retention.clone().unwrap_or_else(|| "the default".to_owned());
    // A pipeline that has no events yet leads with how to connect its sender.
    let first_steps = stats.count == 0;
    let refused = send.refused.clone().filter(|r| r.total > 0).map(|r| refusal_banner(&r, send.provider.as_deref()));
    let setup_first = first_steps.then(|| view! { <SendSection send=send.clone() range=range /> });
    let setup_last = (!first_steps).then(|| view! { <SendSection send=send range=range /> });
    let content = view! {
        <nav class="crumbs"><a href="/">"Pipelines"</a>" / "{summary.name.clone()}</nav>
        <h1>{summary.name}" "<code class="id">{summary.id.clone()}</code></h1>
        {refused}
        {setup_first}
        <section class="counters" data-pipeline=pipeline data-seq=stats.seq.to_string()>
            <div class="counter">
                <div class="label">"Events"</div>
                <div class="value big" data-field="count">{stats.count.to_string()}</div>
            </div>
            <div class="counter">
                <div class="label">"Last event (UTC)"</div>
                <div class="value">
                    <time data-field="last_event_at" datetime=stats.last_event_at.clone().unwrap_or_default()>
                        {timestamp(stats.last_event_at.as_deref())}
                    </time>
                </div>
            </div>
            <div class="counter">
                <div class="label">"Duplicates absorbed"</div>
                <div class="value" data-field="duplicates">{stats.duplicates.to_string()}</div>
            </div>
            <div class="counter">
                <div class="label">"Events kept for"</div>
                <div class="value" data-field="retention">{retention}</div>
            </div>
            {(summary.set_aside > 0).then(|| view! {
                <div class="counter warn" title="The database refused these events for what they hold; they are kept aside in events_set_aside with its error.">
                    <div class="label">"Set aside (refused by the store)"</div>
                    <div class="value" data-field="set_aside">{summary.set_aside.to_string()}</div>
                </div>
            })}
        </section>
        <Panel panel=panel />
        <crate::views::ViewsSection pipeline=pipeline_id cards=views.cards fields=views.fields
            events_looked_at=views.events_looked_at can_edit=views.can_edit />
        <LatestSection latest=latest />
        {source.map(|source| view! { <SourceSection source=source /> })}
        {setup_last}
    };
    document(&title, Some(chrome), content)
}

/// The live panel alone: the fragment at `/pipelines/{id}/panel?range=…`.
pub fn pipeline_panel(panel: PipelinePanel) -> String {
    view! { <Panel panel=panel /> }.to_html()
}

/// The latest events alone: the fragment at `/pipelines/{id}/latest?range=…&events=…`.
pub fn pipeline_latest(latest: LatestEvents) -> String {
    view! { <LatestSection latest=latest /> }.to_html()
}

/// The latest events, newest first: [`crate::LATEST_EVENTS`] of them, with a link to
/// [`crate::LATEST_EVENTS_MORE`] (and back); the link keeps the chart's range.
#[component]
fn LatestSection(latest: LatestEvents) -> impl IntoView {
    let range = latest.range.as_str();
    let shown = latest.shown;
    let refresh = format!("/pipelines/{}/latest?range={range}&events={shown}", latest.pipeline);
    let more = latest.events.len() > crate::LATEST_EVENTS;
    let toggle = more.then(|| {
        let (label, count) = match shown > crate::LATEST_EVENTS {
            true => (format!("Show {}", crate::LATEST_EVENTS), crate::LATEST_EVENTS),
            false => (format!("Show {}", crate::LATEST_EVENTS_MORE), crate::LATEST_EVENTS_MORE),
        };
        view! { <a class="more" href=format!("?range={range}&events={count}#latest")>{label}</a> }
    });
    let rows = latest
        .events
        .into_iter()
        .take(shown)
        .map(|e| {
            view! {
                <tr>
                    <td class="time">{timestamp(Some(&e.time))}</td>
                    <td class="event-id"><code>{e.id}</code></td>
                    <td class="event-type">{e.event_type.unwrap_or_default()}</td>
                    <td class="payload"><code>{preview(&e.payload, PREVIEW_CHARS)}</code></td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="panel latest" id="latest" data-pipeline=latest.pipeline data-refresh=refresh>
            <div class="chart-head">
                <h2>"Latest events"</h2>
                {toggle}
            </div>
            <table class="events">
                <thead><tr><th>"Time (UTC)"</th><th>"Id"</th><th>"Type"</th><th>"Payload"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
}

#[component]
fn Panel(panel: PipelinePanel) -> impl IntoView {
    let range = panel.chart.range;
    let refresh = format!("/pipelines/{}/panel?range={}", panel.pipeline, range.as_str());
    let bucket = range.bucket_label();
    let tabs = ChartRange::ALL
        .into_iter()
        .map(|r| {
            let current = (r == range).then_some("page");
            view! { <a href=format!("?range={}", r.as_str()) aria-current=current>{r.label()}</a> }
        })
        .collect_view();
    view! {
        <section class="panel" data-pipeline=panel.pipeline data-refresh=refresh>
            <div class="counter rate">
                <div class="label">"Events/s (last minute)"</div>
                <div class="value">{rate(panel.rate)}</div>
            </div>
            <div class="counter rate latency" title="From a sender's 202 to the figure leaving this node for the browsers, over the last hour">
                <div class="label">"202 to screen, last hour"</div>
                <div class="value">{match panel.latency {
                    Some(e) => format!("p50 {} · p99 {}", duration_ms(e.p50_ms), duration_ms(e.p99_ms)),
                    None => "–".to_owned(),
                }}</div>
            </div>
            <div class="chart-head">
                <h2>{format!("Events per {bucket}, {}", range.span_text())}</h2>
                <nav class="ranges">{tabs}</nav>
            </div>
            <BarChart chart=panel.chart />
        </section>
    }
}

/// A latency as people read it: `640 ms`, `1.2 s`.
fn duration_ms(ms: u32) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", f64::from(ms) / 1000.0) }
}

/// "12 deliveries refused in the last hour: bad signature — check the secret in GitHub's
/// webhook settings."
fn refusal_banner(refused: &RefusedDeliveries, provider: Option<&str>) -> impl IntoView + use<> {
    let sender = provider.map_or("the sender", provider_name);
    let (what, hint) = match refused.main_reason.as_str() {
        "missing_signature" => (
            "no signature",
            format!("the request carried none: is {sender} signing its deliveries, and posting to this pipeline?"),
        ),
        "stale_timestamp" => (
            "stale timestamp",
            "the signature is more than 5 minutes old: check the sender's clock, or a queue replaying old deliveries"
                .to_owned(),
        ),
        "bad_token" => ("wrong token", format!("check the token or secret token in {sender}'s webhook settings")),
        _ => ("bad signature", format!("check the secret in {sender}'s webhook settings")),
    };
    let plural = if refused.total == 1 { "delivery" } else { "deliveries" };
    let text = format!("{} {plural} refused in the last hour: {what} — {hint}.", refused.total);
    let latest = refused.latest_at.clone();
    view! {
        <section class="refused warn" role="alert">
            <p>{text}</p>
            {latest.map(|at| view! { <p class="latest">"Latest (UTC): "{timestamp(Some(&at))}</p> })}
        </section>
    }
}

/// A provider's name as people write it.
fn provider_name(provider: &str) -> &str {
    match provider {
        "github" => "GitHub",
        "stripe" => "Stripe",
        "shopify" => "Shopify",
        "slack" => "Slack",
        "gitlab" => "GitLab",
        "twilio" => "Twilio",
        "hmac" => "the sender",
        other => other,
    }
}

/// Where a provider takes the URL and the secret, and what content type to choose.
fn provider_steps(provider: &str) -> Vec<&'static str> {
    match provider {
        "github" => vec![
            "In the repository or organization: Settings → Webhooks → Add webhook.",
            "Payload URL: the URL above. Content type: application/json (application/x-www-form-urlencoded works too).",
            "Secret: the secret this pipeline was given. Choose the events, then Add webhook: GitHub's ping is the first event.",
        ],
        "stripe" => vec![
            "In the Dashboard: Developers → Webhooks → Add endpoint, with the URL above and the events to send.",
            "Stripe then shows the endpoint's signing secret (whsec_…): give it to this pipeline with PUT /api/pipelines/{id}/verify or dashd pipeline verify.",
        ],
        "shopify" => vec![
            "Settings → Notifications → Webhooks → Create webhook (or your app's webhook subscriptions), format JSON, with the URL above.",
            "The secret is the one Shopify shows under the webhooks list (an app's client secret for app webhooks).",
        ],
        "slack" => vec![
            "In your app's settings: Event Subscriptions → Enable Events, Request URL: the URL above. Dash answers Slack's check itself.",
            "The secret is the app's Signing Secret (Basic Information → App Credentials). Slash commands and interactivity may use the same URL.",
        ],
        "gitlab" => vec![
            "In the project or group: Settings → Webhooks → Add new webhook, URL: the URL above.",
            "Secret token: the secret this pipeline was given. Pick the triggers, then Add webhook and Test.",
        ],
        "twilio" => vec![
            "In the Console, the phone number's or service's webhook (HTTP POST): the URL above, exactly as written — Twilio signs it.",
            "The secret is the account's Auth Token. Behind a proxy that terminates TLS without X-Forwarded-Proto, set DASH_PUBLIC_URL.",
        ],
        _ => vec![
            "Point the sender at the URL above; it signs each body with the secret this pipeline was given, in the header its verify names.",
        ],
    }
}

/// A shell snippet that signs one event the Standard Webhooks way and posts it.
pub fn signed_curl(url: &str, secret: Option<&str>) -> String {
    let secret = secret.unwrap_or("whsec_…your signing secret…");
    format!(
        r#"SECRET='{secret}'
BODY='{{"type":"hello","value":1}}'
ID="evt_$(date +%s%N)"; TS="$(date +%s)"
KEY="$(printf %s "${{SECRET#whsec_}}" | base64 -d | od -An -vtx1 | tr -d ' \n')"
SIG="$(printf %s "$ID.$TS.$BODY" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$KEY" -binary | base64)"
curl -sS '{url}' -H 'content-type: application/json' \
  -H "webhook-id: $ID" -H "webhook-timestamp: $TS" -H "webhook-signature: v1,$SIG" \
  --data "$BODY""#
    )
}

/// Where a polling pipeline's events come from, and how its polls went.
#[component]
fn SourceSection(source: SourceStatus) -> impl IntoView {
    let failing = source.last_error.is_some();
    view! {
        <section class="source">
            <h2>"Source"</h2>
            <p><code>{source.url}</code>" · "{source.schedule}</p>
            <dl class="source-status">
                <dt>"Last poll (UTC)"</dt><dd>{timestamp(source.last_run.as_deref())}</dd>
                <dt>"Next poll (UTC)"</dt><dd>{timestamp(source.next_run.as_deref())}</dd>
                <dt>"Polls"</dt><dd>{source.runs.to_string()}" ("{source.failures.to_string()}" failed)"</dd>
                <dt>"Events read"</dt><dd>{source.events.to_string()}</dd>
                <dt>"Last error"</dt>
                <dd class=if failing { "error" } else { "" }>{source.last_error.unwrap_or_else(|| "none".into())}</dd>
            </dl>
        </section>
    }
}

#[component]
fn SendSection(send: SendInstructions, range: ChartRange) -> impl IntoView {
    if let Some(provider) = send.provider.clone() {
        let steps = provider_steps(&provider).into_iter().map(|step| view! { <li>{step}</li> }).collect_view();
        return view! {
            <section class="send provider" data-provider=provider.clone()>
                <h2>{format!("Connect {}", provider_name(&provider))}</h2>
                <p>"This pipeline takes deliveries signed "{provider_name(&provider).to_owned()}"'s way. Its URL:"</p>
                <pre><code class="webhook-url">{send.url}</code></pre>
                <ol class="steps">{steps}</ol>
                <p>"The pipeline's bearer token works too, for senders that can set an Authorization header."</p>
            </section>
        }
        .into_any();
    }
    let snippet = signed_curl(&send.url, send.secret.as_deref());
    let token_example = format!(
        "curl -sS '{}' -H \"authorization: Bearer $DASH_PIPELINE_TOKEN\" \\\n  -H 'content-type: application/x-ndjson' --data-binary @events.ndjson",
        send.url
    );
    let secret = match send.secret {
        Some(secret) => view! {
            <p class="secret">"Signing secret: "<code>{secret}</code>" "
                <a href=format!("?range={}", range.as_str())>"hide"</a></p>
        }
        .into_any(),
        None => view! {
            <form class="reveal" method="get">
                <input type="hidden" name="range" value=range.as_str() />
                <input type="hidden" name="reveal" value="secret" />
                <button type="submit">"Show signing secret"</button>
            </form>
        }
        .into_any(),
    };
    view! {
        <section class="send">
            <h2>"Send events"</h2>
            <p>"POST one JSON object, a JSON array or NDJSON to:"</p>
            <pre><code class="webhook-url">{send.url}</code></pre>
            <p>"Signed with the pipeline's secret (Standard Webhooks; needs openssl):"</p>
            <pre><code class="signed-curl">{snippet}</code></pre>
            {secret}
            <p>"Or with the pipeline's bearer token, shown once when the pipeline was created or its credentials rotated:"</p>
            <pre><code>{token_example}</code></pre>
        </section>
    }
    .into_any()
}

/// How often the cluster page re-fetches its node list, in milliseconds.
const NODES_REFRESH_MS: u64 = 2_000;

/// `/cluster`: every node heard from, and this node's health checks.
pub fn cluster(chrome: Chrome, node: NodeStatus, nodes: Vec<NodeRow>) -> String {
    let checks = node
        .checks
        .into_iter()
        .map(|(name, ok, detail)| {
            let state = if ok { "ok" } else { "failing" };
            view! { <li class=state><strong>{name}</strong>" "{state}" "<span class="sub">{detail}</span></li> }
        })
        .collect_view();
    let content = view! {
        <h1>"Cluster"</h1>
        <Nodes nodes=nodes />
        <h2>{format!("This node: {} ({}, {}), up {}", node.node, node.role, node.region, uptime(node.uptime_secs))}</h2>
        <p>"Health: "<strong class=format!("health {}", node.status)>{node.status.clone()}</strong>" · dashd "{node.version}</p>
        <ul class="checks">{checks}</ul>
    };
    document("Cluster", Some(chrome), content)
}

/// The node list alone: the fragment at `/cluster/nodes`.
pub fn cluster_nodes(nodes: Vec<NodeRow>) -> String {
    view! { <Nodes nodes=nodes /> }.to_html()
}

#[component]
fn Nodes(nodes: Vec<NodeRow>) -> impl IntoView {
    let with_dns = nodes.iter().any(|n| n.in_dns.is_some());
    let rows = nodes
        .into_iter()
        .map(|n| {
            let marker = n.this_node.then(|| view! { " "<span class="sub">"(this node)"</span> });
            let id = n.node.clone();
            let dns = with_dns.then(|| {
                let listed = if n.in_dns == Some(true) { "listed" } else { "not listed" };
                view! { <td class=format!("dns {}", listed.replace(' ', "-"))>{listed}</td> }
            });
            // A down node's last figures are stale: shown, but not coloured against thresholds.
            let figures = n.load.as_ref().map(|load| crate::load::figures(&n.role, load)).unwrap_or_default();
            let live = n.status == "up";
            let actions: Vec<&'static str> =
                figures.iter().flatten().filter(|_| live).filter_map(|f| f.action).collect();
            let cells = figures
                .into_iter()
                .map(|figure| match figure {
                    Some(f) => {
                        let class = if live { format!("fig {}", f.standing.class()) } else { "fig stale".to_owned() };
                        view! { <td class=class data-figure=f.name>{f.text}</td> }.into_any()
                    }
                    None => view! { <td class="fig none">"–"</td> }.into_any(),
                })
                .collect_view();
            view! {
                <tr data-node=id>
                    <td>{n.node}{marker}</td>
                    <td>{n.role}</td>
                    <td>{n.region}</td>
                    <td>{n.version}</td>
                    <td class=format!("node-status {}", n.status)>{n.status.clone()}</td>
                    <td>{timestamp(Some(&n.last_seen))}</td>
                    {dns}
                    {cells}
                    <td class="actions">{actions.join("; ")}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="nodes" data-refresh="/cluster/nodes" data-refresh-every=NODES_REFRESH_MS.to_string()>
            <table class="nodes">
                <thead>
                    <tr>
                        <th>"Node"</th><th>"Role"</th><th>"Region"</th><th>"Version"</th><th>"Status"</th><th>"Last seen (UTC)"</th>
                        {with_dns.then(|| view! { <th>"DNS"</th> })}
                        <th>"Memory"</th><th>"CPU"</th><th>"Sockets"</th><th>"Jobs"</th><th>"Backlog"</th><th>"Intake"</th><th>"NATS"</th><th>"Act"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
}

/// `/login`: the admin token form. `next` is where to go after signing in.
pub fn login(next: &str, error: Option<&str>) -> String {
    let content = view! {
        <section class="login">
            <h1>"Sign in"</h1>
            <p>"This dashboard is protected by the admin token (DASH_ADMIN_TOKEN)."</p>
            {error.map(|e| view! { <p class="error" role="alert">{e.to_owned()}</p> })}
            <form method="post" action="/login">
                <label>"Admin token "<input type="password" name="token" autocomplete="current-password" required autofocus /></label>
                <input type="hidden" name="next" value=next.to_owned() />
                <button type="submit">"Sign in"</button>
            </form>
        </section>
    };
    document("Sign in", None, content)
}

/// A page that only says something went wrong and where to go.
pub fn message(chrome: Option<Chrome>, title: &str, text: &str) -> String {
    document(title, chrome, message_content(title, text))
}

/// A message for something that should pass (the database unreachable): the page tries again
/// by itself every `retry_secs`.
pub fn message_retrying(chrome: Option<Chrome>, title: &str, text: &str, retry_secs: u32) -> String {
    document_reloading(title, chrome, message_content(title, text), Some(retry_secs))
}

fn message_content(title: &str, text: &str) -> impl IntoView + 'static {
    view! {
        <h1>{title.to_owned()}</h1>
        <p>{text.to_owned()}</p>
        <p><a href="/">"Back to pipelines"</a></p>
    }
}

#[cfg(test)]
mod tests {
    use dash_domain::PipelineStats;

    use super::*;
    use crate::{Chart, EventRow};

    fn chrome() -> Chrome {
        Chrome {
            node: "n1".into(),
            role: "all".into(),
            region: "local".into(),
            version: "0.1.0".into(),
            signed_in: true,
        }
    }

    fn summary() -> PipelineSummary {
        PipelineSummary {
            id: "orders".into(),
            name: "Orders <&>".into(),
            stats: PipelineStats {
                count: 42,
                seq: 7,
                duplicates: 3,
                last_event_at: Some("2026-11-23T10:01:02.000Z".into()),
            },
            last_hour: vec![1; 60],
            rate: 0.5,
            retention: Some("7days".into()),
            set_aside: 0,
            pinned: Vec::new(),
        }
    }

    fn panel() -> PipelinePanel {
        PipelinePanel {
            pipeline: "orders".into(),
            rate: 0.5,
            chart: Chart { range: ChartRange::Hour, from_ms: 0, bucket_ms: 60_000, counts: vec![0; 60] },
            latency: Some(crate::EndToEnd { p50_ms: 640, p99_ms: 1_250, batches: 12 }),
        }
    }

    fn latest() -> LatestEvents {
        LatestEvents {
            pipeline: "orders".into(),
            range: ChartRange::Hour,
            events: vec![EventRow {
                event_type: Some("push".into()),
                id: "evt_1".into(),
                time: "2026-11-23T10:01:02.000Z".into(),
                payload: format!("{{\"script\":\"</code><script>alert(1)</script>\",\"pad\":\"{}\"}}", "x".repeat(500)),
            }],
            shown: crate::LATEST_EVENTS,
        }
    }

    #[test]
    fn overview_lists_pipelines_with_what_the_script_follows() {
        let html = overview(chrome(), vec![summary()]);
        assert!(html.starts_with("<!DOCTYPE html><html"), "{html}");
        assert!(html.contains(r#"data-pipeline="orders" data-seq="7" data-refresh="/pipelines/orders/row""#), "{html}");
        assert!(html.contains(r#"data-field="count" class="num">42<"#), "{html}");
        assert!(html.contains("Orders &lt;&amp;&gt;"), "names are escaped: {html}");
        assert!(html.contains("2026-11-23 10:01:02"), "{html}");
        assert!(html.contains(r#"action="/logout""#), "signed in shows sign out");
        let empty = overview(chrome(), vec![]);
        assert!(empty.contains("No pipelines yet"), "{empty}");
    }

    #[test]
    fn pipeline_page_escapes_payloads_and_hides_the_secret_until_asked() {
        let send = SendInstructions { url: "http://h/webhooks/orders".into(), ..Default::default() };
        let html = pipeline(chrome(), summary(), panel(), latest(), send, None, Default::default());
        assert!(!html.contains("<script>alert"), "payload is escaped: {html}");
        assert!(html.contains("…</code>"), "long payloads are cut");
        assert!(html.contains(r#"<td class="event-type">push</td>"#), "each event shows its type: {html}");
        assert!(html.contains(r#"data-refresh="/pipelines/orders/panel?range=1h""#), "{html}");
        assert!(html.contains(r#"href="?range=1h" aria-current="page""#), "{html}");
        assert!(html.contains("Show signing secret"), "{html}");
        assert!(html.contains("whsec_…your signing secret…"), "{html}");
        assert!(html.contains("Events kept for") && html.contains(">7days<"), "{html}");
        assert!(html.contains("202 to screen, last hour") && html.contains("p50 640 ms · p99 1.2 s"), "{html}");
        let send = SendInstructions {
            url: "http://h/webhooks/orders".into(),
            secret: Some("whsec_abc".into()),
            ..Default::default()
        };
        let html = pipeline(chrome(), summary(), panel(), latest(), send, None, Default::default());
        assert!(html.contains("SECRET=&#39;whsec_abc&#39;") || html.contains("SECRET='whsec_abc'"), "{html}");
    }

    #[test]
    fn a_provider_pipeline_leads_with_its_setup_and_says_why_deliveries_were_refused() {
        let mut empty = summary();
        empty.stats.count = 0;
        let send = SendInstructions {
            url: "https://dash.example/webhooks/gh".into(),
            provider: Some("github".into()),
            refused: Some(RefusedDeliveries {
                total: 12,
                main_reason: "bad_signature".into(),
                latest_at: Some("2026-12-06T10:00:00.000Z".into()),
            }),
            ..Default::default()
        };
        let html = pipeline(chrome(), empty, panel(), latest(), send.clone(), None, Default::default());
        assert!(
            html.contains("12 deliveries refused in the last hour: bad signature — check the secret in GitHub"),
            "{html}"
        );
        assert!(html.contains("Connect GitHub") && html.contains("Settings → Webhooks → Add webhook"), "{html}");
        assert!(html.contains("https://dash.example/webhooks/gh"), "{html}");
        assert!(!html.contains("Show signing secret"), "a provider's secret is not Dash's to show: {html}");
        let setup = html.find("Connect GitHub").unwrap();
        assert!(setup < html.find("Latest events").unwrap(), "no events yet: the setup comes first");
        let busy = pipeline(chrome(), summary(), panel(), latest(), send, None, Default::default());
        assert!(busy.find("Connect GitHub").unwrap() > busy.find("Latest events").unwrap(), "then it goes last");
    }

    #[test]
    fn the_page_puts_counters_chart_and_views_before_ten_of_the_latest_events() {
        let mut many = latest();
        let event = many.events[0].clone();
        many.events = (0..12).map(|i| EventRow { id: format!("evt_{i}"), ..event.clone() }).collect();
        let send = SendInstructions { url: "http://h/webhooks/orders".into(), ..Default::default() };
        let html = pipeline(chrome(), summary(), panel(), many.clone(), send, None, Default::default());
        let at = |text: &str| html.find(text).unwrap_or_else(|| panic!("{text} in {html}"));
        assert!(at("class=\"counters\"") < at("<svg"), "counters, then the chart");
        assert!(at("<svg") < at("<h2>Views</h2>"), "then the views");
        assert!(at("<h2>Views</h2>") < at("Latest events"), "then the latest events");
        assert!(at("Latest events") < at("Send events"), "and how to send last");
        assert_eq!(html.matches("<td class=\"event-id\">").count(), 10, "ten at first");
        assert!(html.contains(r#"<a href="?range=1h&amp;events=50#latest" class="more">Show 50</a>"#), "{html}");
        assert!(html.contains(r#"data-refresh="/pipelines/orders/latest?range=1h&amp;events=10""#), "{html}");
        many.shown = crate::LATEST_EVENTS_MORE;
        let fragment = pipeline_latest(many);
        assert!(fragment.starts_with("<section"), "{fragment}");
        assert_eq!(fragment.matches("<td class=\"event-id\">").count(), 12, "all of them when asked");
        assert!(fragment.contains(">Show 10</a>"), "{fragment}");
    }

    #[test]
    fn login_keeps_where_to_go_next() {
        let html = login("/pipelines/orders", Some("wrong token"));
        assert!(html.contains(r#"name="next" value="/pipelines/orders""#), "{html}");
        assert!(html.contains("wrong token"), "{html}");
        assert!(!html.contains("/logout"), "{html}");
    }
}
