// The Tandem console: one script, no framework, no build step. Each view is drawn from the hub's JSON (the admin
// API under /v1 and the console's reads under /console/api) and kept live by one EventSource on /console/events.
"use strict";

const state = {
  me: null,
  rows: new Map(), // device_id -> the Fleet page's row
  offset: 0, // the hub's clock minus this browser's, in seconds (ages are the hub's)
  rollouts: [],
  alerts: [],
  proposals: [],
  fleetFilter: { text: "", status: "", group: "", sort: "device_id", desc: false },
  events: null,
  view: null,
  loadedAt: null,
};

// -- small helpers ------------------------------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
const num = (value, digits = 2) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const now = () => Date.now() / 1000 + state.offset;
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const can = (permission) => !!state.me && state.me.permissions.includes(permission);

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.max(0, Math.floor(seconds))} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
  if (init.method !== "GET") init.headers["X-Tandem-Console"] = "1"; // the hub refuses a change without it
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    showLogin("Your session ended: log in again.");
    throw new HttpError(401, "not logged in");
  }
  const text = await response.text();
  const body = text ? (response.headers.get("content-type") || "").includes("json") ? JSON.parse(text) : text : null;
  if (!response.ok) throw new HttpError(response.status, (body && body.detail) || text);
  return body;
}

function spark(values, width = 80, height = 18) {
  if (!values || values.length < 2) return "";
  const top = Math.max(...values, 1e-9);
  const step = width / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`);
  return `<svg class="spark" width="${width}" height="${height}" aria-label="escalations/s"><polyline points="${points.join(" ")}"/></svg>`;
}

function chart(title, points, key, unit) {
  const values = points.map((p) => p[key]).filter((v) => v !== null && v !== undefined);
  if (values.length < 2) return `<div class="card"><h2>${esc(title)}</h2><p class="muted">not enough heartbeats yet</p></div>`;
  const width = 320, height = 90, top = Math.max(...values, 1e-9);
  const step = width / (values.length - 1);
  const line = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 12 - (v / top) * (height - 20)).toFixed(1)}`);
  return `<div class="card"><h2>${esc(title)}</h2><svg class="chart" viewBox="0 0 ${width} ${height}" width="100%">
    <polyline points="${line.join(" ")}"/><text x="2" y="10">max ${num(top)} ${esc(unit)}</text>
    <text x="2" y="${height - 1}">last ${num(values[values.length - 1])} ${esc(unit)}</text></svg></div>`;
}

function table(headers, rows, empty = "nothing yet") {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>
    <tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

function setMain(html) {
  $("#main").innerHTML = html;
}

function fail(error) {
  if (error instanceof HttpError && error.status === 401) return;
  setMain(`<p class="error" role="alert">${esc(error.message || error)}</p>`);
}

// -- logging in ---------------------------------------------------------------------------------------------------

function showLogin(message = "") {
  if (state.events) state.events.close();
  state.events = null;
  state.me = null;
  $("#nav").hidden = true;
  $("#who").textContent = "";
  setLive(false);
  setMain(`<form class="card login" id="login">
      <h1>Log in</h1>
      <p class="muted">Your operator token (<code>tandem hub token</code> printed it).</p>
      <input type="password" name="token" id="token" autocomplete="current-password" placeholder="token" required>
      <button type="submit">Log in</button>
      <p class="error" id="login-error">${esc(message)}</p>
    </form>`);
  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/console/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("#token").value }),
    });
    if (!response.ok) {
      $("#login-error").textContent = response.status === 401 ? "That token is not an operator's." : `refused: ${response.status}`;
      return;
    }
    await start(await response.json());
  });
}

async function logout() {
  await api("/console/logout", { method: "POST" });
  showLogin();
}

async function start(me) {
  state.me = me;
  $("#nav").hidden = false;
  const open = me.name === "anonymous"; // no operators configured: nothing to log out of
  $("#who").innerHTML = `${esc(me.name)} · ${esc(me.role)}${open ? "" : ' <button class="secondary" id="logout">Log out</button>'}`;
  if (!open) $("#logout").addEventListener("click", logout);
  const fleet = await api("/console/api/fleet");
  state.offset = fleet.now - Date.now() / 1000;
  state.rows = new Map(fleet.rows.map((r) => [r.device_id, r]));
  listen();
  route();
}

// -- live updates -------------------------------------------------------------------------------------------------

function setLive(on) {
  const badge = $("#live");
  badge.textContent = on ? "live" : "offline";
  badge.classList.toggle("on", on);
}

