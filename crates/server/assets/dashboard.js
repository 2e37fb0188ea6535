// paxlog dashboard: polls every replica's /status (CORS) and the leader's
// /log, and draws the cluster. No dependencies, no build step.
"use strict";

const POLL_MS = 500;
const LOG_SLOTS = 24;
const HISTORY_MS = 5 * 60 * 1000;
const FETCH_TIMEOUT_MS = 1500;
const RATE_WINDOW_MS = 2000;

const state = {
  localId: null,
  // [{id, base}] base: "" for this page's origin, null when unknown.
  replicas: [],
  statuses: new Map(), // id -> status JSON or {error}
  prevCounters: new Map(), // id -> {writes, lat}
  totals: { writes: 0, latMs: 0 },
  samples: [], // {t, round, writes, latMs}
  lastDiscovery: 0,
};

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function $(id) { return document.getElementById(id); }

async function getJson(base, path) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  try {
    const r = await fetch(base + path, { signal: ctrl.signal, cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
    return body;
  } finally {
    clearTimeout(timer);
  }
}

// An address as the browser can reach it (a wildcard bind means "this host").
function baseFor(addr) {
  const m = /^(.*):(\d+)$/.exec(addr);
  if (!m) return null;
  let host = m[1];
  if (host === "0.0.0.0" || host === "[::]") host = location.hostname;
  return location.protocol + "//" + host + ":" + m[2];
}

async function discover() {
  state.lastDiscovery = Date.now();
  const c = await getJson("", "/cluster");
  state.localId = c.id;
  if (c.http_peers && c.http_peers.length) {
    state.replicas = c.http_peers.map((addr, id) => ({
      id, addr, base: id === c.id ? "" : baseFor(addr),
    }));
  } else {
    // HTTP addresses unknown: show this replica, and its peers as it sees them.
    state.replicas = [{ id: c.id, addr: c.http, base: "" }];
    for (const p of c.status.peers || []) {
      state.replicas.push({ id: p.id, addr: null, base: null });
    }
    state.replicas.sort((a, b) => a.id - b.id);
  }
}

async function poll() {
  try {
    if (!state.replicas.length || Date.now() - state.lastDiscovery > 30000) await discover();
  } catch (e) {
    $("status-line").textContent = "cannot reach this replica: " + e.message;
    return;
  }
  const results = await Promise.all(state.replicas.map(async (r) => {
    if (r.base === null) return [r.id, null];
    try { return [r.id, await getJson(r.base, "/status")]; }
    catch (e) { return [r.id, { error: e.name === "AbortError" ? "timed out" : e.message }]; }
  }));
  state.statuses = new Map(results);
  const leader = leaderStatus();
  let log = null;
  const source = leader && state.replicas.find((r) => r.id === leader.id && r.base !== null);
  try {
    log = await getJson(source ? source.base : "", "/log?limit=" + LOG_SLOTS);
  } catch (e) { log = { error: e.message }; }
  record();
  render(log, source ? source.id : state.localId);
  $("status-line").textContent = "updated " + new Date().toLocaleTimeString();
}

function ok(s) { return s && !s.error; }

function leaderStatus() {
  for (const s of state.statuses.values()) if (ok(s) && s.role === "leader") return s;
  // Else the leader some replica names, if we hear from it.
  for (const s of state.statuses.values()) {
    if (ok(s) && s.leader !== null && ok(state.statuses.get(s.leader))) return state.statuses.get(s.leader);
  }
  return null;
}

function record() {
  const now = Date.now();
  let round = 0;
  for (const [id, s] of state.statuses) {
    if (!ok(s)) continue;
    round = Math.max(round, s.current_round);
    const cur = { writes: s.stats ? s.stats.writes : 0, lat: s.stats ? s.stats.write_latency_sum_ms : 0 };
    const prev = state.prevCounters.get(id);
    if (prev && cur.writes >= prev.writes && cur.lat >= prev.lat) {
      state.totals.writes += cur.writes - prev.writes;
      state.totals.latMs += cur.lat - prev.lat;
    }
    state.prevCounters.set(id, cur);
  }
  state.samples.push({ t: now, round, writes: state.totals.writes, latMs: state.totals.latMs });
  while (state.samples.length && state.samples[0].t < now - HISTORY_MS - RATE_WINDOW_MS) state.samples.shift();
}

// Derived series: rate over a sliding window, and mean latency per window.
function series() {
  const tput = [], lat = [];
  let j = 0;
  const s = state.samples;
  for (let i = 0; i < s.length; i++) {
    while (j < i && s[i].t - s[j].t > RATE_WINDOW_MS) j++;
    if (j === i) continue;
    const dt = (s[i].t - s[j].t) / 1000;
    if (dt <= 0) continue;
    tput.push({ t: s[i].t, v: Math.max(0, (s[i].round - s[j].round) / dt) });
    const dw = s[i].writes - s[j].writes;
    if (dw > 0) lat.push({ t: s[i].t, v: (s[i].latMs - s[j].latMs) / dw });
  }
  return { tput, lat };
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (n >= 10000) return (n / 1000).toFixed(1) + "k";
  return n.toFixed(digits);
}

function render(log, logSourceId) {
  const leader = leaderStatus();
  const leaderRound = leader ? leader.current_round : null;
  const box = $("replicas");
  const cards = [];
  let highestChosen = 0;
  for (const r of state.replicas) {
    const s = state.statuses.get(r.id);
    if (ok(s)) highestChosen = Math.max(highestChosen, s.chosen_round);
    cards.push(card(r, s, leaderRound));
  }
  box.innerHTML = cards.join("");
  box.dataset.replicaCount = String(state.replicas.length);
  const summary = $("summary");
  summary.dataset.leader = leader ? String(leader.id) : "";
  summary.dataset.replicaCount = String(state.replicas.length);
  $("kpi-leader").textContent = leader ? "replica " + leader.id : "none";
  $("kpi-ballot").textContent = leader ? (leader.leader_ballot || leader.promised_ballot) : "–";
  $("kpi-round").textContent = highestChosen ? String(highestChosen) : "0";
  const known = state.replicas.filter((r) => r.base !== null).length;
  $("replicas-hint").textContent = known < state.replicas.length
    ? "HTTP addresses of peers unknown (set http_peers): showing them as this replica sees them"
    : state.replicas.length + " replicas · lag = rounds behind the leader's current round";

  renderLog(log, logSourceId);

  const { tput, lat } = series();
  const lastT = tput.length ? tput[tput.length - 1].v : null;
  const lastL = lat.length ? lat[lat.length - 1].v : null;
  $("kpi-tput").textContent = lastT === null ? "–" : fmt(lastT, 1) + "/s";
  $("kpi-lat").textContent = lastL === null ? "–" : fmt(lastL, 1) + " ms";
  chart($("chart-tput"), tput, "#4fd1c5", (v) => fmt(v, v % 1 ? 1 : 0) + "/s");
  chart($("chart-lat"), lat, "#f5b942", (v) => fmt(v, v % 1 ? 1 : 0) + " ms");
}

function stat(k, v, cls) {
  return '<div class="stat"><div class="k">' + esc(k) + '</div><div class="v' + (cls ? " " + cls : "") + '">' + v + "</div></div>";
}

// This replica's place in the membership it knows: voter, learner, or
// outside the cluster (removed, or not added yet), with the epoch.
function membershipRole(s) {
  const m = s.membership;
  if (!m) return "–";
  const role = (m.voters || []).includes(s.id) ? "voter"
    : (m.learners || []).includes(s.id) ? "learner" : "not a member";
  return esc(role + " (epoch " + m.epoch + ")");
}

function card(r, s, leaderRound) {
  const head = (role, label) =>
    '<div class="replica" data-replica-id="' + r.id + '" data-role="' + role + '">' +
    '<div class="top"><span class="name">replica ' + r.id + (r.id === state.localId ? ' <span class="hint">(this page)</span>' : "") +
    '</span><span class="badge ' + role + '">' + label + "</span></div>" +
    '<div class="addr">' + esc(r.addr || "HTTP address unknown") + "</div>";
  if (s === null || s === undefined) {
    const local = state.statuses.get(state.localId);
    const view = ok(local) ? (local.peers || []).find((p) => p.id === r.id) : null;
    let body = "";
    if (view) {
      body = '<div class="stats">' +
        stat("reachable from " + state.localId, view.reachable ? "yes" : "no", view.reachable ? "lag-ok" : "lag-bad") +
        stat("chosen (leader's view)", String(view.chosen_round)) + "</div>";
    }
    return head("unknown", "unknown") + body + "</div>";
  }
  if (!ok(s)) {
    return head("down", "unreachable") + '<div class="error">' + esc(s.error) + "</div></div>";
  }
  const lag = leaderRound === null ? null : Math.max(0, leaderRound - s.current_round);
  const links = (s.peers || []).map((p) =>
    '<span class="link" title="' + esc(p.last_error || (p.reachable ? "connected" : "not connected")) + '">' +
    '<span class="dot' + (p.reachable ? " up" : "") + '"></span>→ ' + p.id + "</span>").join("");
  const recovering = s.recovering
    ? '<div class="error">recovering: votes in nothing until it has learned what it may have forgotten; waits for ' +
      esc(s.recovering.waiting_for) + "</div>"
    : "";
  return (s.recovering ? head("recovering", "recovering") : head(s.role, s.role)) + recovering +
    '<div class="stats">' +
    stat("membership", membershipRole(s)) +
    stat("ballot (promised)", esc(s.promised_ballot)) +
    stat("leader", s.leader === null ? "none" : String(s.leader)) +
    stat("current round", String(s.current_round)) +
    stat("chosen round", String(s.chosen_round)) +
    stat("lag behind leader", lag === null ? "–" : String(lag), lag === null ? "" : lag <= 5 ? "lag-ok" : "lag-bad") +
    stat("pending writes", String(s.pending_writes)) +
    stat("log start", String(s.log_start)) +
    stat("last snapshot", String(s.last_snapshot_round)) +
    "</div>" +
    '<div class="links">peers: ' + (links || "none") + "</div></div>";
}

function renderLog(log, sourceId) {
  const strip = $("log");
  if (!log || log.error) {
    strip.innerHTML = '<div class="empty">log unavailable' + (log ? ": " + esc(log.error) : "") + "</div>";
    return;
  }
  $("log-hint").textContent = "latest chosen rounds, from replica " + sourceId +
    " · bars: which replicas applied each round";
  if (!log.entries.length) {
    strip.innerHTML = '<div class="empty">no rounds chosen yet</div>';
    return;
  }
  const order = state.replicas.map((r) => r.id);
  // As many slots as fit (newest on the right), so none is cut in half.
  const fit = Math.max(4, Math.floor(((strip.getBoundingClientRect().width || 1200) + 6) / 114));
  const entries = log.entries.slice(-fit);
  strip.innerHTML = entries.map((e) => {
    const marks = order.map((id) => {
      const s = state.statuses.get(id);
      const applied = ok(s) && s.current_round > e.round;
      return '<span class="' + (applied ? "yes" : "no") + '" title="replica ' + id + (applied ? " applied" : " not yet") + '"></span>';
    }).join("");
    const text = e.command === null ? "no-op" : e.command;
    return '<div class="slot' + (e.command === null ? " noop" : "") + '" data-round="' + e.round + '" title="' + esc(text) + '">' +
      '<div class="round">#' + e.round + '</div><div class="cmd">' + esc(text) + "</div>" +
      '<div class="applied">' + marks + "</div></div>";
  }).join("");
  strip.scrollLeft = strip.scrollWidth;
}

function chart(svg, points, color, label) {
  const w = Math.max(200, Math.round(svg.getBoundingClientRect().width || 600));
  const h = 150, padL = 56, padR = 8, padT = 10, padB = 20;
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const now = Date.now();
  const first = state.samples.length ? state.samples[0].t : now;
  const span = Math.min(HISTORY_MS, Math.max(10000, now - first));
  const t0 = now - span;
  const pts = points.filter((p) => p.t >= t0);
  const peak = Math.max(1, ...pts.map((p) => p.v)) * 1.1;
  const raw = peak / 3, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = (raw / mag <= 1 ? 1 : raw / mag <= 2 ? 2 : raw / mag <= 5 ? 5 : 10) * mag;
  const lines = Math.ceil(peak / step);
  const max = step * lines;
  const x = (t) => padL + ((t - t0) / span) * (w - padL - padR);
  const y = (v) => padT + (1 - v / max) * (h - padT - padB);
  let out = "";
  for (let i = 0; i <= lines; i++) {
    const v = step * i;
    out += '<line class="grid" x1="' + padL + '" x2="' + (w - padR) + '" y1="' + y(v) + '" y2="' + y(v) + '"/>';
    out += '<text class="axis" x="' + (padL - 6) + '" y="' + (y(v) + 4) + '" text-anchor="end">' + esc(label(v)) + "</text>";
  }
  const secs = Math.round(span / 1000);
  out += '<text class="axis" x="' + padL + '" y="' + (h - 4) + '">-' + (secs >= 120 ? Math.round(secs / 60) + " min" : secs + " s") + "</text>";
  out += '<text class="axis" x="' + (w - padR) + '" y="' + (h - 4) + '" text-anchor="end">now</text>';
  if (pts.length) {
    const line = pts.map((p) => x(p.t).toFixed(1) + "," + y(p.v).toFixed(1)).join(" ");
    const area = x(pts[0].t).toFixed(1) + "," + y(0) + " " + line + " " + x(pts[pts.length - 1].t).toFixed(1) + "," + y(0);
    out += '<polygon class="area" fill="' + color + '" points="' + area + '"/>';
    out += '<polyline class="series" stroke="' + color + '" points="' + line + '"/>';
  } else {
    out += '<text class="axis" x="' + (w / 2) + '" y="' + (h / 2) + '" text-anchor="middle">no data yet</text>';
  }
  svg.innerHTML = out;
}

async function loop() {
  const started = Date.now();
  try { await poll(); } catch (e) { $("status-line").textContent = "error: " + e.message; }
  setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
}

loop();
