// The operator console: polls /api/status and /api/events, sends commands with the bearer token.
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

function renderStatus(st) {
  const state = $("state");
  state.textContent = st.state;
  state.className = "badge " + st.state;
  const b = st.broadcast || {};
  $("health").textContent = "up " + secs(st.uptime_s) + " · A/V skew " + (b.av_skew_s ?? "—") +
    " s · render rtf " + (b.render_rtf === undefined ? "—" : Number(b.render_rtf).toFixed(3)) + " · look-ahead " + (b.buffered_frames ?? "—") +
    " frames · underruns " + (b.underrun_episodes ?? 0) + " · renderer " + ((st.renderer || {}).active || "—");
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
  while (meters.children.length > levels.length) meters.lastChild.remove();
  levels.forEach((db, i) => {
    let m = meters.children[i];
    if (!m) {
      m = el("meter");
      m.min = -60; m.max = 0; m.low = -18; m.high = -6; m.optimum = -20;
      m.title = "channel " + (i + 1);
      meters.appendChild(m);
    }
    m.value = Math.max(-60, db);
  });
  const q = $("queue");
  q.replaceChildren();
  (plan.pending || []).forEach((p, i) => {
    const tr = el("tr");
    tr.dataset.segmentId = p.segment_id;
    [i + 1, p.segment_id, p.mode, secs(p.duration_s), secs(p.starts_in_s)].forEach((v) => tr.appendChild(el("td", v)));
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
function actionCell(label, cls, action) {
  const td = el("td");
  const btn = el("button", label, cls);
  btn.type = "button";
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

async function pollEvents() {
  try {
    const r = await fetch("/api/events?after=" + lastSeq, { credentials: "omit" });
    if (!r.ok) return;
    const body = await r.json();
    const list = $("events");
    for (const e of body.events) {
      const { type, seq, ts, ...rest } = e;
      const time = new Date(ts * 1000).toLocaleTimeString();
      const li = el("li", time + " " + type + " " + JSON.stringify(rest), "event " + type);
      li.dataset.type = type;
      if (e.segment_id) li.dataset.segmentId = e.segment_id;
      list.prepend(li);
      lastSeq = Math.max(lastSeq, seq);
    }
    while (list.children.length > 200) list.lastChild.remove();
  } catch (e) { /* as above */ }
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
  pollEvents();
  setInterval(refresh, 500);
  setInterval(pollEvents, 1000);
});