function listen() {
  if (state.events) state.events.close();
  const events = new EventSource("/console/events");
  state.events = events;
  events.onopen = () => setLive(true);
  events.onerror = () => setLive(false); // the browser reconnects by itself (retry: 2 s)
  events.addEventListener("fleet", (event) => {
    const data = JSON.parse(event.data);
    state.offset = data.now - Date.now() / 1000;
    let different = data.removed.length > 0; // the stream's first event repeats what the page loaded: no redraw
    for (const row of data.changed) {
      const had = state.rows.get(row.device_id);
      if (!had || JSON.stringify({ ...had, last_seen_age_s: 0 }) !== JSON.stringify({ ...row, last_seen_age_s: 0 })) different = true;
      state.rows.set(row.device_id, row);
    }
    for (const id of data.removed) state.rows.delete(id);
    if (state.view === "fleet" && different) drawFleetRows();
    if (state.view === "device" && data.changed.some((r) => r.device_id === state.viewArg)) refresh();
  });
  events.addEventListener("rollouts", (event) => {
    state.rollouts = JSON.parse(event.data);
    if (state.view === "rollouts" || state.view === "rollout") refresh();
  });
  events.addEventListener("alerts", (event) => {
    state.alerts = JSON.parse(event.data);
    badge("#alerts-badge", state.alerts.length);
    if (state.view === "alerts") refresh();
  });
  events.addEventListener("proposals", (event) => {
    state.proposals = JSON.parse(event.data);
    badge("#proposals-badge", state.proposals.length);
    if (state.view === "orchestrator") refresh();
  });
}

function badge(selector, count) {
  const element = $(selector);
  element.hidden = !count;
  element.textContent = String(count);
}

let refreshing = null;
function refresh() {
  // One redraw at a time, at most every half second, however many events arrive.
  if (refreshing) return;
  refreshing = setTimeout(async () => {
    try {
      await draw(true);
    } finally {
      refreshing = null;
    }
  }, 500);
}

// -- routing ------------------------------------------------------------------------------------------------------

const VIEWS = {
  fleet: viewFleet,
  device: viewDevice,
  rollouts: viewRollouts,
  rollout: viewRollout,
  orchestrator: viewOrchestrator,
  traces: viewTraces,
  trace: viewTrace,
  hard: viewHard,
  alerts: viewAlerts,
};

function parseHash() {
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "fleet").split("?");
  const [name, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  let view = name;
  if (name === "rollouts" && arg) view = "rollout";
  if (name === "traces" && arg) view = "trace";
  return { view: VIEWS[view] ? view : "fleet", arg, query: new URLSearchParams(query || "") };
}

async function route() {
  if (!state.me) return;
  await draw(false);
}

async function draw(update) {
  const { view, arg, query } = parseHash();
  const changed = view !== state.view || arg !== state.viewArg;
  state.view = view;
  state.viewArg = arg;
  state.query = query;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === view.replace(/^rollout$/, "rollouts").replace(/^trace$/, "traces").replace(/^device$/, "fleet"));
  }
  try {
    await VIEWS[view](arg, query, update && !changed);
  } catch (error) {
    fail(error);
  }
}

// -- Fleet --------------------------------------------------------------------------------------------------------

const FLEET_COLUMNS = [
  ["device_id", "Device"], ["status", "Status"], ["last_seen", "Last seen"], ["group", "Group"], ["model", "Model"],
  ["version", "Version"], ["rollout", "Rollout"], ["escalations_per_s", "Escalations/s"],
  ["fallbacks_per_s", "Fallbacks/s"], ["outbox_rows", "Outbox"], ["fps", "Frames/s per camera"], ["backend", "Backend"],
];

async function viewFleet() {
  const groups = [...new Set([...state.rows.values()].map((r) => r.group).filter(Boolean))].sort();
  const f = state.fleetFilter;
  if (!$("#fleet-table")) {
    setMain(`<h1>Fleet <span class="muted" id="fleet-count"></span></h1>
      <div class="toolbar">
        <input id="fleet-text" type="search" placeholder="filter: id, model, backend…" value="${esc(f.text)}">
        <select id="fleet-status"><option value="">any status</option>
          ${["online", "silent", "offline", "unknown"].map((s) => `<option ${s === f.status ? "selected" : ""}>${s}</option>`).join("")}</select>
        <select id="fleet-group"><option value="">any group</option></select>
      </div>
      <table id="fleet-table"><thead><tr>${FLEET_COLUMNS.map(([key, title]) =>
        `<th class="sortable${["escalations_per_s", "fallbacks_per_s", "outbox_rows"].includes(key) ? " num" : ""}" data-key="${key}">${title}</th>`).join("")}</tr></thead>
      <tbody></tbody></table>`);
    $("#fleet-text").addEventListener("input", (e) => { f.text = e.target.value; drawFleetRows(); });
    $("#fleet-status").addEventListener("change", (e) => { f.status = e.target.value; drawFleetRows(); });
    $("#fleet-group").addEventListener("change", (e) => { f.group = e.target.value; drawFleetRows(); });
    for (const th of document.querySelectorAll("#fleet-table th")) {
      th.addEventListener("click", () => {
        f.desc = f.sort === th.dataset.key ? !f.desc : false;
        f.sort = th.dataset.key;
        drawFleetRows();
      });
    }
  }
  const select = $("#fleet-group");
  select.innerHTML = `<option value="">any group</option>` + groups.map((g) => `<option ${g === f.group ? "selected" : ""}>${esc(g)}</option>`).join("");
  drawFleetRows();
}

