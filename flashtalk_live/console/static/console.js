// The operator console: polls /api/status and /api/health, follows /api/events/stream (server-sent events; polls
// /api/events when the stream is refused), sends commands with the bearer token.
// No cookies: the token lives in this tab's sessionStorage and goes only into the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
let lastSeq = 0;

function token() { return sessionStorage.getItem("flashtalk-token") || ""; }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function secs(v) { return v === null || v === undefined ? "—" : Number(v).toFixed(1) + " s"; }

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

// POST a command: `body` is a File/Blob (the data frame; fields go in ?args=) or an object of fields (JSON).
async function command(name, body, fields) {
  const headers = { "Authorization": "Bearer " + token() };
  let url = "/api/commands/" + encodeURIComponent(name);
  let payload;
  if (body instanceof Blob) {
    headers["Content-Type"] = body.type || "application/octet-stream";
    if (fields) url += "?args=" + encodeURIComponent(JSON.stringify(fields));
    payload = body;
  } else {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body || {});
  }
  say(name + ": sending…", true);
  let reply;
  try {
    const r = await fetch(url, { method: "POST", headers, body: payload, credentials: "omit" });
    reply = await r.json();
    reply.http = r.status;
  } catch (e) {
    reply = { ok: false, code: "network", reason: String(e) };
  }
  if (reply.ok) {
    say(name + ": ok" + (reply.segment_id ? " (" + reply.segment_id + ")" : "") + (reply.was ? " was " + reply.was : ""), true);
  } else {
    say(name + ": " + reply.code + (reply.field ? " [" + reply.field + "]" : "") + ": " + reply.reason, false);
  }
  refresh();
  return reply;
}

// push -> air p50 per kind that has clips (status.latency.push_to_air, flashtalk_live/latency.py)
function pushToAir(st) {
  const kinds = Object.entries(((st.latency || {}).push_to_air) || {}).filter(([, v]) => v.count);
  return kinds.length ? " · push→air p50 " + kinds.map(([k, v]) => k + " " + Number(v.p50_s).toFixed(2) + " s").join(", ") : "";
}

function renderStatus(st) {
  const state = $("state");
  state.textContent = st.state;
  state.className = "badge " + st.state;
  const b = st.broadcast || {};
  $("health").textContent = "up " + secs(st.uptime_s) + " · A/V skew " + (b.av_skew_s ?? "—") +
    " s · render rtf " + (b.render_rtf === undefined ? "—" : Number(b.render_rtf).toFixed(3)) + " · look-ahead " + (b.buffered_frames ?? "—") +
    " frames · underruns " + (b.underrun_episodes ?? 0) + " · renderer " + ((st.renderer || {}).active || "—") +
    (b.producer_starved_seconds ? " · producer starved " + b.producer_starved_seconds + " s" : "") + pushToAir(st);
  const plan = st.plan || {};
  const cur = plan.on_air;
  if (cur) {
    const pct = cur.progress !== undefined ? " " + Math.round(cur.progress * 100) + "%" : "";
    $("on-air").textContent = "On air: " + cur.segment_id + " (" + (cur.source || "queue") + ")" + pct +
      " · " + secs(cur.elapsed_s) + " of " + secs(cur.duration_s);
    $("progress").value = cur.progress || 0;
  } else {
    $("on-air").textContent = "On air: idle (programme or silence)";
    $("progress").value = 0;
  }
  const meters = $("meters");
  const levels = (st.audio_levels || {}).rms_dbfs || [];
  const peaks = (st.audio_levels || {}).peak_dbfs || [];
  while (meters.children.length > levels.length) meters.lastChild.remove();
  levels.forEach((db, i) => {
    let m = meters.children[i];
    if (!m) {
      m = el("meter");
      m.min = -60; m.max = 0; m.low = -18; m.high = -6; m.optimum = -20;
      meters.appendChild(m);
    }
    m.value = Math.max(-60, db);
    m.title = "channel " + (i + 1) + ": RMS " + db + " dBFS, peak " + (peaks[i] ?? "—") + " dBFS";
  });
  const q = $("queue");
  q.replaceChildren();
  (plan.pending || []).forEach((p, i) => {
    const tr = el("tr");
    tr.dataset.segmentId = p.segment_id;
    [i + 1, p.segment_id, p.mode, secs(p.duration_s), secs(p.starts_in_s)].forEach((v) => tr.appendChild(el("td", v)));
    // Up/down: next to the neighbour's id, not to an index, so a queue that changed meanwhile moves the right clip.
    const prev = plan.pending[i - 1], next = plan.pending[i + 1];
    tr.appendChild(actionCell("▲", "up", () => command("move", { segment_id: p.segment_id, before: prev.segment_id }), !prev));
    tr.appendChild(actionCell("▼", "down", () => command("move", { segment_id: p.segment_id, after: next.segment_id }), !next));
    tr.appendChild(actionCell("Cancel", "cancel", () => command("cancel", { segment_id: p.segment_id })));
    q.appendChild(tr);
  });
  const outs = $("outputs");
  outs.replaceChildren();
  (st.outputs || []).forEach((o) => {
    const tr = el("tr", null, o.state);
    tr.dataset.name = o.name;
    [o.name, o.url, o.state, o.bitrate_bps ? Math.round(o.bitrate_bps / 1000) + " kb/s" : "—",
      o.reconnects ?? 0, o.last_error || ""].forEach((v) => tr.appendChild(el("td", v)));
    tr.appendChild(actionCell("Remove", "remove", () => command("output_remove", { name: o.name })));
    outs.appendChild(tr);
  });
}

