// fleetd dashboard: the fleet as a live grid and an agent page (services, checkpoints, mail,
// timeline, controls, an xterm.js terminal over /ws/term/<id>).
// Light at 200 agents: /ws/events batches events and health samples (latest per agent); they
// only mark cards dirty, and one pass per animation frame updates the changed text of those.
"use strict";
const agents = new Map();      // id -> AgentView-like object, updated from events
const samples = new Map();     // id -> latest psutil sample {cpu_percent, rss_mb, ...}
const dirty = new Set();       // ids whose card needs redrawing
const PRIORITIES = ["critical", "high", "normal", "low"];
let token = localStorage.getItem("fleet-token") || "";
let frame = 0;
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"}});
  const body = await r.json();
  if (r.status === 401) { localStorage.removeItem("fleet-token"); token = ""; route(); }
  if (!body.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
const post = (path, body) => api(path, {method: "POST", body: JSON.stringify(body)});
// A WebSocket cannot carry the Authorization header, and a token in a URL ends up in logs:
// each socket is opened with a single-use ticket from POST /api/tickets (valid ~30 s).
const wsUrl = async (path) => {
  const {ticket} = await post("/api/tickets", {});
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return `${proto}://${location.host}${path}${path.includes("?") ? "&" : "?"}ticket=${encodeURIComponent(ticket)}`;
};
const REVOKED = 1008;  // the gateway closes a revoked token's sockets with this code

// -- the fleet's state, folded from events ----------------------------------------------------

function service(a, name, change) {
  const old = (a.services || {})[name] || {name, state: "starting", pid: null, port: null, healthy: null, restarts: 0};
  a.services = {...a.services, [name]: {...old, ...change(old)}};
}

function apply(ev) {
  const a = agents.get(ev.agent_id) || {id: ev.agent_id, lifecycle: "NEW", activity: "READY", services: {}, ports: {}, checkpoints: 0};
  switch (ev.type) {
    case "agent.created": a.template = ev.template; a.name = ev.name; break;
    case "lifecycle.changed": a.lifecycle = ev.to; a.reason = ev.reason || ""; break;
    case "activity.changed": a.activity = ev.to; a.activity_detail = ev.detail || ""; break;
    case "ports.leased": a.ports = {...a.ports, ...ev.ports}; break;
    case "user.attached": a.users = [...new Set([...(a.users || []), ev.user])]; break;
    case "user.detached": a.users = (a.users || []).filter((u) => u !== ev.user); break;
    case "service.started": service(a, ev.service, () => ({state: "running", pid: ev.pid, port: ev.port, healthy: null})); break;
    case "service.exited": service(a, ev.service, () => ({state: "exited", pid: null, healthy: null})); break;
    case "service.health": service(a, ev.service, () => ({healthy: ev.healthy, health_detail: ev.detail || ""})); break;
    case "service.restarted": service(a, ev.service, (o) => ({restarts: Math.max(o.restarts + 1, ev.attempt), state: o.state === "exited" ? "restarting" : o.state})); break;
    case "checkpoint.taken": a.checkpoints = Math.max(a.checkpoints || 0, ev.checkpoint); break;
    case "agent.removed": agents.delete(ev.agent_id); samples.delete(ev.agent_id); dirty.add(ev.agent_id); return;
  }
  agents.set(a.id, a); dirty.add(a.id);
}

function health(a) {
  const all = Object.values(a.services || {});
  if (!all.length) return "";
  if (all.some((s) => s.healthy === false)) return "unhealthy";
  if (all.some((s) => s.state !== "running")) return "services " + all.filter((s) => s.state === "running").length + "/" + all.length;
  return all.every((s) => s.healthy === true) ? "healthy" : "running";
}

function resources(id) {
  const s = samples.get(id);
  return s ? `cpu ${s.cpu_percent.toFixed(1)}% · ${Math.round(s.rss_mb)} MB` : "";
}

// -- the grid ---------------------------------------------------------------------------------

function newCard(id) {
  const el = document.createElement("div");
  el.id = "a-" + id;
  el.onclick = () => (location.hash = "#/agent/" + id);
  el.innerHTML = `<h3></h3><div class="lc"></div><div class="act"></div><div class="hl"></div><div class="res"></div>`;
  el.cells = [...el.children];
  el.cells[0].textContent = id;
  return el;
}

function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

function draw() {
  frame = 0;
  const grid = $("#grid");
  if (grid) {
    for (const id of dirty) {
      let el = document.getElementById("a-" + id);
      const a = agents.get(id);
      if (!a) { el && el.remove(); continue; }
      if (!el) { el = newCard(id); grid.append(el); }
      const waiting = a.activity === "AWAITING_INPUT" || a.activity === "LOGIN_REQUIRED";
      const h = health(a);
      const cls = `card ${a.lifecycle}${waiting ? " waiting" : ""}${h === "unhealthy" ? " unhealthy" : ""}`;
      if (el.className !== cls) el.className = cls;
      const [, lc, act, hl, res] = el.cells;
      setText(lc, a.lifecycle);
      setText(act, a.activity + (a.activity_detail ? ": " + a.activity_detail : ""));
      setText(hl, h);
      setText(res, resources(id));
    }
  }
  if (current && dirty.has(current)) agentLive(agents.get(current));
  dirty.clear();
  const counts = {};
  for (const a of agents.values()) counts[a.lifecycle] = (counts[a.lifecycle] || 0) + 1;
  setText($("#summary"), Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · "));
}

function schedule() { if (!frame) frame = requestAnimationFrame(draw); }

let opened = 0;
async function connect() {
  if (!token) return;  // signed out (a 401 cleared it): the login form is showing
  let url;
  try { url = await wsUrl("/ws/events"); }
  catch (e) { $("#conn").textContent = "offline"; setTimeout(connect, 2000); return; }
  const ws = new WebSocket(url);
  ws.onopen = () => { $("#conn").textContent = "live"; if (opened++) load(); };  // missed while away
  ws.onclose = (e) => {
    $("#conn").textContent = e.code === REVOKED ? `offline: ${e.reason}` : "offline";
    setTimeout(connect, 2000);
  };
  ws.onmessage = (m) => {
    const batch = JSON.parse(m.data);
    if (batch.dropped) load();
    for (const ev of batch.events) { apply(ev); if (current === ev.agent_id) agentEvent(ev); }
    for (const obs of batch.health || []) { samples.set(obs.agent, obs.sample || {}); dirty.add(obs.agent); }
    schedule();
  };
}

async function load() {
  const [{agents: list}, {samples: latest}] = await Promise.all([api("/api/agents"), api("/api/health")]);
  agents.clear();
  for (const a of list) { agents.set(a.id, a); dirty.add(a.id); }
  for (const [id, obs] of Object.entries(latest)) if (obs.sample) samples.set(id, obs.sample);
  schedule();
}

let current = null;
function fleetPage() {
  current = null;
  $("#main").innerHTML = `<form id="spawn" class="controls"><input name="repo" placeholder="git repository path" required>
    <input name="name" placeholder="name (optional)"><button>spawn</button> <span id="result" class="hint"></span></form>
    <div class="grid" id="grid"></div>`;
  $("#spawn").onsubmit = (e) => { e.preventDefault(); spawnAgent(e.target); };
  for (const id of agents.keys()) dirty.add(id);
  schedule();
}

async function spawnAgent(form) {
  const body = {repo: form.repo.value.trim()};
  if (form.name.value.trim()) body.name = form.name.value.trim();
  $("#result").textContent = "spawning…";
  try { const {agent} = await post("/api/agents", body); $("#result").textContent = `spawned ${agent.id}`; form.reset(); }
  catch (e) { $("#result").textContent = e.message; }
}

// -- the agent page ---------------------------------------------------------------------------

const row = (ev, seq) => `<tr><td>${seq ?? ""}</td><td>${esc((ev.at || "").slice(11, 19))}</td><td>${esc(ev.type)}</td>` +
  `<td>${esc(ev.to || ev.service || ev.label || ev.detail || ev.reason || "")}</td></tr>`;
const showUsers = (users) => { const el = $("#users"); if (el) el.textContent = users && users.length ? `present: ${users.join(", ")}` : ""; };
const devLink = (port) => `<a href="http://${esc(location.hostname)}:${port}/" target="_blank" rel="noopener">:${port}</a>`;
const yesNo = (v) => (v === true ? "healthy" : v === false ? "UNHEALTHY" : "?");

function agentEvent(ev) {
  const t = $("#timeline");
  if (t) t.insertAdjacentHTML("afterbegin", row(ev));
  if (ev.type === "checkpoint.taken" || ev.type === "rolled_back") checkpoints(ev.agent_id);
}

function agentLive(a) {  // the parts of the agent page that events and samples change
  if (!a || !$("#lc")) return;
  setText($("#lc"), `${a.lifecycle} · ${a.activity} ${a.activity_detail || ""}`);
  setText($("#res"), resources(a.id) || "no sample yet");
  const ports = Object.entries(a.ports || {}).map(([k, p]) => `${esc(k)} ${devLink(p)}`).join(" ");
  if ($("#ports").dataset.html !== ports) { $("#ports").innerHTML = ports || "none"; $("#ports").dataset.html = ports; }
  const rows = Object.values(a.services || {}).map((s) =>
    `<tr class="${s.healthy === false ? "unhealthy" : ""}"><td>${esc(s.name)}</td><td>${esc(s.state)}</td><td>${s.pid ?? ""}</td>` +
    `<td>${s.port ? devLink(s.port) : ""}</td><td title="${esc(s.health_detail || "")}">${yesNo(s.healthy)}</td><td>${s.restarts || 0}</td></tr>`).join("");
  const html = `<tr><th>service</th><th>state</th><th>pid</th><th>port</th><th>health</th><th>restarts</th></tr>` + (rows || `<tr><td colspan="6">none</td></tr>`);
  if ($("#services").dataset.html !== html) { $("#services").innerHTML = html; $("#services").dataset.html = html; }
  showUsers(a.users);
}

async function agentPage(id) {
  current = id;
  const {agent: a} = await api(`/api/agents/${id}`);
  agents.set(id, {...(agents.get(id) || {}), ...a});
  const verbs = ["pause", "resume", "restart", "stop", "kill"];
  $("#main").innerHTML = `<div class="card ${esc(a.lifecycle)}"><h3>${esc(a.id)} <small>${esc(a.template)}</small></h3>
    <div class="lc" id="lc"></div><div><span id="res"></span> · ports: <span id="ports"></span> · branch ${esc(a.branch)}</div>
    <div class="controls">${verbs.map((v) => `<button data-verb="${v}">${v}</button>`).join("")}</div>
    <form id="send" class="row"><input name="text" placeholder="send text to the agent"><button>send</button></form>
    <p id="result" class="hint"></p></div>
    <h4>Services</h4><div class="scroll"><table id="services"></table></div>
    <h4>Checkpoints</h4><form id="cp-form" class="row"><input name="label" placeholder="label (optional)" maxlength="200"><button>take checkpoint</button></form>
    <div class="scroll"><table id="checkpoints"></table></div>
    <h4>Mail <button id="mail-refresh" class="small">refresh</button></h4>
    <form id="mail-form" class="mail"><select name="priority">${PRIORITIES.map((p) => `<option${p === "normal" ? " selected" : ""}>${p}</option>`).join("")}</select>
      <input name="subject" placeholder="subject (optional)"><textarea name="body" placeholder="message to the agent" required rows="2"></textarea><button>send mail</button></form>
    <div class="scroll"><table id="inbox"></table></div>
    <h4>Terminal <small id="term-mode" class="hint"></small> <small id="users"></small></h4><div id="term"></div>
    <h4>Timeline</h4><div class="scroll"><table id="timeline"></table></div>`;
  document.querySelectorAll("[data-verb]").forEach((b) => (b.onclick = () => command(id, b.dataset.verb, {})));
  $("#send").onsubmit = (e) => { e.preventDefault(); command(id, "send", {text: e.target.text.value}); e.target.reset(); };
  $("#cp-form").onsubmit = (e) => { e.preventDefault(); takeCheckpoint(id, e.target); };
  $("#mail-form").onsubmit = (e) => { e.preventDefault(); sendMail(id, e.target); };
  $("#mail-refresh").onclick = () => inbox(id);
  agentLive(agents.get(id));
  terminal(id);
  const {events} = await api(`/api/agents/${id}/events?limit=200`);
  $("#timeline").innerHTML = events.reverse().map((x) => row(x.event, x.seq)).join("");
  await Promise.all([checkpoints(id), inbox(id)]);
  pollInbox(id);
}

async function checkpoints(id) {
  const {checkpoints: found} = await api(`/api/agents/${id}/checkpoints`);
  if (current !== id || !$("#checkpoints")) return;
  const rows = found.slice().reverse().map((c) => `<tr data-cp="${c.checkpoint}"><td>#${c.checkpoint}</td>` +
    `<td>${esc((c.at || "").slice(0, 19).replace("T", " "))}</td><td>${esc(c.label)}</td><td>${esc(c.auto || "")}</td>` +
    `<td><code>${esc(c.commit.slice(0, 10))}</code></td><td>${yesNo(c.healthy)}</td>` +
    `<td class="cp-act"><button class="rollback">roll back to this</button></td></tr>`).join("");
  $("#checkpoints").innerHTML = `<tr><th>#</th><th>taken</th><th>label</th><th>auto</th><th>commit</th><th>health</th><th></th></tr>` +
    (rows || `<tr><td colspan="7">no checkpoints yet</td></tr>`);
  $("#checkpoints").querySelectorAll("button.rollback").forEach((b) => (b.onclick = () => askRollback(id, b.closest("tr"))));
}

function askRollback(id, tr) {  // an inline confirmation: works the same on a phone
  const n = Number(tr.dataset.cp);
  const cell = tr.querySelector(".cp-act");
  cell.innerHTML = `roll back to #${n}? <button class="confirm">yes, roll back</button> <button class="cancel">no</button>`;
  cell.querySelector(".cancel").onclick = () => checkpoints(id);
  cell.querySelector(".confirm").onclick = () => { cell.textContent = "rolling back…"; command(id, "rollback", {checkpoint: n}); };
}

async function takeCheckpoint(id, form) {
  $("#result").textContent = "checkpoint…";
  try {
    const r = await post(`/api/agents/${id}/checkpoints`, {label: form.label.value.trim()});
    $("#result").textContent = `checkpoint #${r.checkpoint} (${r.commit.slice(0, 10)})`; form.reset();
    await checkpoints(id);
  } catch (e) { $("#result").textContent = e.message; }
}

async function inbox(id) {
  const {mail} = await api(`/api/agents/${id}/mail?limit=50`);
  if (current !== id || !$("#inbox")) return;
  const rows = mail.map((m) => `<tr class="p-${esc(m.priority)}"><td>${esc(m.priority)}</td><td>${esc(m.from)}</td>` +
    `<td>${esc(m.subject)}</td><td class="body">${esc(m.body)}</td><td>${esc((m.sent_at || "").slice(11, 19))}</td></tr>`).join("");
  $("#inbox").innerHTML = `<tr><th>priority</th><th>from</th><th>subject</th><th>message</th><th>sent</th></tr>` +
    (rows || `<tr><td colspan="5">no mail waiting</td></tr>`);
}

function pollInbox(id) {  // mail is not in the event log: look again now and then
  setTimeout(() => { if (current === id && $("#inbox")) inbox(id).catch(() => {}).finally(() => pollInbox(id)); }, 5000);
}

async function sendMail(id, form) {
  const body = {body: form.body.value, priority: form.priority.value};
  if (form.subject.value.trim()) body.subject = form.subject.value.trim();
  $("#result").textContent = "sending mail…";
  try { const r = await post(`/api/agents/${id}/mail`, body); $("#result").textContent = `mail sent (${r.priority})`; form.body.value = ""; form.subject.value = ""; await inbox(id); }
  catch (e) { $("#result").textContent = e.message; }
}

// -- the terminal -----------------------------------------------------------------------------

let term = null, termWs = null;
function closeTerminal() {
  if (termWs) { termWs.onclose = null; termWs.close(); termWs = null; }
  if (term) { term.dispose(); term = null; }
  window.onresize = null;
}

// The bytes are the pane's own output, and tmux (the pane's terminal) has already answered the
// program's queries (device attributes, cursor position, modes, colours): were xterm.js to answer
// too, its answers would be typed into the pane as if the person had typed them.
function unanswering(t) {
  for (const id of [{final: "c"}, {prefix: ">", final: "c"}, {final: "n"}, {prefix: "?", final: "n"},
                    {intermediates: "$", final: "p"}, {prefix: "?", intermediates: "$", final: "p"},
                    {prefix: ">", final: "q"}]) t.parser.registerCsiHandler(id, () => true);
  t.parser.registerDcsHandler({intermediates: "$", final: "q"}, () => true);
  for (const osc of [4, 10, 11, 12]) t.parser.registerOscHandler(osc, (data) => data.includes("?"));
}

async function terminal(id) {
  closeTerminal();
  if (!window.Terminal) { $("#term").innerHTML = `<pre id="screen"></pre>`; screen(id); return; }  // npm ci not run
  const mine = term = new Terminal({fontSize: 13, scrollback: 2000, cursorBlink: true});
  unanswering(term);
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit); term.open($("#term")); fit.fit();
  let url;
  try { url = await wsUrl(`/ws/term/${id}?cols=${term.cols}&rows=${term.rows}`); }
  catch (e) { if (term === mine) term.write(`[terminal refused: ${e.message}]\r\n`); return; }
  if (term !== mine) return;  // the page moved on while the ticket was asked for
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") { term.write(new Uint8Array(m.data)); return; }
    const hello = JSON.parse(m.data);
    $("#term-mode").textContent = hello.readonly ? `read only, as ${hello.user}` : `interactive, as ${hello.user}`;
  };
  ws.onclose = (e) => { if (term) term.write(`\r\n[terminal closed${e.reason ? ": " + e.reason : ""}]\r\n`); };
  term.onData((d) => ws.readyState === 1 && ws.send(enc.encode(d)));
  term.onResize(({cols, rows}) => ws.readyState === 1 && ws.send(JSON.stringify({type: "resize", cols, rows})));
  window.onresize = () => fit.fit();
  termWs = ws;
}