function fleetRow(r) {
  const cameras = Object.entries(r.camera_fps || {});
  const fps = cameras.length ? cameras.map(([c, v]) => `${esc(c)} ${num(v, 1)}`).join("<br>") : num(r.fps, 1);
  const backend = r.fallback
    ? `${esc(r.backend)}<br><span class="fallback" title="${esc(r.fallback)}">fell back: ${esc(r.fallback)}</span>`
    : esc(r.backend || "–");
  const outbox = r.outbox_rows === null || r.outbox_rows === undefined ? "–" : `${r.outbox_rows}${r.outbox_rows ? ` · oldest ${age(r.outbox_oldest_age_s)}` : ""}`;
  return `<tr data-device="${esc(r.device_id)}">
    <td><a href="#/device/${encodeURIComponent(r.device_id)}">${esc(r.device_id)}</a></td>
    <td class="status ${esc(r.status)}">${esc(r.status)}</td>
    <td class="age" data-t="${r.last_seen}">${age(now() - r.last_seen)}</td>
    <td>${esc(r.group || "–")}</td><td>${esc(r.model || "–")}</td><td>${esc(r.version || "–")}</td>
    <td>${r.rollout ? `<a href="#/rollouts/${encodeURIComponent(r.rollout.split(":")[0])}">${esc(r.rollout)}</a>` : "–"}</td>
    <td class="num">${num(r.escalations_per_s)} ${spark(r.escalation_spark)}</td>
    <td class="num">${num(r.fallbacks_per_s)}</td><td class="num">${outbox}</td>
    <td>${fps}</td><td>${backend}</td></tr>`;
}

function drawFleetRows() {
  const body = $("#fleet-table tbody");
  if (!body) return;
  const f = state.fleetFilter;
  const text = f.text.toLowerCase();
  let rows = [...state.rows.values()].filter((r) =>
    (!f.status || r.status === f.status) && (!f.group || r.group === f.group) &&
    (!text || [r.device_id, r.model, r.version, r.backend, r.group, r.rollout].some((v) => (v || "").toLowerCase().includes(text))));
  const key = f.sort;
  rows.sort((a, b) => {
    const x = a[key], y = b[key];
    const xMissing = x === null || x === undefined || x === "", yMissing = y === null || y === undefined || y === "";
    if (xMissing || yMissing) return xMissing - yMissing || a.device_id.localeCompare(b.device_id); // blanks last
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return (f.desc ? -order : order) || a.device_id.localeCompare(b.device_id);
  });
  body.innerHTML = rows.map(fleetRow).join("");
  for (const th of document.querySelectorAll("#fleet-table th")) {
    th.classList.toggle("sorted-asc", th.dataset.key === key && !f.desc);
    th.classList.toggle("sorted-desc", th.dataset.key === key && f.desc);
  }
  const counts = {};
  for (const r of state.rows.values()) counts[r.status] = (counts[r.status] || 0) + 1;
  $("#fleet-count").textContent = `${rows.length} of ${state.rows.size} · ` +
    Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
  // When the page first showed every row: milliseconds since navigation began (the browser tests read it).
  if (state.loadedAt === null && state.rows.size) window.tandemFleetDrawnMs = state.loadedAt = performance.now();
}

setInterval(() => {
  // Ages tick here between events: a silent device's age grows although nothing is sent about it.
  for (const cell of document.querySelectorAll("td.age")) cell.textContent = age(now() - Number(cell.dataset.t));
}, 1000);

// -- Device -------------------------------------------------------------------------------------------------------