// A table cell holding one button that runs `action`.
function actionCell(label, cls, action, disabled) {
  const td = el("td");
  const btn = el("button", label, cls);
  btn.type = "button";
  btn.disabled = !!disabled;
  btn.addEventListener("click", action);
  td.appendChild(btn);
  return td;
}

async function refresh() {
  try {
    const r = await fetch("/api/status", { credentials: "omit" });
    if (r.ok) renderStatus(await r.json());
  } catch (e) { /* the daemon restarting: try again on the next tick */ }
}

const seenSeqs = new Set();  // events from two publishing threads may arrive out of seq order: dedupe by seq

function addEvent(e, via) {
  if (seenSeqs.has(e.seq)) return;
  seenSeqs.add(e.seq);
  if (seenSeqs.size > 1000) seenSeqs.delete(seenSeqs.values().next().value);
  lastSeq = Math.max(lastSeq, e.seq);
  const { type, seq, ts, ...rest } = e;
  const time = new Date(ts * 1000).toLocaleTimeString();
  const li = el("li", time + " " + type + " " + JSON.stringify(rest), "event " + type);
  li.dataset.type = type;
  li.dataset.via = via;
  if (e.segment_id) li.dataset.segmentId = e.segment_id;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

async function pollEvents() {
  try {
    const r = await fetch("/api/events?after=" + lastSeq, { credentials: "omit" });
    if (!r.ok) return;
    const body = await r.json();
    for (const e of body.events) addEvent(e, "poll");
  } catch (e) { /* as above */ }
}

// Live events; the browser reconnects by itself (sending Last-Event-ID). A refused stream (too many open) closes
// for good: then poll.
function followEvents() {
  const es = new EventSource("/api/events/stream?after=" + lastSeq);
  es.onopen = () => { $("events-mode").textContent = "live"; };
  es.onmessage = (m) => { try { addEvent(JSON.parse(m.data), "stream"); } catch (e) { /* not JSON: skip */ } };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      $("events-mode").textContent = "polling";
      pollEvents();
      setInterval(pollEvents, 1000);
    } else {
      $("events-mode").textContent = "reconnecting";
    }
  };
}

// -- health: a small SVG chart per measure over the history /api/health keeps -------------------------------------
const CHARTS = [
  ["av_skew_s", "A/V skew", (v) => (v * 1000).toFixed(1) + " ms"],
  ["render_rtf", "render time / real time", (v) => v.toFixed(3)],
  ["buffered_frames", "look-ahead", (v) => v + " frames"],
  ["drift_colour", "drift: colour", (v) => v.toFixed(2) + " ΔE"],
  ["drift_identity", "drift: identity", (v) => v.toFixed(3)],
  ["gpu_allocated_bytes", "GPU memory", (v) => (v / 2 ** 30).toFixed(2) + " GiB"],
];
const SVG = "http://www.w3.org/2000/svg";
const health = { fields: [], rows: [], last: 0, historyS: 21600, intervalS: 10 };

function svgEl(tag, attrs, cls) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (cls) e.setAttribute("class", cls);
  return e;
}

