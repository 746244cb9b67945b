// The status page's script: polls /api/board, redraws the table and the boot waterfall (every node's stages
// as bars on one shared time axis), the server replicas (and which one served each stage), and shows a node's
// whole event history (/api/nodes/<mac>/events) on click.
"use strict";
let selected = null;
let served = {};

// The replica that served a node's stage at a time (from /api/board's replicas), or "".
function servedBy(mac, stage, at) {
  const s = (served[mac] || []).find(x => x.stage === stage && x.at_ms === at);
  return s ? s.replica : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// The shared time axis: from the earliest boot start to the latest event (or now, while a node still boots).
function axis(r) {
  let t0 = Infinity, t1 = 0;
  for (const n of r.nodes) {
    if (n.started_ms == null) continue;
    t0 = Math.min(t0, n.started_ms);
    for (const s of n.stages) t1 = Math.max(t1, s.at_ms);
    if (!n.done && !n.failed) t1 = Math.max(t1, r.generated_ms);
  }
  if (t0 === Infinity) return null;
  return { t0, span: Math.max(t1 - t0, 1000) };
}

function bar(track, ax, from, to, cls, title, stage) {
  const b = document.createElement("span");
  b.className = "bar " + cls;
  b.style.left = ((from - ax.t0) / ax.span * 100).toFixed(2) + "%";
  b.style.width = (Math.max(to - from, 0) / ax.span * 100).toFixed(2) + "%";
  b.title = title;
  if (stage) b.dataset.stage = stage;
  track.appendChild(b);
}

function waterfall(td, n, ax, now) {
  const track = document.createElement("div");
  track.className = "track";
  td.appendChild(track);
  if (!ax || n.started_ms == null) return;
  let prev = n.started_ms;
  for (const s of n.stages) {
    const i = STAGES.indexOf(s.stage);
    const by = servedBy(n.mac, s.stage, s.at_ms);
    const title = s.stage + ": +" + (s.duration_ms / 1000).toFixed(1) + " s (at " + (s.since_start_ms / 1000).toFixed(1) + " s)" + (by ? ", served by " + by : "") + (s.detail ? " — " + s.detail : "");
    bar(track, ax, prev, s.at_ms, "s" + i, title, s.stage);
    prev = s.at_ms;
  }
  if (n.failed) bar(track, ax, prev, Math.max(prev + ax.span / 200, prev), "failed", "failed: " + n.failed, "failed");
  else if (!n.done) bar(track, ax, prev, now, "waiting", "waiting for the next stage since " + ((now - prev) / 1000).toFixed(1) + " s", "waiting");
}

function render(b) {
  const r = b.report;
  served = b.replicas.served;
  const rep = document.getElementById("replicas");
  rep.dataset.count = String(b.replicas.replicas.length);
  rep.textContent = "server replicas (" + b.replicas.backend + " state): " +
    b.replicas.replicas.map(x => x.id + (x.id === b.replicas.this ? " (this page)" : "")).join(", ");
  const ax = axis(r);
  document.getElementById("axis").textContent = ax ? "0 … " + (ax.span / 1000).toFixed(1) + " s" : "";
  const tbody = document.querySelector("#status tbody");
  const rows = [];
  for (const n of r.nodes) {
    const tr = document.createElement("tr");
    tr.id = "node-" + n.name;
    tr.dataset.mac = n.mac;
    tr.dataset.state = n.state;
    tr.className = "node" + (n.failed ? " failed" : n.done ? " done" : "") + (selected === n.mac ? " selected" : "");
    cell(tr, n.name); cell(tr, n.role || "unknown"); cell(tr, n.ip || "-"); cell(tr, String(n.boot));
    cell(tr, n.enrollment || "-", "enrollment");
    cell(tr, n.secure_boot == null ? "-" : n.secure_boot ? "on" : "off", "secureboot");
    const st = cell(tr, n.state, "state stage");
    const last = b.last[n.mac];
    if (n.failed && last && last.detail) {
      const d = document.createElement("div");
      d.className = "detail";
      d.textContent = "last event before the failure: " + last.stage + ": " + last.detail;
      st.appendChild(d);
    }
    if (n.hint) {
      const d = document.createElement("div");
      d.className = "detail hint";
      d.textContent = n.hint;
      st.appendChild(d);
    }
    cell(tr, n.elapsed_ms == null ? "-" : (n.elapsed_ms / 1000).toFixed(1) + "s");
    const img = cell(tr, (n.image || "-").slice(0, 12));
    if (n.standins) { const s = document.createElement("span"); s.className = "standins"; s.textContent = " standins"; img.appendChild(s); }
    waterfall(cell(tr, "", "wf"), n, ax, r.generated_ms);
    tr.addEventListener("click", () => history(n.mac, n.name));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  const lan = document.getElementById("lan");
  const l = b.lan;
  lan.className = "lan" + (l.message ? " bad" : "");
  lan.dataset.answering = String(l.answering);
  lan.textContent = !l.probed ? "" : "DHCP (" + l.mode + " mode): " + (l.message ||
    (l.others.length ? "other DHCP server(s) on the wire: " + l.others.join(", ") : "no other DHCP server on the wire"));
  const t = document.getElementById("status");
  t.dataset.live = String(Number(t.dataset.live) + 1);
  document.getElementById("updated").textContent = "updated " + new Date(r.generated_ms).toISOString();
  if (selected) history(selected, null);
}

async function history(mac, name) {
  selected = mac;
  const box = document.getElementById("history");
  if (name) document.getElementById("history-title").textContent = "event history of " + name + " (" + mac + ")";
  try {
    const resp = await fetch("/api/nodes/" + encodeURIComponent(mac) + "/events", { cache: "no-store" });
    if (!resp.ok) return;
    const evs = await resp.json();
    const rows = evs.map(e => {
      const tr = document.createElement("tr");
      tr.className = "event";
      cell(tr, new Date(e.at_ms).toISOString()); cell(tr, e.stage); cell(tr, e.source);
      cell(tr, servedBy(mac, e.stage, e.at_ms), "replica"); cell(tr, e.detail || "");
      return tr;
    });
    box.querySelector("tbody").replaceChildren(...rows);
    box.hidden = false;
  } catch (e) { /* the next poll retries */ }
}

async function poll() {
  try {
    const resp = await fetch("/api/board", { cache: "no-store" });
    if (resp.ok) render(await resp.json());
  } catch (e) {
    document.getElementById("updated").textContent = "server unreachable: " + e;
  }
  setTimeout(poll, REFRESH_MS);
}
for (const tr of document.querySelectorAll("#status tbody tr.node")) {
  tr.addEventListener("click", () => history(tr.dataset.mac, tr.id.replace(/^node-/, "")));
}
// A link to one node's history: /#node=<mac>.
const linked = location.hash.match(/^#node=(.+)$/);
if (linked) {
  const mac = decodeURIComponent(linked[1]);
  const tr = document.querySelector('#status tbody tr[data-mac="' + CSS.escape(mac) + '"]');
  history(mac, tr ? tr.id.replace(/^node-/, "") : mac);
}
poll();