async function screen(id) {
  if (current !== id) return;
  try { const {output} = await api(`/api/agents/${id}/output?lines=60`); $("#screen").textContent = output; } catch (e) { /* stopped */ }
  setTimeout(() => screen(id), 2000);
}

async function command(id, verb, body) {
  $("#result").textContent = `${verb}…`;
  try { const r = await post(`/api/agents/${id}/${verb}`, body); $("#result").textContent = `${verb}: ok`;
        if (r.agent) { agents.set(id, {...(agents.get(id) || {}), ...r.agent}); dirty.add(id); schedule(); } }
  catch (e) { $("#result").textContent = e.message; }
}

function route() {
  closeTerminal();
  if (!token) {
    $("#main").replaceChildren($("#login").content.cloneNode(true));
    $("#token-form").onsubmit = (e) => { e.preventDefault(); token = e.target.token.value.trim(); localStorage.setItem("fleet-token", token); start(); };
    return;
  }
  const m = location.hash.match(/^#\/agent\/([\w-]+)/);
  if (m) agentPage(m[1]).catch((e) => ($("#main").textContent = e.message)); else fleetPage();
}

let started = false;
async function start() {
  route();
  if (!token || started) return;
  started = true;
  await load().catch((e) => ($("#main").textContent = e.message));
  connect();
}
window.onhashchange = route;
start();