function drawHealth() {
  const rows = health.rows;
  if (!rows.length) return;
  const col = (name) => health.fields.indexOf(name);
  const ti = col("t"), t0 = rows[0][ti], span = Math.max(rows[rows.length - 1][ti] - t0, 1e-3);
  const x = (t) => ((t - t0) / span * 1000).toFixed(1);
  const marks = [];  // [t, class]: where the underrun or recalibration counters went up
  for (let i = 1; i < rows.length; i++) {
    for (const [name, cls] of [["underrun_frames", "underrun"], ["recalibrations", "recal"]]) {
      const c = col(name);
      if (rows[i][c] !== null && rows[i - 1][c] !== null && rows[i][c] > rows[i - 1][c]) marks.push([rows[i][ti], cls]);
    }
  }
  $("health-range").textContent = "last " + (span / 60).toFixed(1) + " min, " + rows.length + " samples";
  const box = $("health-chart");
  for (const [name, label, fmt] of CHARTS) {
    const c = col(name);
    const pts = rows.filter((r) => r[c] !== null && r[c] !== undefined).map((r) => [r[ti], r[c]]);
    let chart = box.querySelector('.chart[data-series="' + name + '"]');
    if (!pts.length) { if (chart) chart.remove(); continue; }
    if (!chart) {
      chart = el("div", null, "chart");
      chart.dataset.series = name;
      chart.appendChild(el("div", "", "label"));
      chart.appendChild(svgEl("svg", { viewBox: "0 0 1000 100", preserveAspectRatio: "none", role: "img" }));
      box.appendChild(chart);
    }
    const vals = pts.map((p) => p[1]);
    const lo = Math.min(...vals), hi = Math.max(...vals);
    const y = (v) => (hi === lo ? 50 : 95 - (v - lo) / (hi - lo) * 90).toFixed(1);
    const svg = chart.querySelector("svg");
    svg.replaceChildren(...marks.map(([t, cls]) => svgEl("line", { x1: x(t), x2: x(t), y1: 0, y2: 100 }, cls)),
      svgEl("polyline", { points: pts.map(([t, v]) => x(t) + "," + y(v)).join(" ") }));
    chart.dataset.points = String(pts.length);
    chart.querySelector(".label").textContent = label + ": " + fmt(vals[vals.length - 1]) +
      " (" + fmt(lo) + " … " + fmt(hi) + ")";
    svg.setAttribute("aria-label", chart.querySelector(".label").textContent);
  }
}

async function pollHealth() {
  try {
    const r = await fetch("/api/health?since=" + health.last, { credentials: "omit" });
    if (r.ok) {
      const body = await r.json();
      health.fields = body.fields;
      health.historyS = body.history_s;
      health.intervalS = body.interval_s;
      health.rows.push(...body.samples);
      if (health.rows.length) health.last = health.rows[health.rows.length - 1][0];
      const keepFrom = health.last - health.historyS;
      while (health.rows.length && health.rows[0][0] < keepFrom) health.rows.shift();
      $("gpu").textContent = body.gpu ? body.gpu.map((g) => "GPU " + g.device + " " + g.name + ": " +
        (g.allocated_bytes / 2 ** 30).toFixed(2) + " GiB allocated, peak " + (g.max_allocated_bytes / 2 ** 30).toFixed(2) +
        " of " + (g.total_bytes / 2 ** 30).toFixed(1) + " GiB").join(" · ") : "";
      drawHealth();
    }
  } catch (e) { /* as above */ }
  setTimeout(pollHealth, Math.min(10, Math.max(1, health.intervalS)) * 1000);
}

function showTokenState() { $("token-state").textContent = token() ? "token set" : "read-only (no token)"; }

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("flashtalk-token", $("token").value.trim());
    $("token").value = "";
    showTokenState();
  });
  $("clip-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = $("clip-file").files[0];
    if (f) command($("clip-mode").value, f, { meta: { filename: f.name } });
  });
  $("avatar-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = $("avatar-file").files[0];
    if (f) command("set_avatar", f);
  });
  $("output-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    command("output_add", { name: $("out-name").value.trim(), url: $("out-url").value.trim() });
  });
  $("clear").addEventListener("click", () => command("clear", {}));
  showTokenState();
  refresh();
  setInterval(refresh, 500);
  followEvents();
  pollHealth();
});