async function viewDevice(id) {
  const page = await api(`/console/api/devices/${encodeURIComponent(id)}`);
  const d = page.device, row = page.row || {};
  const sections = [...new Set([...Object.keys(d.desired.settings || {}), ...Object.keys(d.reported.settings || {})])];
  const settings = [];
  for (const section of sections) {
    const desired = d.desired.settings[section] || {}, reported = d.reported.settings[section] || {};
    for (const field of [...new Set([...Object.keys(desired), ...Object.keys(reported)])].sort()) {
      const same = JSON.stringify(desired[field]) === JSON.stringify(reported[field]);
      settings.push([esc(`${section}.${field}`), esc(JSON.stringify(desired[field])), `<span class="${same ? "" : "over"}">${esc(JSON.stringify(reported[field]))}</span>`]);
    }
  }
  const cameras = Object.entries(row.camera_fps || {}).map(([c, v]) => [esc(c), num(v, 1)]);
  setMain(`<h1>${esc(d.device_id)} <span class="status ${esc(d.status)}">${esc(d.status)}</span></h1>
    <div class="grid">
      <div class="card"><dl class="kv">
        <dt>Last seen</dt><dd class="age" data-t="${d.last_seen}">${age(now() - d.last_seen)}</dd>
        <dt>Group</dt><dd>${esc(d.group || "–")}</dd><dt>Tags</dt><dd>${esc(d.tags.join(", ") || "–")}</dd>
        <dt>Class</dt><dd>${esc(d.device_class)}</dd><dt>Runtime</dt><dd>${esc(d.runtime_version)}</dd>
        <dt>Model</dt><dd>${esc(d.model.model_id || "–")} ${esc(d.model.version || "")}</dd>
        <dt>Backend</dt><dd>${esc(d.model.backend || "–")}${d.model.fallback ? `<br><span class="fallback">fell back: ${esc(d.model.fallback)}</span>` : ""}</dd>
        <dt>Session</dt><dd>${esc(d.session)}</dd>
        <dt>Settings</dt><dd>desired v${d.desired.version}, applied v${d.reported.applied_version}${d.in_sync ? "" : ' <span class="over">not in sync</span>'}${d.reported.refused_reason ? ` · refused: ${esc(d.reported.refused_reason)}` : ""}</dd>
        <dt>Update</dt><dd>${d.update && d.update.bundle_id ? `${esc(d.update.bundle_id)}: <span class="state-${esc(d.update.state)}">${esc(d.update.state)}</span>` : "–"}</dd>
      </dl></div>
      <div class="card"><h2>Cameras</h2>${table(["Camera", "Frames/s"], cameras, "no frames counted yet")}</div>
    </div>
    <h2>Settings: desired and reported</h2>${table(["Setting", "Desired", "Reported"], settings, "no settings from the hub")}
    <h2>Heartbeats</h2>
    <div class="grid">${chart("Frames/s", page.history, "fps", "fps")}${chart("Escalations/s", page.history, "escalations_per_s", "/s")}
      ${chart("Inference p95", page.history, "inference_p95_ms", "ms")}${chart("CPU", page.history, "cpu_percent", "%")}
      ${chart("Outbox rows", page.history, "outbox_rows", "rows")}${chart("Memory", page.history, "memory_mb", "MB")}</div>
    <h2>Model history</h2>${table(["Rollout", "Bundle", "From", "State", "Reason", "When"], page.models.map((m) => [
      `<a href="#/rollouts/${encodeURIComponent(m.rollout_id)}">${esc(m.rollout_id)}</a>`, esc(m.bundle_id), esc(m.from_bundle || "its own"),
      `<span class="state-${esc(m.state)}">${esc(m.state)}</span>`, esc(m.reason), when(m.at)]), "no rollout has reached it")}
    <h2>Recent escalations</h2>${table(["Frame", "Trace", "Status", "Verdict", "Route", "Received"], page.escalations.map((t) => [
      `<img class="thumb" loading="lazy" alt="" src="/console/api/traces/${t.trace_id}/image" onerror="this.replaceWith('–')">`,
      `<a href="#/traces/${t.trace_id}">${t.trace_id.slice(0, 12)}…</a>${t.hard_example ? " · hard" : ""}`,
      `<span class="state-${esc(t.status)}">${esc(t.status)}</span>`, esc(t.verdict || "–"), esc(t.route || "–"), when(t.received_at)]), "none yet")}`);
}

// -- Rollouts -----------------------------------------------------------------------------------------------------

