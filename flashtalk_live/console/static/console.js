// The operator console: polls /api/status and /api/health, follows /api/events/stream (server-sent events; polls
// /api/events when the stream is refused), sends commands with the bearer token. Tables are updated in place, row by
// row (syncRows), so a button under the pointer survives every refresh; /preview.wav plays while Listen is on.
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

// -- names: a person reads a clip's name, not its hex id ----------------------------------------------------------
const names = new Map();  // segment_id -> name, from status rows and events
function noteName(sid, name) {
  if (!sid || !name) return;
  names.set(sid, name);
  if (names.size > 2000) names.delete(names.keys().next().value);
}
function label(sid, name) {
  const n = name || names.get(sid);
  if (n) return "“" + n + "”";
  if (!sid) return "—";
  return sid.startsWith("programme:") ? "programme " + sid.slice(10).replace(/:\d+$/, "") : sid.slice(0, 8);
}

let plan = { on_air: null, pending: [] };  // the latest status: the buttons act on what is shown now

// Rows keyed by `key`, updated in place: a row (and the button under the pointer) survives every refresh, so a press
// that spans a refresh still clicks. `build(item)` makes a new row; `fill(row, item, i)` updates its cells.
function syncRows(tbody, items, key, build, fill) {
  const old = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  items.forEach((item, i) => {
    const k = key(item);
    let tr = old.get(k);
    if (tr) old.delete(k); else { tr = build(item); tr.dataset.key = k; }
    fill(tr, item, i);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  old.forEach((tr) => tr.remove());
}

// Set a node's text only when it changed (no layout churn under the pointer).
function setText(node, text) {
  const t = text === undefined || text === null ? "" : String(text);
  if (node.textContent !== t) node.textContent = t;
}

function cells(tr, n) { while (tr.children.length < n) tr.appendChild(el("td")); return tr.children; }


// push -> air p50 per kind that has clips (status.latency.push_to_air, flashtalk_live/latency.py)
function pushToAir(st) {
  const kinds = Object.entries(((st.latency || {}).push_to_air) || {}).filter(([, v]) => v.count);
  return kinds.length ? " · push→air p50 " + kinds.map(([k, v]) => k + " " + Number(v.p50_s).toFixed(2) + " s").join(", ") : "";
}

// Whose frames viewers see; the renderer on duty renders the look-ahead and airs seconds later.
function onAirRenderer(r) {
  const next = r.active && r.on_air && r.active !== r.on_air ? " (" + r.active + " next)" : "";
  return " · renderer " + (r.on_air || "—") + next;
}

// the model's profile and, for model.profile = "auto", the compiled chunk p90s it chose by (status.renderer.drift),
// and whether its eager trials were remembered from the compile cache (no trials at this start)
function modelProfile(st) {
  const d = ((st.renderer || {}).drift) || {};
  if (!d.profile) return "";
  const auto = d.auto || {};
  const measured = (auto.measured || []).map((t) => t.profile + " " + Number(t.p90_s).toFixed(3) + " s");
  const remembered = auto.remembered ? "; eager trials remembered, " + age(auto.remembered_age_s) + " old" : "";
  return " · profile " + d.profile + (d.auto ? " (auto" + (measured.length ? ": " + measured.join(", ") : "") + remembered + ")" : "");
}

function age(seconds) {
  const s = Number(seconds) || 0;
  return s < 120 ? Math.round(s) + " s" : s < 7200 ? Math.round(s / 60) + " min" : s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " d";
}

function renderStatus(st) {
  const state = $("state");
  setText(state, st.state);
  state.className = "badge " + st.state;
  const b = st.broadcast || {};
  setText($("health"), "up " + secs(st.uptime_s) + " · A/V skew " + (b.av_skew_s ?? "—") +
    " s · render rtf " + (b.render_rtf === undefined ? "—" : Number(b.render_rtf).toFixed(3)) + " · look-ahead " + (b.buffered_frames ?? "—") +
    " frames · underruns " + (b.underrun_episodes ?? 0) + onAirRenderer(st.renderer || {}) +
    modelProfile(st) +
    (b.producer_starved_seconds ? " · producer starved " + b.producer_starved_seconds + " s" : "") + pushToAir(st));
  plan = st.plan || { on_air: null, pending: [] };
  (st.pending || []).concat(st.playing || []).forEach((p) => noteName(p.segment_id, p.name));
  const cur = plan.on_air;
  if (cur) {
    const pct = cur.progress !== undefined ? " " + Math.round(cur.progress * 100) + "%" : "";
    setText($("on-air"), "On air: " + label(cur.segment_id, cur.name) + " (" + (cur.source || "queue") + ", " +
      cur.segment_id + ")" + pct + " · " + secs(cur.elapsed_s) + " of " + secs(cur.duration_s));
    $("on-air").dataset.segmentId = cur.segment_id;
    $("progress").value = cur.progress || 0;
  } else {
    setText($("on-air"), "On air: idle (programme pause or silence)");
    delete $("on-air").dataset.segmentId;
    $("progress").value = 0;
  }
  $("skip").disabled = !cur;
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
  syncRows($("queue"), plan.pending || [], (p) => p.segment_id, buildQueueRow, (tr, p, i) => {
    tr.dataset.segmentId = p.segment_id;
    const c = cells(tr, 6);
    setText(c[0], i + 1);
    setText(c[1].firstChild, p.name || p.segment_id.slice(0, 8));
    setText(c[1].lastChild, p.name ? p.segment_id : "");
    setText(c[2], p.text || "");
    setText(c[3], p.mode);
    setText(c[4], secs(p.duration_s));
    setText(c[5], secs(p.starts_in_s));
    tr.querySelector("button.up").disabled = i === 0;
    tr.querySelector("button.down").disabled = i === plan.pending.length - 1;
  });
  syncRows($("outputs"), st.outputs || [], (o) => o.name, buildOutputRow, (tr, o) => {
    tr.className = o.state;
    tr.dataset.name = o.name;
    const c = cells(tr, 6);
    [o.name, o.url, o.state, o.bitrate_bps ? Math.round(o.bitrate_bps / 1000) + " kb/s" : "—", o.reconnects ?? 0,
      o.last_error || ""].forEach((v, i) => setText(c[i], v));
  });
  const ov = st.overlays || {};
  const onAir = new Set(ov.on_air || []);
  const layers = Object.entries(ov.placement || {}).map(([name, p]) => ({ name, ...p }));
  syncRows($("overlays"), layers, (l) => l.name, buildLayerRow, (tr, l) => {
    tr.dataset.name = l.name;
    tr.dataset.onAir = onAir.has(l.name) ? "yes" : "no";
    const c = cells(tr, 4);
    setText(c[0], l.name + (l.text ? " · " + l.text : ""));
    setText(c[1], l.kind);
    setText(c[2], l.anchor + " +" + (l.margin || []).join(","));
    setText(c[3], onAir.has(l.name) ? "● on air" : "off");
  });
}

function buildQueueRow() {
  const tr = el("tr");
  cells(tr, 6);
  tr.children[1].append(el("span", "", "clip-name"), el("small", "", "clip-id"));
  tr.children[2].className = "caption";
  // Each button reads the queue as it is at the click: up/down go next to the neighbour's id, not to an index.
  const sid = () => tr.dataset.segmentId;
  const at = () => plan.pending.findIndex((p) => p.segment_id === sid());
  tr.appendChild(actionCell("▲", "up", () => {
    const i = at();
    if (i > 0) command("move", { segment_id: sid(), before: plan.pending[i - 1].segment_id });
  }));
  tr.appendChild(actionCell("▼", "down", () => {
    const i = at();
    if (i >= 0 && i < plan.pending.length - 1) command("move", { segment_id: sid(), after: plan.pending[i + 1].segment_id });
  }));
  tr.appendChild(actionCell("▶ Play now", "play-now", () => playNow(sid())));
  tr.appendChild(actionCell("Cancel", "cancel", () => command("cancel", { segment_id: sid() })));
  return tr;
}

// A pending clip now: to the head of the queue, then skip what is on air (the skipped clip is dropped).
async function playNow(sid) {
  const r = await command("move", { segment_id: sid, to: 0 });
  const cur = plan.on_air;
  if (r.ok && cur && cur.segment_id !== sid) await command("skip", { segment_id: cur.segment_id });
}

function buildOutputRow() {
  const tr = el("tr");
  cells(tr, 6);
  tr.appendChild(actionCell("Remove", "remove", () => command("output_remove", { name: tr.dataset.name })));
  return tr;
}

function buildLayerRow() {
  const tr = el("tr");
  cells(tr, 4);
  tr.appendChild(actionCell("Show", "show", () => command("overlay_show", { name: tr.dataset.name })));
  tr.appendChild(actionCell("Hide", "hide", () => command("overlay_hide", { name: tr.dataset.name })));
  return tr;
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

// -- events: one line a person reads; the raw JSON on demand ------------------------------------------------------
const PLAN_EVENTS = new Set(["scheduled", "rescheduled"]);
const DESCRIBE = {
  accepted: (e) => "queued " + label(e.segment_id) + " (" + secs(e.duration_s) + ", " + e.mode + ", position " + e.position + ")",
  started: (e) => "on air: " + label(e.segment_id) + (e.source === "programme" ? " from the programme" : ""),
  finished: (e) => "finished: " + label(e.segment_id),
  interrupted: (e) => "cut: " + label(e.segment_id) + (e.requeued ? " (plays again after the play-now clip)" : ""),
  skipped: (e) => "skipped " + label(e.segment_id) + (e.source === "programme" ? " (programme item)" : ""),
  cancelled: (e) => "cancelled " + label(e.segment_id) + (e.was === "playing" ? " on air" : ""),
  dropped: (e) => "dropped " + label(e.segment_id) + " (" + e.reason + ")",
  cleared: (e) => "queue cleared: " + e.count + " clip" + (e.count === 1 ? "" : "s"),
  moved: (e) => "moved " + label(e.segment_id) + " from position " + e.position_was + " to " + e.position,
  idle: () => "nothing on air: idle",
  scheduled: (e) => label(e.segment_id) + " planned in " + secs(e.planned_in_s),
  rescheduled: (e) => label(e.segment_id) + " now planned in " + secs(e.planned_in_s),
  endpoint_up: (e) => "output " + (e.name || e.output || "") + " up",
  endpoint_down: (e) => "output " + (e.name || e.output || "") + " down" + (e.error ? ": " + e.error : ""),
  underrun: (e) => "underrun: the renderer fell behind" + (e.segment_id ? " during " + label(e.segment_id) : ""),
  renderer_changed: (e) => "renderer: " + (e.active || e.renderer || "") + (e.reason ? " (" + e.reason + ")" : ""),
  recalibrated: () => "renderer recalibrated",
  stopping: () => "the daemon is stopping",
};

function describe(e) {
  const f = DESCRIBE[e.type];
  if (f) { try { return f(e); } catch (err) { /* an unexpected shape: fall through */ } }
  const { type, seq, ts, ...rest } = e;
  return type + " " + Object.entries(rest).map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
}

const seenSeqs = new Set();  // events from two publishing threads may arrive out of seq order: dedupe by seq

function addEvent(e, via) {
  if (seenSeqs.has(e.seq)) return;
  seenSeqs.add(e.seq);
  if (seenSeqs.size > 1000) seenSeqs.delete(seenSeqs.values().next().value);
  lastSeq = Math.max(lastSeq, e.seq);
  if (e.name) noteName(e.segment_id, e.name);
  const time = new Date(e.ts * 1000).toLocaleTimeString();
  const li = el("li", null, "event " + e.type + (PLAN_EVENTS.has(e.type) ? " plan" : ""));
  li.append(el("time", time), el("span", describe(e), "text"), el("code", JSON.stringify(e), "raw"));
  li.dataset.type = e.type;
  li.dataset.via = via;
  if (e.segment_id) li.dataset.segmentId = e.segment_id;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 300) list.lastChild.remove();
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

// -- the sound of the air: /preview.wav, opened only while Listen is on ------------------------------------------
function toggleListen() {
  const a = $("preview-audio"), b = $("listen");
  if (b.getAttribute("aria-pressed") === "true") {
    a.pause();
    a.removeAttribute("src");
    a.load();  // closes the stream
    b.setAttribute("aria-pressed", "false");
    b.textContent = "Listen to the air";
    $("listen-state").textContent = "";
    return;
  }
  a.src = "/preview.wav?t=" + Date.now();
  b.setAttribute("aria-pressed", "true");
  b.textContent = "Stop listening";
  a.play().then(() => { $("listen-state").textContent = "playing the air"; })
    .catch((e) => { $("listen-state").textContent = "cannot play: " + e; });
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
  $("clip-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = $("clip-file").files[0];
    if (!f) return;
    const fields = { meta: { filename: f.name } };
    const name = $("clip-name").value.trim(), text = $("clip-text").value.trim();
    if (name) fields.name = name;
    if (text) fields.text = text;
    const r = await command($("clip-mode").value, f, fields);
    if (r.ok) {  // sent: the form is ready for the next clip (the mode stays)
      $("clip-file").value = "";
      $("clip-name").value = "";
      $("clip-text").value = "";
    }
  });
  $("avatar-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = $("avatar-file").files[0];
    if (f && (await command("set_avatar", f)).ok) $("avatar-file").value = "";
  });
  $("output-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    command("output_add", { name: $("out-name").value.trim(), url: $("out-url").value.trim() });
  });
  $("clear").addEventListener("click", () => command("clear", {}));
  $("skip").addEventListener("click", () => {
    const cur = plan.on_air;
    if (cur) command("skip", { segment_id: cur.segment_id });
  });
  $("overlay-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("ov-name").value.trim(), text = $("ov-text").value, f = $("ov-file").files[0];
    const fields = { name, anchor: $("ov-anchor").value,
      margin: [Number($("ov-x").value || 0), Number($("ov-y").value || 0)] };
    if ($("ov-width").value) fields.width = Number($("ov-width").value);
    let r;
    if (f) r = await command("overlay_set", f, fields);
    else r = await command("overlay_set", { ...fields, text });
    if (r.ok && $("ov-show").checked) r = await command("overlay_show", { name });
    if (r.ok) { $("ov-file").value = ""; }
  });
  $("events-raw").addEventListener("change", (ev) => $("events").classList.toggle("show-raw", ev.target.checked));
  $("events-plan").addEventListener("change", (ev) => $("events").classList.toggle("show-plan", ev.target.checked));
  $("listen").addEventListener("click", toggleListen);
  showTokenState();
  refresh();
  setInterval(refresh, 500);
  followEvents();
  pollHealth();
});
