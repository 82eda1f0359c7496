// Dash: keeps a server-rendered page live over the /live WebSocket.
//
// The page is complete without this script. With it, every element carrying data-pipeline and
// data-seq is followed: the script subscribes with after_seq, applies each update's stats to
// the [data-field] elements in place, and re-fetches the page's [data-refresh] fragments
// (charts, latest events) that the update made stale. Updates must arrive with seq rising by
// exactly one; anything else asks the server for a fresh snapshot. When the socket closes the
// script reconnects with capped, jittered backoff and resumes from the last seq it applied.

const STALE_AFTER_MS = 10_000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

const statusEl = document.getElementById("live-status");
const refreshMs = Number(document.body.dataset.refreshMs) || 2_000;
/** pipeline id -> { seq, stats } last applied */
const latest = new Map();
/** fragment url -> { timer, last } */
const refreshes = new Map();

let socket = null;
let attempt = 0;
let downSince = null;

function setStatus(state, detail) {
  if (!statusEl) return;
  statusEl.dataset.state = state;
  statusEl.textContent = state;
  statusEl.title = detail;
}

function scopesOf(pipeline) {
  return document.querySelectorAll(`[data-pipeline="${CSS.escape(pipeline)}"]`);
}

/** The pipelines this page shows, with the seq it was rendered at. */
function followed() {
  const seqs = new Map();
  for (const el of document.querySelectorAll("[data-pipeline][data-seq]")) {
    const seq = Number(el.dataset.seq);
    const id = el.dataset.pipeline;
    const known = latest.get(id)?.seq ?? -1;
    seqs.set(id, Math.max(seq, known, seqs.get(id) ?? -1));
  }
  return seqs;
}

/** `YYYY-MM-DD HH:MM:SS`, as the server renders times (UTC). */
function formatTime(rfc3339) {
  if (!rfc3339) return "never";
  const t = new Date(rfc3339);
  return Number.isNaN(t.getTime()) ? rfc3339 : t.toISOString().replace("T", " ").slice(0, 19);
}

function apply(pipeline, seq, stats, at) {
  for (const scope of scopesOf(pipeline)) {
    if (scope.dataset.seq !== undefined) scope.dataset.seq = String(seq);
    // A batch's commit time, else (a snapshot) its newest event's.
    const since = at ?? stats.last_event_at;
    for (const el of scope.querySelectorAll("[data-fresh-since]")) {
      if (since) el.dataset.freshSince = since;
    }
    showFreshness(scope);
    for (const el of scope.querySelectorAll("[data-field]")) {
      switch (el.dataset.field) {
        case "count":
          el.textContent = String(stats.count);
          break;
        case "duplicates":
          el.textContent = String(stats.duplicates);
          break;
        case "last_event_at":
          el.textContent = formatTime(stats.last_event_at);
          el.setAttribute("datetime", stats.last_event_at ?? "");
          break;
      }
    }
  }
}

/** Re-fetches the pipeline's fragments; a view's card only when `views` (the views the batch
 * changed) names it, or when `views` is null (a snapshot: what changed is unknown). */
function scheduleRefresh(pipeline, views) {
  for (const el of scopesOf(pipeline)) {
    const url = el.dataset.refresh;
    if (!url) continue;
    if (el.dataset.view !== undefined && views !== null && !views.includes(el.dataset.view)) continue;
    let state = refreshes.get(url);
    if (!state) refreshes.set(url, (state = { timer: null, last: 0 }));
    if (state.timer) continue;
    const wait = Math.max(0, state.last + refreshMs - Date.now());
    state.timer = setTimeout(() => refresh(url, pipeline, state), wait);
  }
}

async function refresh(url, pipeline, state) {
  state.last = Date.now();
  try {
    const response = await fetch(url, { credentials: "same-origin", headers: { accept: "text/html" } });
    if (!response.ok) return;
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const fresh = template.content.firstElementChild;
    const current = document.querySelector(`[data-refresh="${CSS.escape(url)}"]`);
    if (!fresh || !current) return;
    current.replaceWith(fresh);
    // An update may have landed while the fragment was in flight: never show older figures.
    const known = pipeline === null ? undefined : latest.get(pipeline);
    if (known && Number(fresh.dataset.seq ?? known.seq) < known.seq) apply(pipeline, known.seq, known.stats, known.at);
    showFreshness(fresh);
  } catch {
    // The next update or reconnect schedules another try.
  } finally {
    state.timer = null;
  }
}