async function viewRollouts() {
  const [rollouts, bundles] = await Promise.all([api("/v1/admin/rollouts"), api("/v1/bundles")]);
  const groups = [...new Set([...state.rows.values()].map((r) => r.group).filter(Boolean))].sort();
  const form = can("rollouts") ? `<form class="card toolbar" id="new-rollout">
      <strong>Start a rollout</strong>
      <select name="bundle" required>${bundles.map((b) => `<option value="${esc(b.bundle_id)}">${esc(b.bundle_id)} (${esc(b.version)})</option>`).join("")}</select>
      <select name="group"><option value="">every device</option>${groups.map((g) => `<option>${esc(g)}</option>`).join("")}</select>
      <input name="devices" placeholder="or device ids, comma-separated">
      <input name="waves" value="0.5, 1" title="cumulative shares per wave" size="8">
      <input name="soak" value="10" title="soak, seconds" size="4">
      <button type="submit" ${bundles.length ? "" : "disabled"}>Start</button>
      <span class="error" id="rollout-error"></span></form>` : "";
  setMain(`<h1>Rollouts</h1>${form}${table(["Rollout", "State", "Bundle", "Wave", "Started", "By", "Reason"], rollouts.map((r) => [
    `<a href="#/rollouts/${encodeURIComponent(r.rollout_id)}">${esc(r.rollout_id)}</a>`, `<span class="state-${esc(r.state)}">${esc(r.state)}</span>`,
    esc(r.bundle_id), r.wave + 1, when(r.created_at), esc(r.created_by), esc(r.reason)]), "no rollouts yet")}`);
  const started = $("#new-rollout");
  if (started) started.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(started);
    const devices = String(data.get("devices") || "").split(",").map((s) => s.trim()).filter(Boolean);
    const spec = {
      bundle_id: data.get("bundle"),
      target: devices.length ? { devices } : data.get("group") ? { group: data.get("group") } : {},
      waves: String(data.get("waves")).split(",").map(Number),
      soak_s: Number(data.get("soak")),
    };
    try {
      const rollout = await api("/v1/admin/rollouts", { method: "POST", body: spec });
      location.hash = `#/rollouts/${encodeURIComponent(rollout.rollout_id)}`;
    } catch (error) {
      $("#rollout-error").textContent = error.message;
    }
  });
}

async function viewRollout(id) {
  const r = await api(`/v1/admin/rollouts/${encodeURIComponent(id)}`);
  const acts = { RUNNING: ["pause", "abort"], PAUSED: ["resume", "abort"], COMPLETED: ["rollback"], ABORTED: ["rollback"], ROLLED_BACK: [] };
  const buttons = can("rollouts") ? (acts[r.state] || []).map((a) =>
    `<button class="${a === "abort" || a === "rollback" ? "danger" : ""}" data-action="${a}">${a[0].toUpperCase() + a.slice(1)}</button>`).join(" ") : "";
  const checks = (r.checks || []).map((c) => [esc(c.rule), `<span class="${c.over ? "over" : ""}">${c.value === null || c.value === undefined ? "–" : num(c.value, 3)}</span>`,
    c.bound === null || c.bound === undefined ? "–" : num(c.bound, 3)]);
  const waves = [];
  for (let w = 0; w < r.waves; w++) {
    const members = r.devices.filter((d) => d.wave === w);
    const counts = {};
    for (const d of members) counts[d.state] = (counts[d.state] || 0) + 1;
    waves.push([w + 1 === r.wave + 1 ? `<strong>${w + 1}</strong>` : w + 1, members.length, esc(Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", "))]);
  }
  setMain(`<h1>Rollout ${esc(r.rollout_id)} <span class="state-${esc(r.state)}" id="rollout-state">${esc(r.state)}</span></h1>
    <p>${esc(r.bundle_id)} · wave ${r.wave + 1} of ${r.waves} · started by ${esc(r.created_by)} ${when(r.created_at)}${r.reason ? ` · <span class="over">${esc(r.reason)}</span>` : ""}</p>
    <p class="toolbar" id="rollout-actions">${buttons}<span class="error" id="action-error"></span></p>
    <div class="grid"><div class="card"><h2>Abort rules</h2>${table(["Rule", "Now", "Bound"], checks)}</div>
      <div class="card"><h2>Waves</h2>${table(["Wave", "Devices", "States"], waves)}</div></div>
    <h2>Devices</h2>${table(["Device", "Wave", "State", "Progress", "Reason"], r.devices.map((d) => [
      `<a href="#/device/${encodeURIComponent(d.device_id)}">${esc(d.device_id)}</a>`, d.wave + 1,
      `<span class="state-${esc(d.state)}">${esc(d.state)}</span>`, d.state === "downloading" ? `${Math.round(d.progress * 100)}%` : "",
      esc([d.reason, d.detail].filter(Boolean).join(": "))]))}
    <h2>Timeline</h2>${table(["When", "Event"], (r.timeline || []).slice().reverse().map((e) => [when(e.at), esc(e.event || e.message || JSON.stringify(e))]))}`);
  for (const button of document.querySelectorAll("#rollout-actions button")) {
    button.addEventListener("click", async () => {
      if (["abort", "rollback"].includes(button.dataset.action) && !confirm(`${button.dataset.action} rollout ${r.rollout_id}?`)) return;
      try {
        await api(`/v1/admin/rollouts/${encodeURIComponent(r.rollout_id)}/${button.dataset.action}`, { method: "POST" });
        await draw(true);
      } catch (error) {
        $("#action-error").textContent = error.message;
      }
    });
  }
}

