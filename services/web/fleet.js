// fleetd dashboard: the fleet as a live grid (events batched into one DOM pass per frame) and
// an agent page with its services, ports, timeline, controls and a terminal (xterm.js over
// /ws/term/<id>; without xterm.js, the polled screen).
"use strict";
const agents = new Map();      // id -> AgentView-like object, updated from events
const dirty = new Set();       // ids whose card needs redrawing
let token = localStorage.getItem("fleet-token") || "";
let frame = 0;
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"}});
  const body = await r.json();
  if (r.status === 401) { localStorage.removeItem("fleet-token"); token = ""; route(); }
  if (!body.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

function apply(ev) {
  const a = agents.get(ev.agent_id) || {id: ev.agent_id, lifecycle: "NEW", activity: "READY", services: {}, ports: {}};
  switch (ev.type) {
    case "agent.created": a.template = ev.template; a.name = ev.name; break;
    case "lifecycle.changed": a.lifecycle = ev.to; a.reason = ev.reason || ""; break;
    case "activity.changed": a.activity = ev.to; a.activity_detail = ev.detail || ""; break;
    case "ports.leased": a.ports = {...a.ports, ...ev.ports}; break;
    case "user.attached": a.users = [...new Set([...(a.users || []), ev.user])]; break;
    case "user.detached": a.users = (a.users || []).filter((u) => u !== ev.user); break;
    case "agent.removed": agents.delete(ev.agent_id); dirty.add(ev.agent_id); return;
  }
  agents.set(a.id, a); dirty.add(a.id);
}

function card(a) {
  return `<h3>${esc(a.id)}</h3><div class="lc">${esc(a.lifecycle)}</div>` +
    `<div class="act">${esc(a.activity)}${a.activity_detail ? ": " + esc(a.activity_detail) : ""}</div>` +
    `<div class="act">${esc(a.template || "")}</div>`;
}

function draw() {
  frame = 0;
  const grid = $("#grid");
  if (grid) {
    for (const id of dirty) {
      let el = document.getElementById("a-" + id);
      const a = agents.get(id);
      if (!a) { el && el.remove(); continue; }
      if (!el) { el = document.createElement("div"); el.id = "a-" + id; el.onclick = () => (location.hash = "#/agent/" + id); grid.append(el); }
      const waiting = a.activity === "AWAITING_INPUT" || a.activity === "LOGIN_REQUIRED";
      el.className = `card ${a.lifecycle}${waiting ? " waiting" : ""}`;
      el.innerHTML = card(a);
    }
  }
  dirty.clear();
  const counts = {};
  for (const a of agents.values()) counts[a.lifecycle] = (counts[a.lifecycle] || 0) + 1;
  $("#summary").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · ");
}

function schedule() { if (!frame) frame = requestAnimationFrame(draw); }

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/events?token=${encodeURIComponent(token)}`);
  ws.onopen = () => ($("#conn").textContent = "live");
  ws.onclose = () => { $("#conn").textContent = "offline"; setTimeout(connect, 2000); };
  ws.onmessage = (m) => {
    const batch = JSON.parse(m.data);
    if (batch.dropped) load();
    for (const ev of batch.events) { apply(ev); if (current === ev.agent_id) agentEvent(ev); }
    schedule();
  };
}

async function load() {
  const {agents: list} = await api("/api/agents");
  agents.clear();
  for (const a of list) { agents.set(a.id, a); dirty.add(a.id); }
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
  try { const {agent} = await api("/api/agents", {method: "POST", body: JSON.stringify(body)}); $("#result").textContent = `spawned ${agent.id}`; form.reset(); }
  catch (e) { $("#result").textContent = e.message; }
}

function agentEvent(ev) {
  const t = $("#timeline");
  if (t) t.insertAdjacentHTML("afterbegin", row(ev));
  const a = agents.get(ev.agent_id);
  if (ev.type === "lifecycle.changed" || ev.type === "activity.changed") $("#lc").textContent = `${a.lifecycle} · ${a.activity} ${a.activity_detail || ""}`;
  if (ev.type.startsWith("user.")) showUsers(a.users);
}
const showUsers = (users) => { const el = $("#users"); if (el) el.textContent = users && users.length ? `present: ${users.join(", ")}` : ""; };
const row = (ev, seq) => `<tr><td>${seq ?? ""}</td><td>${esc((ev.at || "").slice(11, 19))}</td><td>${esc(ev.type)}</td>` +
  `<td>${esc(ev.to || ev.service || ev.detail || ev.reason || "")}</td></tr>`;

async function agentPage(id) {
  current = id;
  const {agent: a} = await api(`/api/agents/${id}`);
  const ports = Object.entries(a.ports || {}).map(([k, p]) => `<a href="http://${location.hostname}:${p}/" target="_blank">${esc(k)}:${p}</a>`).join(" ");
  const services = Object.entries(a.services || {}).map(([k, s]) => `<tr><td>${esc(k)}</td><td>${esc(JSON.stringify(s))}</td></tr>`).join("");
  const verbs = ["pause", "resume", "restart", "checkpoint", "stop", "kill"];
  $("#main").innerHTML = `<div class="card ${a.lifecycle}"><h3>${esc(a.id)} <small>${esc(a.template)}</small></h3>
    <div class="lc" id="lc">${esc(a.lifecycle)} · ${esc(a.activity)} ${esc(a.activity_detail || "")}</div>
    <div>ports: ${ports || "none"} · branch ${esc(a.branch)} · ${a.checkpoints} checkpoint(s)</div>
    <div class="controls">${verbs.map((v) => `<button data-verb="${v}">${v}</button>`).join("")}</div>
    <form id="send"><input name="text" placeholder="send text to the agent" style="width:70%"><button>send</button></form>
    <p id="result" class="hint"></p></div>
    <h4>Services</h4><table>${services || "<tr><td>none</td></tr>"}</table>
    <h4>Terminal <small id="term-mode" class="hint"></small> <small id="users"></small></h4><div id="term"></div>
    <h4>Timeline</h4><table id="timeline"></table>`;
  document.querySelectorAll("[data-verb]").forEach((b) => (b.onclick = () => command(id, b.dataset.verb, {})));
  $("#send").onsubmit = (e) => { e.preventDefault(); command(id, "send", {text: e.target.text.value}); e.target.reset(); };
  const {events} = await api(`/api/agents/${id}/events?limit=200`);
  $("#timeline").innerHTML = events.reverse().map((x) => row(x.event, x.seq)).join("");
  showUsers(a.users);
  terminal(id);
}

let term = null, termWs = null;
function closeTerminal() {
  if (termWs) { termWs.onclose = null; termWs.close(); termWs = null; }
  if (term) { term.dispose(); term = null; }
  window.onresize = null;
}

function terminal(id) {
  closeTerminal();
  if (!window.Terminal) { $("#term").innerHTML = `<pre id="screen"></pre>`; screen(id); return; }  // npm ci not run
  term = new Terminal({fontSize: 13, scrollback: 2000, cursorBlink: true});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit); term.open($("#term")); fit.fit();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/term/${id}?token=${encodeURIComponent(token)}&cols=${term.cols}&rows=${term.rows}`);
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
  try { const r = await api(`/api/agents/${id}/${verb}`, {method: "POST", body: JSON.stringify(body)}); $("#result").textContent = `${verb}: ok`;
        if (r.agent) $("#lc").textContent = `${r.agent.lifecycle} · ${r.agent.activity}`; }
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