function accept(pipeline, seq, stats, views, at) {
  const changed = latest.get(pipeline)?.seq !== seq;
  latest.set(pipeline, { seq, stats, at });
  apply(pipeline, seq, stats, at);
  if (changed) scheduleRefresh(pipeline, views);
}

function subscribe(ws, pipeline, afterSeq) {
  const message = { type: "subscribe", pipeline };
  if (afterSeq >= 0) message.after_seq = afterSeq;
  ws.send(JSON.stringify(message));
}

function handle(ws, message) {
  switch (message.type) {
    case "snapshot":
      accept(message.pipeline, message.seq, message.stats, null);
      break;
    case "update": {
      const known = latest.get(message.pipeline)?.seq;
      if (known !== undefined && message.seq <= known) return; // already shown
      if (known !== undefined && message.seq !== known + 1) {
        subscribe(ws, message.pipeline, known); // a gap: the server answers with a snapshot
        return;
      }
      accept(message.pipeline, message.seq, message.stats, (message.views ?? []).map((v) => v.view), message.at);
      break;
    }
    case "status":
      if (message.state === "stale") setStatus("stale", message.detail ?? "the server's updates are delayed");
      else if (message.state === "live") setStatus("live", "receiving updates");
      break;
    case "error":
      console.warn("dash live:", message.code, message.message);
      break;
  }
}

// Freshness: "updated 5 s ago" on every [data-fresh-since], amber past a minute and red past
// five of silence where the pipeline usually has traffic (data-busy), as the server renders it.
const AMBER_AFTER_MS = 60_000;
const RED_AFTER_MS = 300_000;

function age(ms) {
  const secs = Math.floor(ms / 1000);
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min`;
  if (secs < 172_800) return `${Math.floor(secs / 3600)} h`;
  return `${Math.floor(secs / 86_400)} days`;
}

function showFreshness(root) {
  for (const el of root.querySelectorAll("[data-fresh-since]")) {
    const since = Date.parse(el.dataset.freshSince);
    if (Number.isNaN(since)) continue;
    const ms = Math.max(0, Date.now() - since);
    el.textContent = `updated ${age(ms)} ago`;
    const busy = el.dataset.busy === "1";
    el.dataset.fresh = busy && ms >= RED_AFTER_MS ? "red" : busy && ms >= AMBER_AFTER_MS ? "amber" : "ok";
  }
}

setInterval(() => showFreshness(document), 1_000);

function downState() {
  return Date.now() - downSince >= STALE_AFTER_MS ? "stale" : "reconnecting";
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  // A board seen through a share link names its own way in (`/live?share=…`).
  const path = document.body.dataset.live || "/live";
  const ws = new WebSocket(`${scheme}${location.host}${path}`);
  socket = ws;
  if (downSince === null) setStatus("connecting", "opening the live connection");
  ws.onopen = () => {
    attempt = 0;
    downSince = null;
    const seqs = followed();
    for (const [pipeline, seq] of seqs) subscribe(ws, pipeline, seq);
    setStatus("live", `following ${seqs.size} pipeline${seqs.size === 1 ? "" : "s"}`);
  };
  ws.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(ws, message);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    if (downSince === null) downSince = Date.now();
    const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** attempt);
    attempt += 1;
    setStatus(downState(), "connection lost; retrying");
    setTimeout(connect, backoff * (0.5 + Math.random() / 2));
  };
}

setInterval(() => {
  if (downSince !== null) setStatus(downState(), "connection lost; retrying");
}, 1_000);

// Fragments that change without pipeline updates (the cluster's node list) refresh on a period.
for (const el of document.querySelectorAll("[data-refresh][data-refresh-every]")) {
  const url = el.dataset.refresh;
  const state = { timer: null, last: 0 };
  refreshes.set(url, state);
  setInterval(() => {
    if (state.timer) return; // the last one is still in flight
    state.timer = true;
    refresh(url, null, state);
  }, Math.max(500, Number(el.dataset.refreshEvery) || 2_000));
}

connect();