// -- Orchestrator -------------------------------------------------------------------------------------------------

async function viewOrchestrator() {
  let status;
  try {
    status = await api("/v1/admin/orchestrator");
  } catch (error) {
    if (error.status === 404 || error.status === 503 || error.status === 403) {
      setMain(`<h1>Orchestrator</h1><p class="muted">${esc(error.message)}</p>`);
      return;
    }
    throw error;
  }
  const [proposals, audit] = await Promise.all([api("/v1/admin/proposals?limit=200"), api("/v1/admin/orchestrator/audit?limit=2000&verify=true")]);
  const waiting = proposals.filter((p) => p.state === "PROPOSED");
  const applied = proposals.filter((p) => ["APPLIED", "REVERTED", "FAILED"].includes(p.state));
  const blocked = proposals.filter((p) => p.state === "BLOCKED");
  const actionText = (p) => esc(typeof p.action === "string" ? p.action : JSON.stringify(p.action));
  const cache = status.decision_cache || {};
  setMain(`<h1>Orchestrator</h1>
    <div class="card"><dl class="kv"><dt>Mode</dt><dd>${esc(status.mode)}</dd><dt>Language model</dt><dd>${esc(status.llm)}</dd>
      <dt>Decision cache</dt><dd id="cache-hit-rate">${num((cache.hit_rate || 0) * 100, 0)}% hits (${cache.hits || 0} of ${(cache.hits || 0) + (cache.misses || 0)})</dd>
      <dt>Proposals</dt><dd>${esc(Object.entries(status.proposals || {}).map(([source, states]) =>
        `from ${source}: ${Object.entries(states).map(([s, n]) => `${n} ${s}`).join(", ")}`).join("; ") || "none")}</dd></dl></div>
    <h2>Waiting for approval</h2>${table(["Proposal", "Action", "Reason", "By", "When", ""], waiting.map((p) => [
      esc(p.proposal_id), actionText(p), esc(p.reason), esc(p.source), when(p.created_at),
      can("approve") ? `<button data-proposal="${esc(p.proposal_id)}" data-step="approve">Approve</button> <button class="secondary" data-proposal="${esc(p.proposal_id)}" data-step="reject">Reject</button>` : ""]), "nothing waits")}
    <p class="error" id="proposal-error"></p>
    <h2>Applied, with their measured effect</h2>${table(["Proposal", "State", "Action", "Before", "Effect", "By"], applied.map((p) => [
      esc(p.proposal_id), `<span class="state-${esc(p.state)}">${esc(p.state)}</span>`, actionText(p),
      `<pre>${esc(JSON.stringify(p.before || {}, null, 1))}</pre>`, `<pre>${esc(JSON.stringify(p.effect || {}, null, 1))}</pre>`,
      esc(p.decided_by || p.source)]), "none applied")}
    <h2>Blocked by the guardrails</h2>${table(["Proposal", "Action", "Why", "When"], blocked.map((p) => [
      esc(p.proposal_id), actionText(p), esc(p.detail || p.reason), when(p.created_at)]), "none blocked")}
    <h2>Audit trail <span class="muted">(chain ${esc(audit.chain || "")})</span></h2>${table(["#", "When", "Kind", "Entry"],
      audit.entries.slice(-50).reverse().map((e) => [e.seq, when(e.at), esc(e.kind), `<code>${esc(JSON.stringify(e.entry))}</code>`]), "empty")}`);
  for (const button of document.querySelectorAll("button[data-proposal]")) {
    button.addEventListener("click", async () => {
      try {
        await api(`/v1/admin/proposals/${encodeURIComponent(button.dataset.proposal)}/${button.dataset.step}`, { method: "POST" });
        await draw(true);
      } catch (error) {
        $("#proposal-error").textContent = error.message;
      }
    });
  }
}

// -- Traces -------------------------------------------------------------------------------------------------------

async function viewTraces(_arg, query) {
  const params = new URLSearchParams();
  for (const key of ["device_id", "status", "route"]) if (query.get(key)) params.set(key, query.get(key));
  for (const key of ["since", "until"]) if (query.get(key)) params.set(key, String(Date.parse(query.get(key)) / 1000));
  params.set("limit", "200");
  const wanted = (query.get("trace_id") || "").trim();
  if (wanted) {
    location.hash = `#/traces/${encodeURIComponent(wanted)}`;
    return;
  }
  const traces = await api(`/v1/traces?${params}`);
  const field = (name, placeholder, type = "text") => `<input name="${name}" type="${type}" placeholder="${placeholder}" value="${esc(query.get(name) || "")}">`;
  setMain(`<h1>Traces</h1>
    <form class="toolbar" id="trace-search">${field("trace_id", "trace id")}${field("device_id", "device")}
      <select name="status"><option value="">any status</option>${["PENDING", "RUNNING", "SUCCESS", "FAILED", "TIMED_OUT"].map((s) =>
        `<option ${query.get("status") === s ? "selected" : ""}>${s}</option>`).join("")}</select>
      ${field("route", "route")}${field("since", "since", "datetime-local")}${field("until", "until", "datetime-local")}
      <button type="submit">Search</button></form>
    ${table(["Trace", "Device", "Status", "Route", "Answer", "Cost", "Received"], traces.map((t) => {
      const final = t.result && t.result.final;
      return [`<a href="#/traces/${t.trace_id}">${t.trace_id}</a>`, esc(t.device_id), `<span class="state-${esc(t.status)}">${esc(t.status)}</span>`,
        esc(t.route || "–"), esc(final ? final.labels[final.scores.indexOf(Math.max(...final.scores))] : t.error || "–"), num(t.cost, 4), when(t.received_at)];
    }), "no trace matches")}`);
  $("#trace-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new URLSearchParams();
    for (const [key, value] of new FormData(event.target)) if (value) data.set(key, value);
    location.hash = `#/traces?${data}`;
  });
}

const BOX_FLOOR = 0.3; // boxes scoring below this are left off the image unless asked for (a detector's many faint ones)

function boxList(prediction) {
  if (!prediction) return [];
  return [...prediction.boxes, ...prediction.texts.map((t) => t.box).filter(Boolean).map((b) => ({ ...b, label: b.label || "text" }))];
}

function boxes(prediction, kind, floor, width) {
  const font = Math.max(4, width / 40); // in the image's pixels: the label keeps its size however the image is scaled
  return boxList(prediction).filter((b) => b.score >= floor).map((b) =>
    `<rect class="${kind}" x="${b.x0}" y="${b.y0}" width="${b.x1 - b.x0}" height="${b.y1 - b.y0}"/>
    <text class="${kind}" x="${b.x0 + 1}" y="${kind === "cloud" ? Math.max(font, b.y0 - font / 4) : b.y1 + font}" font-size="${font}">${esc(b.label)} ${num(b.score)}</text>`).join("");
}

async function viewTrace(id) {
  const t = await api(`/console/api/traces/${encodeURIComponent(id)}`);
  const req = t.request, res = t.result;
  const final = res && res.final;
  const overlay = (floor) => req && req.image
    ? `${boxes(final, "cloud", floor, req.image.width)}${boxes(req.local, "edge", floor, req.image.width)}` : "";
  const counted = (p) => `${boxList(p).filter((b) => b.score >= BOX_FLOOR).length} of ${boxList(p).length}`;
  const image = req && req.image
    ? `<div class="image-box"><img id="trace-image" alt="the escalated frame" src="/console/api/traces/${esc(t.trace_id)}/image">
        <svg id="trace-boxes" viewBox="0 0 ${req.image.width} ${req.image.height}" preserveAspectRatio="none">${overlay(BOX_FLOOR)}</svg></div>
        <p class="muted">${esc(req.image.media_type)}, ${req.image.width}×${req.image.height}, ${req.image.bytes} bytes ·
          boxes scoring at least <input id="box-floor" type="number" min="0" max="1" step="0.05" value="${BOX_FLOOR}" style="width:5em">:
          <span style="color:#ff2d55">cloud</span> ${counted(final)}, <span style="color:#00c2ff">device</span> ${counted(req.local)}</p>`
    : `<p class="muted">The image is no longer kept (the hub keeps the newest console.trace_images_kept).</p>`;
  const answer = (p) => `${esc(p.label)} (${num(p.confidence, 3)})${p.boxes.length ? ` · ${p.boxes.length} boxes` : ""}${p.texts.length ? ` · “${esc(p.texts.map((x) => x.text).join(" "))}”` : ""}`;
  const models = [];
  if (req) models.push(["device", esc(req.local.model), answer(req.local)]);
  if (res) for (const p of res.outputs) models.push(["cloud", esc(p.model), answer(p)]);
  if (res && res.final) models.push(["<strong>final</strong>", esc(res.final.model), `<strong>${answer(res.final)}</strong>`]);
  setMain(`<h1>Trace <code>${esc(t.trace_id)}</code> <span class="state-${esc(t.status)}">${esc(t.status || "")}</span></h1>
    <p><a href="#/device/${encodeURIComponent(t.device_id)}">${esc(t.device_id)}</a> · route ${esc(t.route || "–")} · cost ${num(t.cost, 4)} ·
      received ${when(t.received_at)} · sends ${t.sends ?? "–"} · ${t.acked_at ? "acknowledged by the device" : "not acknowledged yet"}
      ${t.error ? `<br><span class="error">${esc(t.error)}</span>` : ""}</p>
    <div class="grid"><div class="card">${image}</div>
      <div><div class="card"><h2>Answers</h2>${table(["", "Model", "Answer"], models)}</div>
        <div class="card"><h2>Hops</h2>${table(["Hop", "ms"], ((res && res.timings) || []).map((h) => [esc(h.hop), num(h.ms, 1)]), "no timings")}</div>
        ${t.hard_example ? `<div class="card"><h2>Hard example</h2><p>device said ${esc(t.hard_example.edge_label)}, cloud said ${esc(t.hard_example.cloud_label)}; label: ${esc(t.hard_example.label || "not yet")}</p><a href="#/hard">label it</a></div>` : ""}</div></div>`);
  const floor = $("#box-floor");
  if (floor) floor.addEventListener("input", () => { $("#trace-boxes").innerHTML = overlay(Number(floor.value) || 0); });
}

// -- Hard examples ------------------------------------------------------------------------------------------------

async function viewHard(_arg, query) {
  const which = query.get("show") || "unlabelled";
  const labelled = { unlabelled: "false", labelled: "true", all: "" }[which] ?? "false";
  const examples = await api(`/console/api/hard-examples?limit=200${labelled ? `&labelled=${labelled}` : ""}`);
  const editable = can("models");
  setMain(`<h1>Hard examples</h1>
    <p class="muted">Frames the cloud labelled otherwise than the device. Confirm the cloud's label or correct it; the labelled
      set exports as a dataset (images/&lt;label&gt;/…, labels.csv) for retraining the edge model.</p>
    <div class="toolbar">${["unlabelled", "labelled", "all"].map((w) => `<a href="#/hard?show=${w}">${w === which ? `<strong>${w}</strong>` : w}</a>`).join(" · ")}
      <a href="/console/api/hard-examples/export" download><button type="button" class="secondary">Export labelled set</button></a></div>
    ${table(["Frame", "Trace", "Device", "Device said", "Cloud said", "Label", ""], examples.map((h) => [
      `<img class="thumb" loading="lazy" alt="" src="/console/api/traces/${h.trace_id}/image">`,
      `<a href="#/traces/${h.trace_id}">${h.trace_id.slice(0, 12)}…</a>`, esc(h.device_id), esc(h.edge_label), esc(h.cloud_label),
      h.label ? `${esc(h.label)} <span class="muted">(${esc(h.labelled_by)})</span>` : "–",
      editable ? `<form class="toolbar label-form" data-trace="${h.trace_id}"><button type="button" data-confirm="${esc(h.cloud_label)}">Confirm ${esc(h.cloud_label)}</button>
        <input name="label" placeholder="or the right label" size="10"><button type="submit" class="secondary">Correct</button></form>` : ""]), "nothing to label")}`);
  for (const form of document.querySelectorAll(".label-form")) {
    const save = async (label) => {
      await api(`/console/api/hard-examples/${form.dataset.trace}`, { method: "POST", body: { label } });
      await draw(true);
    };
    form.querySelector("[data-confirm]").addEventListener("click", (e) => save(e.target.dataset.confirm).catch(fail));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const label = form.label.value.trim();
      if (label) save(label).catch(fail);
    });
  }
}

// -- Alerts -------------------------------------------------------------------------------------------------------

async function viewAlerts() {
  const alerts = await api("/console/api/alerts");
  const link = (a) => a.kind === "rollout_aborted" ? `<a href="#/rollouts/${encodeURIComponent(a.subject)}">${esc(a.subject)}</a>`
    : `<a href="#/device/${encodeURIComponent(a.subject)}">${esc(a.subject)}</a>`;
  const active = alerts.filter((a) => a.active), cleared = alerts.filter((a) => !a.active);
  setMain(`<h1>Alerts</h1>
    <h2>Now</h2>${table(["Kind", "About", "What", "Since"], active.map((a) => [`<span class="over">${esc(a.kind)}</span>`, link(a), esc(a.message), when(a.raised_at)]), "no alert")}
    <h2>Cleared</h2>${table(["Kind", "About", "What", "Raised", "Cleared"], cleared.map((a) => [esc(a.kind), link(a), esc(a.message), when(a.raised_at), when(a.cleared_at)]), "none")}`);
}

// -- start --------------------------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  const response = await fetch("/console/api/me", { credentials: "same-origin" });
  if (response.ok) await start(await response.json());
  else showLogin();
});
