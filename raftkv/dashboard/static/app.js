// raftkv dashboard: renders what the dashboard server pushes over /ws. No framework, no build step.
//
// Data flow: the server sends one `hello` (nodes, features, recent events) and then batches of
// events. Every event the server recorded is kept in `history`, bounded in count and in bytes like
// the server's own record (messages are only animated; a status the server did not record, the
// same picture as the last one, only updates the live view); the view is always rendered from "the
// latest status of each node at time T", where T is now (live) or a point the person scrubbed to
// (paused). Message animations and the event feed follow the same rule.
//
// The node set follows the cluster's membership: a live `nodes` event (a member joined, or was
// removed) rebuilds the ring and the cards. Whether a node is a voter or a learner is read from
// the leader's configuration (its status's `voters` and `learners`); a learner's catch-up is the
// leader's match index for it against the leader's last index.
"use strict";

const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]; // Okabe-Ito
const termColour = (t) => (t == null ? "#bbb" : PALETTE[((t % PALETTE.length) + PALETTE.length) % PALETTE.length]);
const HISTORY_MAX_EVENTS = 40000;
const HISTORY_MAX_BYTES = 16 * 1024 * 1024;  // as JSON text: objects take a few times that
const ENCODED_BYTES = Symbol("encoded bytes");  // on each kept event: its size as JSON text
const FEED_MAX = 250;
const LOG_CELLS = 32;
const CHART_POINTS = 120;

const S = {
  nodes: [],            // [{id, url, raftId}]
  features: {},
  schema: {messages: {}, glyphs: {}, events: {}},  // names of message types and event kinds, from the server
  supervisor: false,
  history: [],          // every recorded event but messages and ticks, oldest first
  historyBytes: 0,      // their size as JSON text
  statuses: {},         // id -> [{rt, state, kv, recorded}]: the recorded ones, then the newest if it was not
  terms: {},            // id -> Map(index -> term), inferred from status (lastLogTerm) and truncations
  truncatedAt: {},      // id -> {index, rt}
  reach: {},            // id -> reach record from the latest tick
  links: {},            // "a>b" -> rates
  safety: [],
  slowmo: {factor: 1, busy: false, available: false},
  metrics: {},          // id -> latest figures
  chart: {tput: [], p50: [], p99: [], leaderless: []},
  paused: false,
  viewAt: null,         // null = live, else a receipt time (seconds)
  lastHb: {},           // node -> rt of the last heartbeat/append it was sent (live only)
  lastHbSent: {},       // leader -> {t, interval}
  animThrottle: {},     // link|kind -> last animation time (ms)
  serverSkew: 0,
  ws: null,
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
};
const SVGNS = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, v);
  return e;
};
const now = () => Date.now() / 1000 + S.serverSkew;
const fmtAgo = (t) => (t == null ? "never" : `${Math.max(0, now() - t).toFixed(1)} s ago`);
const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], {hour12: false}) + "." + String(Math.floor((t % 1) * 10));
const short = (v) => { const s = typeof v === "string" ? v : JSON.stringify(v); return s.length > 40 ? s.slice(0, 39) + "…" : s; };
const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} bytes`);

// ------------------------------------------------------------------------- connection ---------

function connect(delay = 250) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  S.ws = ws;
  ws.onopen = () => setConn("live", "ok");
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "batch") for (const ev of msg.events) ingest(ev, true);
  };
  ws.onclose = () => {
    setConn("dashboard server disconnected — reconnecting…", "bad");
    setTimeout(() => connect(Math.min(delay * 2, 4000)), delay);
  };
}

function setConn(text, cls) {
  const c = $("#conn");
  c.textContent = text;
  c.className = "pill " + cls;
}

function onHello(h) {
  S.serverSkew = h.now - Date.now() / 1000;
  S.nodes = h.nodes;
  S.features = h.features || {};
  S.schema = h.schema || S.schema;
  S.supervisor = h.supervisor;
  S.slowmo = h.slowmo || S.slowmo;
  S.safety = h.safety || [];
  S.reach = h.reach || {};
  S.history = [];
  S.historyBytes = 0;
  S.statuses = {};
  S.terms = {};
  for (const n of S.nodes) { S.statuses[n.id] = []; S.terms[n.id] = new Map(); }
  $("#feed").replaceChildren();
  for (const ev of h.events || []) ingest(ev, false);
  buildStatic();
  renderFeed(true);
  renderAll();
}

// ------------------------------------------------------------------------- ingesting events ---

function ingest(ev, live) {
  // Messages are only animated (and counted per link by the server); ticks only update the view.
  if (ev.type !== "msg" && ev.type !== "tick" && ev.recorded !== false) remember(ev);
  const node = ev.via || ev.node;
  switch (ev.type) {
    case "status": {
      if (live) noteRaftId(node, ev.state);
      const arr = S.statuses[node] || (S.statuses[node] = []);
      if (arr.length && !arr[arr.length - 1].recorded) arr.pop();  // it was only the live view's
      arr.push({rt: ev.rt, state: ev.state, kv: ev.kv, recorded: ev.recorded !== false});
      noteTerms(node, ev.state);
      break;
    }
    case "trace":
      if (ev.kind === "truncate" && ev.detail) {
        const m = S.terms[node];
        if (m) for (const k of [...m.keys()]) if (k >= ev.detail.from_index) m.delete(k);
        S.truncatedAt[node] = {index: ev.detail.from_index, rt: ev.rt};
      }
      break;
    case "msg":
      if (live && !S.paused) onMessage(ev);
      break;
    case "tick":
      S.reach = ev.reach || S.reach;
      S.links = ev.links || {};
      S.safety = ev.safety || S.safety;
      if (ev.slowmo) S.slowmo = ev.slowmo;
      break;
    case "safety":
      S.safety = ev.checks;
      break;
    case "metrics":
      S.metrics[node] = ev;
      if (live) pushChart(ev);
      break;
    case "load":
      renderLoad(ev);
      break;
    case "tour":
      renderTour(ev);
      break;
    case "nodes":
      if (live) applyNodes(ev.nodes);
      break;
  }
  if (live && isFeedEvent(ev) && !S.paused) addFeed(ev, true);
}

function applyNodes(nodes) {
  // Rebuilt only when the set (or a node's id, or its being removed) changed: cards keep their state.
  const sig = (ns) => ns.map((n) => `${n.id}|${n.raftId}|${n.removed}`).join(",");
  const changed = sig(nodes) !== sig(S.nodes);
  S.nodes = nodes;
  for (const n of nodes) { S.statuses[n.id] = S.statuses[n.id] || []; S.terms[n.id] = S.terms[n.id] || new Map(); }
  if (changed) { buildStatic(); renderAll(); }
}

function noteRaftId(node, st) {
  // A node watched before the cluster gave it its id learns it from its first status.
  const n = S.nodes.find((x) => x.id === node);
  if (n && st && st.nodeId && n.raftId !== st.nodeId) applyNodes(S.nodes.map((x) => (x === n ? {...x, raftId: st.nodeId} : x)));
}

function remember(ev) {
  ev[ENCODED_BYTES] = JSON.stringify(ev).length;
  S.history.push(ev);
  S.historyBytes += ev[ENCODED_BYTES];
  if (S.history.length > HISTORY_MAX_EVENTS || S.historyBytes > HISTORY_MAX_BYTES) forgetOldest();
}

function forgetOldest() {
  // Down to 90% of both bounds at once, so a busy cluster does not cost a copy of the history per event.
  let drop = 0;
  while (drop < S.history.length && (S.history.length - drop > 0.9 * HISTORY_MAX_EVENTS || S.historyBytes > 0.9 * HISTORY_MAX_BYTES)) {
    S.historyBytes -= S.history[drop][ENCODED_BYTES];
    drop++;
  }
  S.history.splice(0, drop);
  // Statuses older than the history go with it, except each node's newest: the view needs one.
  const oldest = S.history.length ? S.history[0].rt : Infinity;
  for (const arr of Object.values(S.statuses)) {
    let old = 0;
    while (old < arr.length - 1 && arr[old].rt < oldest) old++;
    arr.splice(0, old);
  }
}

function noteTerms(node, st) {
  if (!st) return;
  const m = S.terms[node] || (S.terms[node] = new Map());
  const last = st.logLength || 0;
  for (const k of [...m.keys()]) if (k > last) m.delete(k);  // the log got shorter: truncated
  // Entries that appeared since the previous report were written in the node's current last term.
  let i = last;
  while (i > 0 && !m.has(i) && last - i < 4096) { m.set(i, st.lastLogTerm); i--; }
  if (m.size > 8192) for (const k of [...m.keys()].slice(0, m.size - 8192)) m.delete(k);
}

// ------------------------------------------------------------------------- view at time T ----

function viewTime() { return S.viewAt == null ? now() : S.viewAt; }

function statusAt(id, t) {
  const arr = S.statuses[id] || [];
  if (S.viewAt == null) return arr[arr.length - 1] || null;
  let lo = 0, hi = arr.length - 1, found = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (arr[mid].rt <= t) { found = arr[mid]; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

// The status of the node that believed itself leader at `t` (null when none did).
function leaderStatusAt(t) {
  return S.nodes.map((n) => statusAt(n.id, t)).find((x) => x && x.state && x.state.state === "leader") || null;
}

// Voter or learner, as the leader's configuration says (the node's own when no leader is known).
function memberRole(n, st, t) {
  const leader = leaderStatusAt(t);
  const conf = leader ? leader.state : st && st.state;
  if (!conf || !conf.learners) return "voter";
  return conf.learners.includes(n.raftId) ? "learner" : "voter";
}

// How far a learner has come: the leader's match index for it against the leader's last index.
function catchUp(n, t) {
  const leader = leaderStatusAt(t);
  if (!leader) return null;
  const p = (leader.state.peers || []).find((x) => x.id === n.raftId);
  if (!p || p.matchIndex == null) return null;
  return {match: p.matchIndex, last: leader.state.logLength, snapshot: p.state === "snapshot"};
}

function catchUpWords(c) {
  if (!c) return "waiting to hear from the leader";
  if (c.snapshot) return "receiving a snapshot";
  return c.match >= c.last ? `caught up (${c.match} of ${c.last})` : `catching up: ${c.match} of ${c.last}`;
}

const members = () => S.nodes.filter((n) => !n.removed);

// ------------------------------------------------------------------------- static parts -------

function renderLegend() {
  // One item per glyph the server declares, before the fixed "dropped" item.
  const legend = $(".legend");
  for (const old of legend.querySelectorAll("li.glyph")) old.remove();
  const dropped = legend.querySelector(".m-drop").parentElement;
  for (const [glyph, meaning] of Object.entries(S.schema.glyphs)) {
    legend.insertBefore(el("li", {class: "glyph"}, el("span", {class: `m m-${glyph}`}), meaning), dropped);
  }
}

function buildStatic() {
  renderLegend();
  const opts = (sel, withAny) => {
    const s = $(sel);
    s.replaceChildren(...(withAny ? [el("option", {value: "", text: "the leader"})] : []),
      ...members().map((n) => el("option", {value: n.id, text: n.id})));
  };
  opts("#kv-node", true); opts("#cut-src"); opts("#cut-dst");
  if (members().length > 1) $("#cut-dst").value = members()[1].id;
  $("#split-boxes").replaceChildren(...members().map((n, i) =>
    el("label", {class: "chk"}, el("input", {type: "checkbox", value: n.id, checked: i === 0 ? true : null,
      "aria-label": `${n.id} in the first group`}), ` ${n.id}`)));
  const demos = (S.features.tour && S.features.tour.demos) || {};
  $("#tour-demo").replaceChildren(el("option", {value: "all", text: "All of them, in order"}),
    ...Object.entries(demos).map(([k, v]) => el("option", {value: k, text: v})));
  const cut = S.features.oneWayCut || {};
  $("#cut").disabled = !cut.available;
  $("#link-apply").disabled = !(S.features.lossDelay || {}).available;
  $("#cut-why").textContent = cut.available ? "" : `Unavailable: ${cut.why}. ${(S.features.lossDelay || {}).why || ""}`;
  const add = S.features.addNode || {};
  $("#add-node").disabled = !add.available;
  $("#add-why").textContent = add.available ? "" : `Unavailable: ${add.why}.`;
  const remote = $("#remote-note");
  if (!S.supervisor) {
    remote.hidden = false;
    remote.textContent = "Attached to a remote cluster: crash, pause, restart and slow motion are unavailable " +
      "(they need the supervisor that `raftkv up` provides). Elections, partitions, reads and writes work.";
  } else remote.hidden = true;
  buildCards();
  buildRing();
}

function buildCards() {
  const cards = $("#cards");
  cards.replaceChildren();
  const proc = S.features.process || {};
  for (const n of S.nodes) {
    const b = (op, label, aria, extra = {}) => el("button", {type: "button", "data-op": op, "data-target": n.id,
      "aria-label": `${aria} ${n.id}`, onclick: () => nodeAction(n.id, op), ...extra}, label);
    const procOff = proc.available ? {} : {disabled: true, title: proc.why};
    const card = el("article", {class: "card", "data-node": n.id, "aria-label": `node ${n.id}`},
      el("header", {}, el("h3", {}, el("span", {class: "role-icon", "aria-hidden": "true"}), ` ${n.id}`),
        el("span", {class: "role-word"})),
      el("p", {class: "facts"}),
      el("p", {class: "reach"}),
      el("p", {class: "votes"}),
      el("div", {class: "buttons"},
        b("force-election", "🗳️ Force election", "Force an election on"),
        b("isolate", "🔌 Isolate", "Cut off from every peer:"),
        b("crash", "💥 Crash", "Crash (kill -9)", procOff),
        b("restart", "🔄 Restart", "Restart", procOff),
        b("pause", "⏸ Pause", "Pause (SIGSTOP)", procOff),
        b("resume", "▶ Resume", "Resume (SIGCONT)", procOff),
        el("button", {type: "button", "data-op": "promote", "data-target": n.id, "aria-label": `Promote ${n.id} to voter`,
          onclick: () => api(`/api/members/${encodeURIComponent(n.id)}/promote`)}, "⬆️ Promote"),
        el("button", {type: "button", "data-op": "remove", "data-target": n.id,
          "aria-label": `Remove ${n.id} from the cluster`, onclick: () => removeNode(n.id)}, "👋 Remove node")),
      proc.available ? null : el("p", {class: "why", text: proc.why}),
      el("details", {class: "kv", open: true}, el("summary", {}, "KV store ", el("span", {class: "kv-count"})),
        el("table", {"data-kv-node": n.id}, el("tbody"))),
      el("div", {class: "kv-full", hidden: true, "aria-live": "polite"}));
    cards.append(card);
  }
}

// ------------------------------------------------------------------------- the ring ------------

const RING = {cx: 220, cy: 222, r: 165, nodeR: 34};
function nodePos(i, count) {
  const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, count);
  return {x: RING.cx + RING.r * Math.cos(a), y: RING.cy + RING.r * Math.sin(a)};
}
const posOf = (raftId) => {
  const i = S.nodes.findIndex((n) => n.raftId === raftId || n.id === raftId);
  return i < 0 ? null : nodePos(i, S.nodes.length);
};

function buildRing() {
  const links = $("#links"), nodes = $("#nodes");
  links.replaceChildren(); nodes.replaceChildren(); $("#msgs").replaceChildren();
  S.nodes.forEach((a, i) => S.nodes.forEach((b, j) => {
    if (j <= i) return;
    const p = nodePos(i, S.nodes.length), q = nodePos(j, S.nodes.length);
    links.append(svg("line", {x1: p.x, y1: p.y, x2: q.x, y2: q.y, class: "link", "data-link": `${a.raftId}|${b.raftId}`}));
    // The rate label sits just outside the link, away from the ring's centre, clear of the messages.
    const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
    const ox = mx - RING.cx, oy = my - RING.cy, ol = Math.hypot(ox, oy) || 1;
    links.append(svg("text", {x: mx + (ox / ol) * 22, y: my + (oy / ol) * 22 + 4, class: "link-rate", "data-rate": `${a.raftId}|${b.raftId}`, "text-anchor": "middle"}));
  }));
  S.nodes.forEach((n, i) => {
    const p = nodePos(i, S.nodes.length);
    const g = svg("g", {class: "node", "data-ring-node": n.id, transform: `translate(${p.x},${p.y})`, tabindex: "0",
      role: "button", "aria-label": `${n.id}: press Enter to force an election`});
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); nodeAction(n.id, "force-election"); } });
    g.addEventListener("click", () => document.querySelector(`[data-node="${n.id}"]`).scrollIntoView({behavior: "smooth", block: "nearest"}));
    const C = 2 * Math.PI * (RING.nodeR + 9);
    g.append(svg("circle", {r: RING.nodeR + 18, class: "halo"}));
    g.append(svg("circle", {r: RING.nodeR + 9, class: "timer-bg"}));
    g.append(svg("circle", {r: RING.nodeR + 9, class: "timer", "stroke-dasharray": `${C} ${C}`, transform: "rotate(-90)"}));
    g.append(svg("circle", {r: RING.nodeR + 4, class: "hb", "stroke-dasharray": `0 999`, transform: "rotate(-90)"}));
    g.append(svg("path", {class: "shape"}));
    const t1 = svg("text", {class: "n-id", y: -6, "text-anchor": "middle"}); t1.textContent = n.id;
    const t2 = svg("text", {class: "n-role", y: 9, "text-anchor": "middle"});
    const t3 = svg("text", {class: "n-term", y: 22, "text-anchor": "middle"});
    const crown = svg("text", {class: "crown", y: -RING.nodeR - 2, "text-anchor": "middle"}); crown.textContent = "♛";
    const badge = svg("text", {class: "badge", x: RING.nodeR, y: -RING.nodeR + 6, "text-anchor": "middle"});
    const progress = svg("g", {class: "catch-up", transform: `translate(0,${RING.nodeR + 22})`});
    progress.append(svg("rect", {class: "bar-bg", x: -40, y: -5, width: 80, height: 8, rx: 3}),
      svg("rect", {class: "bar", x: -40, y: -5, width: 0, height: 8, rx: 3}),
      svg("text", {class: "bar-text", y: 16, "text-anchor": "middle"}));
    g.append(t1, t2, t3, crown, badge, progress, svg("g", {class: "vote-badges"}));
    nodes.append(g);
  });
}

function shapePath(role) {
  const R = RING.nodeR;
  if (role === "learner") {  // a pentagon: it receives the log but does not vote
    const pts = [...Array(5)].map((_, k) => { const a = -Math.PI / 2 + (k * 2 * Math.PI) / 5; return `${R * Math.cos(a)},${R * Math.sin(a)}`; });
    return "M" + pts.join("L") + "Z";
  }
  if (role === "leader") {
    const pts = [...Array(6)].map((_, k) => { const a = Math.PI / 6 + (k * Math.PI) / 3; return `${R * Math.cos(a)},${R * Math.sin(a)}`; });
    return "M" + pts.join("L") + "Z";
  }
  if (role === "candidate") return `M0,${-R}L${R},0L0,${R}L${-R},0Z`;
  if (role === "pre-candidate") { const s = R * 0.85; return `M${-s},${-s}H${s}V${s}H${-s}Z`; }
  return `M${-R},0a${R},${R} 0 1,0 ${2 * R},0a${R},${R} 0 1,0 ${-2 * R},0`;
}

function nodeCondition(id, st) {
  // What the dashboard can say about a node, most serious first.
  const r = S.reach[id] || {};
  const proc = r.process;
  const node = S.nodes.find((n) => n.id === id);
  const removed = (st && st.state && st.state.removed) || (node && node.removed);
  if (removed) return {key: "removed", text: `⊘ removed from the cluster${typeof removed === "string" ? `: ${removed}` : ""}`, grey: true};
  if (S.viewAt == null) {
    if (proc && !proc.running) return {key: "crashed", text: `💥 crashed (exit ${proc.exitCode})`, grey: true};
    if (proc && proc.paused) return {key: "paused", text: "⏸ paused (SIGSTOP): not answering", grey: true};
    if (r.reach === "unreachable") return {key: "unreachable", text: `⚠ dashboard cannot reach node (${r.error || "no connection"})`, grey: true};
    if (r.reach === "silent") return {key: "silent", text: "⚠ dashboard cannot reach node: connected but silent", grey: true};
  }
  const f = (st && st.state && st.state.faults) || {};
  if (f.isolated) return {key: "partitioned", text: "🔌 node reports: partitioned from all peers", grey: false, cut: true};
  if (f.partitioned && f.partitioned.length) return {key: "partitioned", text: `🔌 node reports: partitioned from ${f.partitioned.join(", ")}`, grey: false, cut: true};
  return {key: "ok", text: "", grey: false};
}

function renderRing() {
  const t = viewTime();
  const nowMs = performance.now();
  S.nodes.forEach((n) => {
    const g = document.querySelector(`[data-ring-node="${n.id}"]`);
    if (!g) return;
    const st = statusAt(n.id, t);
    const s = st ? st.state : null;
    const member = memberRole(n, st, t);
    const role = s ? (member === "learner" && s.state === "follower" ? "learner" : s.state) : "unknown";
    const cond = nodeCondition(n.id, st);
    g.setAttribute("data-role", role);
    g.setAttribute("data-member", cond.key === "removed" ? "removed" : member);
    g.classList.toggle("grey", cond.grey);
    g.classList.toggle("cut", !!cond.cut);
    g.classList.toggle("leader", role === "leader" && !cond.grey);
    g.querySelector(".shape").setAttribute("d", shapePath(role));
    g.querySelector(".shape").setAttribute("fill", cond.grey ? "#d9d9d9" : termColour(s && s.term));
    g.querySelector(".shape").classList.toggle("dashed", role === "pre-candidate");
    g.querySelector(".n-role").textContent = cond.grey ? cond.key : role;
    g.querySelector(".n-term").textContent = s ? `term ${s.term}` : "";
    g.querySelector(".badge").textContent = cond.key === "removed" ? "⊘" : cond.grey ? "✕" : cond.cut ? "✂" : "";
    renderCatchUp(g, role === "learner" && !cond.grey ? catchUp(n, t) : undefined);
    g.setAttribute("aria-label", `${n.id}: ${cond.grey ? cond.key : role}, term ${s ? s.term : "?"}. Enter forces an election.`);
    // Election timer: what remains before this node would time out, shrinking as it runs.
    const timer = g.querySelector(".timer"), hb = g.querySelector(".hb");
    const C = 2 * Math.PI * (RING.nodeR + 9);
    let frac = 0;
    if (s && !cond.grey && role !== "leader" && role !== "learner" && s.electionTimeout) {  // a learner never campaigns
      const tick = s.tickMs || 20;
      const lastHb = S.viewAt == null ? S.lastHb[n.raftId] : null;
      let elapsedMs = s.electionElapsed * tick + (S.viewAt == null ? (now() - st.rt) * 1000 : 0);
      if (lastHb && lastHb > st.rt) elapsedMs = (now() - lastHb) * 1000;
      frac = Math.max(0, 1 - elapsedMs / (s.electionTimeout * tick));
    }
    timer.setAttribute("stroke-dasharray", `${frac * C} ${C}`);
    timer.classList.toggle("low", frac < 0.3);
    // Heartbeat timer (leader): progress towards its next heartbeat, from when it last sent one.
    const C2 = 2 * Math.PI * (RING.nodeR + 4);
    const hbInfo = S.lastHbSent[n.raftId];
    let hf = 0;
    if (role === "leader" && !cond.grey && hbInfo && S.viewAt == null) {
      hf = Math.min(1, ((now() - hbInfo.t) * 1000) / Math.max(10, hbInfo.interval));
    }
    hb.setAttribute("stroke-dasharray", `${hf * C2} ${C2}`);
    // Votes a candidate has received.
    const vb = g.querySelector(".vote-badges");
    vb.replaceChildren();
    if (s && (role === "candidate" || role === "pre-candidate") && s.votes) {
      Object.entries(s.votes).forEach(([voter, granted], k) => {
        const tx = svg("text", {x: -RING.nodeR + k * 22, y: RING.nodeR + 26, class: granted ? "vote yes" : "vote no"});
        tx.textContent = `${granted ? "✓" : "✗"}${voter.replace(/^node/, "")}`;
        vb.append(tx);
      });
    }
  });
  // Link rates under load, and cut links.
  for (const text of document.querySelectorAll("[data-rate]")) {
    const [a, b] = text.getAttribute("data-rate").split("|");
    const ab = S.links[`${a}>${b}`], ba = S.links[`${b}>${a}`];
    const total = (ab ? ab.messages : 0) + (ba ? ba.messages : 0);
    const entries = (ab ? ab.entries : 0) + (ba ? ba.entries : 0);
    const dropped = (ab ? ab.dropped : 0) + (ba ? ba.dropped : 0);
    text.textContent = S.viewAt == null && (total > 60 || dropped > 0)
      ? `${Math.round(total)}/s${entries ? ` ${Math.round(entries)}e/s` : ""}${dropped ? ` ✕${Math.round(dropped)}/s` : ""}` : "";
    text.setAttribute("aria-label", `${a}–${b}: ${Math.round(total)} messages, ${Math.round(entries)} entries, ${Math.round(dropped)} dropped per second`);
    const line = document.querySelector(`[data-link="${a}|${b}"]`);
    if (line) line.classList.toggle("dropping", dropped > 0);
  }
  void nowMs;
}

function renderCatchUp(g, c) {
  // A learner's progress bar under its shape (`undefined`: not a learner, no bar).
  const box = g.querySelector(".catch-up");
  box.style.display = c === undefined ? "none" : "";
  if (c === undefined) return;
  const frac = c && c.last ? Math.min(1, c.match / c.last) : 0;
  box.querySelector(".bar").setAttribute("width", String(80 * frac));
  box.querySelector(".bar-text").textContent = catchUpWords(c);
}

// ------------------------------------------------------------------------- messages ----------

function faultsOf(raftId) {
  const n = S.nodes.find((x) => x.raftId === raftId || x.id === raftId);
  const arr = n ? S.statuses[n.id] : null;
  const st = arr && arr[arr.length - 1];
  return (st && st.state && st.state.faults) || {};
}

function linkCut(src, dst) {
  // Whether either end's fault rules stop src -> dst. A node reports every message it sends, and
  // separately each one its fault layer drops; a "sent" report on a cut link is one that will be
  // (or was) dropped, so it must not be drawn arriving nor refill the receiver's election timer.
  const a = faultsOf(src), b = faultsOf(dst);
  const has = (list, x) => Array.isArray(list) && list.includes(x);
  return !!(a.isolated || has(a.partitioned, dst) || has(a.cut_outbound, dst) ||
    b.isolated || has(b.partitioned, src) || has(b.cut_inbound, src));
}

function onMessage(ev) {
  const known = S.schema.messages[ev.kind];
  const kind = known ? known.glyph : "unknown";
  if (!ev.dropped && linkCut(ev.src, ev.dst)) return;  // its "dropped" report bursts instead
  const fromLeader = (kind === "hb" || kind === "append") && !ev.kind.endsWith("Response");
  if (!ev.dropped && fromLeader) {
    S.lastHb[ev.dst] = ev.rt;
    const prev = S.lastHbSent[ev.src];
    if (kind === "hb") {
      const interval = prev && ev.rt - prev.t > 0.002 ? (ev.rt - prev.t) * 1000 : (prev ? prev.interval : 40);
      S.lastHbSent[ev.src] = {t: ev.rt, interval: prev ? prev.interval * 0.8 + Math.min(5000, interval) * 0.2 : interval};
    }
  }
  if (document.hidden) return;
  const key = `${ev.src}>${ev.dst}`;
  const rate = S.links[key] ? S.links[key].messages : 0;
  const throttleKey = `${key}|${kind}|${ev.dropped ? 1 : 0}`;
  const minGap = rate > 60 ? 600 : 90;  // under load: an occasional sample, and the rate label says the rest
  const t = performance.now();
  if (!ev.dropped && S.animThrottle[throttleKey] && t - S.animThrottle[throttleKey] < minGap) return;
  S.animThrottle[throttleKey] = t;
  animateMessage(ev, kind);
}

function animateMessage(ev, kind) {
  const p = posOf(ev.src), q = posOf(ev.dst);
  if (!p || !q) return;
  const layer = $("#msgs");
  if (layer.childNodes.length > 150) return;  // bounded: never a flood of DOM nodes
  const size = kind === "append" ? 5 + Math.min(5, Math.log2(1 + (ev.entries || 0))) : kind === "snap" ? 9 : kind === "hb" ? 3.5 : 5;
  const shape = kind === "vote" ? svg("polygon", {points: `0,${-size} ${size},${size} ${-size},${size}`})
    : kind === "append" || kind === "snap" ? svg("rect", {x: -size, y: -size, width: 2 * size, height: 2 * size})
      : kind === "timeout" ? svg("polygon", {points: `0,${-size} ${size},0 0,${size} ${-size},0`})
        : kind === "forward" ? svg("polygon", {points: `${-size},${-size} ${size},0 ${-size},${size}`})
        : svg("circle", {r: size});
  const response = /Response$/.test(ev.kind);
  shape.setAttribute("class", `msg m-${kind}${response ? " resp" : ""}${ev.dropped ? " dropped" : ""}`);
  const label = S.schema.messages[ev.kind] ? S.schema.messages[ev.kind].label : ev.kind;
  const title = svg("title"); title.textContent = `${label} (${ev.kind}) ${ev.src}→${ev.dst} term ${ev.term}${ev.entries ? `, ${ev.entries} entries` : ""}${ev.dropped ? " (dropped)" : ""}`;
  shape.append(title);
  layer.append(shape);
  const dur = 450 * Math.min(4, Math.max(1, Math.sqrt(S.slowmo.factor || 1)));
  const start = performance.now();
  const end = ev.dropped ? 0.5 : 1;
  const off = response ? 6 : -6;  // requests and responses travel on either side of the link
  const dx = q.x - p.x, dy = q.y - p.y, len = Math.hypot(dx, dy) || 1, nx = (-dy / len) * off, ny = (dx / len) * off;
  const step = (t) => {
    const k = Math.min(1, (t - start) / dur);
    const f = 0.16 + (end - 0.16) * k;
    shape.setAttribute("transform", `translate(${p.x + dx * f + nx},${p.y + dy * f + ny})`);
    if (k < 1) requestAnimationFrame(step);
    else if (ev.dropped) burst(shape, p.x + dx * f + nx, p.y + dy * f + ny);
    else shape.remove();
  };
  requestAnimationFrame(step);
}

function burst(shape, x, y) {
  shape.remove();
  const layer = $("#msgs");
  const g = svg("g", {transform: `translate(${x},${y})`, class: "burst"});
  const c = svg("circle", {r: 3});
  const tx = svg("text", {"text-anchor": "middle", y: 4}); tx.textContent = "✕";
  g.append(c, tx);
  layer.append(g);
  const start = performance.now();
  const step = (t) => {
    const k = Math.min(1, (t - start) / 500);
    c.setAttribute("r", 3 + 14 * k);
    g.setAttribute("opacity", String(1 - k));
    if (k < 1) requestAnimationFrame(step); else g.remove();
  };
  requestAnimationFrame(step);
}

// ------------------------------------------------------------------------- node cards --------

function renderCards() {
  const t = viewTime();
  for (const n of S.nodes) {
    const card = document.querySelector(`[data-node="${n.id}"]`);
    if (!card) continue;
    const st = statusAt(n.id, t);
    const s = st ? st.state : null;
    const cond = nodeCondition(n.id, st);
    const role = s ? s.state : "unknown";
    const member = cond.key === "removed" ? "removed" : memberRole(n, st, t);
    card.dataset.role = cond.grey ? "down" : role;
    card.dataset.member = member;
    card.dataset.term = s ? s.term : "";
    card.dataset.reach = cond.key;
    card.dataset.partitioned = cond.cut ? "true" : "false";
    card.dataset.tickMs = s ? s.tickMs : "";
    card.classList.toggle("grey", cond.grey);
    card.classList.toggle("leader", role === "leader" && !cond.grey);
    card.style.setProperty("--term", termColour(s && s.term));
    card.querySelector(".role-icon").textContent = cond.grey ? "✕" : ({leader: "♛", candidate: "◆", "pre-candidate": "◇", follower: "●"}[role] || "○");
    const roleText = member === "learner" ? `learner (${role})` : role;
    card.querySelector(".role-word").textContent = !s ? "no status yet"
      : cond.grey ? `${cond.key} · last known: ${roleText}, term ${s.term}` : `${roleText} · term ${s.term}`;
    const facts = card.querySelector(".facts");
    if (s) {
      const tick = s.tickMs || 20;
      facts.textContent = `believes leader: ${s.leaderId || "none"} · voted for: ${s.votedFor || "nobody"} · log ${s.logLength}` +
        ` · commit ${s.commitIndex} · applied ${s.lastApplied} · on disk ${s.stableIndex}` +
        (s.snapshotIndex ? ` · snapshot ${s.snapshotIndex}` : "") +
        ` · tick ${tick} ms · election timeout ${s.electionTimeout * tick} ms`;
      facts.dataset.electionTimeoutMs = s.electionTimeout * tick;
    } else facts.textContent = "";
    const r = S.reach[n.id] || {};
    const heard = st ? fmtAgo(st.rt) : "never";
    card.querySelector(".reach").textContent = (cond.text ? cond.text + " · " : "") + `last heard ${S.viewAt == null ? heard : "at " + (st ? fmtTime(st.rt) : "—")}` +
      (r.process && r.process.restarts ? ` · restarts ${r.process.restarts}` : "");
    card.querySelector(".reach").className = "reach " + (cond.grey ? "bad" : cond.cut ? "warn" : "");
    const votes = card.querySelector(".votes");
    if (s && (role === "candidate" || role === "pre-candidate")) {
      const v = Object.entries(s.votes || {});
      votes.textContent = `${role === "pre-candidate" ? "pre-votes" : "votes"}: ` + (v.length ? v.map(([k, g]) => `${k} ${g ? "✓ granted" : "✗ refused"}`).join(", ") : "waiting…");
    } else if (member === "learner") votes.textContent = `learner, does not vote · ${catchUpWords(catchUp(n, t))}`;
    else votes.textContent = "";
    // Supervisor-dependent buttons reflect the process state.
    const proc = r.process;
    const q = (op) => card.querySelector(`[data-op="${op}"]`);
    if (S.supervisor && proc) {
      q("crash").disabled = !proc.running;
      q("pause").disabled = !proc.running || proc.paused;
      q("resume").disabled = !proc.paused;
    }
    q("promote").disabled = member !== "learner";
    q("force-election").disabled = member === "learner";  // a learner never campaigns
    q("remove").disabled = member === "removed" || members().length < 2;
    if (member === "removed") for (const b of card.querySelectorAll(".buttons button")) b.disabled = true;  // nothing left to do
    renderKv(card, n.id, st && st.kv);
  }
}

function renderKv(card, node, kv) {
  // KV contents as this node has applied them: values too long for a status event come as the
  // start of their JSON text and their size, and the whole value is read from the node on demand.
  const whole = Object.entries((kv && kv.items) || {}), truncated = Object.entries((kv && kv.truncated) || {});
  const shown = whole.length + truncated.length;
  card.querySelector(".kv-count").textContent = kv ? `(${kv.count} key${kv.count === 1 ? "" : "s"}${kv.more ? `, first ${shown} shown` : ""})` : "";
  const tbody = card.querySelector("tbody");
  const sig = kv ? JSON.stringify([whole, truncated]) : "";
  if (tbody.dataset.sig === sig) return;  // rebuilt only when the contents change: rows stay put for reading
  tbody.dataset.sig = sig;
  const cells = [...whole.map(([k, v]) => [k, el("td", {text: short(v)})]), ...truncated.map(([k, t]) => [k, truncatedCell(node, k, t)])];
  const rows = cells.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, td]) => el("tr", {"data-key": k}, el("th", {scope: "row", text: k}), td));
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 2, class: "empty", text: kv ? "empty" : "—"}))]));
}

function truncatedCell(node, key, t) {
  return el("td", {class: "truncated"}, `${short(t.head)} `,
    el("button", {type: "button", class: "kv-more", "aria-label": `Show all ${fmtBytes(t.bytes)} of ${key} as ${node} has it`,
      onclick: () => showWholeValue(node, key)}, `${fmtBytes(t.bytes)}: show all`));
}

async function showWholeValue(node, key) {
  // A stale read answers from this node's own copy: the value its card stands for.
  const box = document.querySelector(`[data-node="${node}"] .kv-full`);
  box.hidden = false;
  box.replaceChildren(el("p", {text: `reading ${key} from ${node}…`}));
  const r = await api("/api/kv", {op: "get", key, node, stale: true});
  const close = el("button", {type: "button", class: "kv-close", "aria-label": `Close the value of ${key}`,
    onclick: () => { box.hidden = true; box.replaceChildren(); }}, "✕");
  if (!r || r.status !== 200) {
    const why = r ? `${r.status} ${(r.body && r.body.error) || ""}` : $("#control-msg").textContent;
    box.replaceChildren(el("p", {class: "bad"}, `could not read ${key} from ${node}: ${why} `, close));
    return;
  }
  const v = r.body.value;
  const text = typeof v === "string" ? v : JSON.stringify(v);
  box.replaceChildren(el("p", {}, el("b", {text: key}), ` on ${node}, revision ${r.body.mod_revision} `, close),
    el("pre", {text}));
}

// ------------------------------------------------------------------------- logs --------------

function renderLogs() {
  const t = viewTime();
  const sts = S.nodes.map((n) => ({n, st: statusAt(n.id, t)}));
  const maxIdx = Math.max(0, ...sts.map(({st}) => (st && st.state ? st.state.logLength : 0)));
  const first = Math.max(1, maxIdx - LOG_CELLS + 1);
  const leader = leaderStatusAt(t);
  const progress = {};
  if (leader) for (const p of leader.state.peers || []) progress[p.id] = p;
  const wrap = $("#logs");
  const rows = [];
  const head = el("div", {class: "log-row head"}, el("span", {class: "log-label", text: "index"}));
  for (let i = first; i < first + LOG_CELLS; i++) head.append(el("span", {class: "cell idx", text: String(i)}));
  rows.push(head);
  for (const {n, st} of sts) {
    const s = st && st.state;
    const pr = progress[n.raftId];
    const learner = memberRole(n, st, t) === "learner" ? " (learner)" : "";
    const label = el("span", {class: "log-label"}, el("b", {text: n.id + learner}),
      el("small", {text: s ? (pr ? ` match ${pr.matchIndex} · next ${pr.nextIndex}${pr.lastContact != null ? ` · heard ${pr.lastContact}s` : ""}`
        : s.state === "leader" ? " leader" : "") : " —"}));
    const row = el("div", {class: "log-row", "data-log-node": n.id}, label);
    const terms = S.terms[n.id] || new Map();
    const trunc = S.truncatedAt[n.id];
    for (let i = first; i < first + LOG_CELLS; i++) {
      const cls = ["cell"];
      let title = `${n.id} index ${i}`;
      if (!s || i > s.logLength) { cls.push("none"); row.append(el("span", {class: cls.join(" ")})); continue; }
      const term = terms.get(i);
      if (i <= s.snapshotIndex) { cls.push("snap"); title += ": compacted into the snapshot"; }
      else if (i <= s.commitIndex) { cls.push("committed"); title += ": committed"; }
      else { cls.push("uncommitted"); title += ": not committed yet"; }
      if (i > s.stableIndex) { cls.push("volatile"); title += ", in memory only (not fsynced)"; }
      if (i <= s.lastApplied) { cls.push("applied"); title += ", applied"; }
      if (pr && i === pr.matchIndex) { cls.push("match"); title += ", leader's matchIndex"; }
      if (S.mine && i >= S.mine.from && i <= S.mine.to && now() < S.mine.until) { cls.push("mine"); title += ", your write (or next to it)"; }
      if (trunc && i >= trunc.index && now() - trunc.rt < 5) cls.push("truncated");
      title += term != null ? `, term ${term}` : ", term not observed";
      row.append(el("span", {class: cls.join(" "), style: `--c:${termColour(term)}`, title, text: term != null ? String(term) : "?"}));
    }
    rows.push(row);
  }
  wrap.replaceChildren(...rows);
}

// ------------------------------------------------------------------------- feed --------------

function isFeedEvent(ev) {
  return (ev.type === "trace" && ev.kind !== "commit") || ev.type === "action" || ev.type === "reach" ||
    ev.type === "nodes" || ev.type === "removed" ||
    (ev.type === "safety" && ev.broken) || (ev.type === "tour");
}

function feedText(ev) {
  if (ev.type === "safety") return "SAFETY CHECK BROKEN: " + ev.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.violation}`).join("; ");
  if (ev.type === "tour") return `🎓 ${ev.caption}`;
  return ev.text || `${ev.node} ${ev.kind || ev.type}`;
}

function addFeed(ev, prepend) {
  const feed = $("#feed");
  const li = el("li", {class: `f-${ev.type} ${ev.type === "safety" ? "bad" : ""}`, style: ev.term != null ? `--c:${termColour(ev.term)}` : null},
    el("time", {text: fmtTime(ev.rt)}), " ", feedText(ev));
  if (prepend) feed.prepend(li); else feed.append(li);
  while (feed.childNodes.length > FEED_MAX) feed.lastChild.remove();
}

function renderFeed(full) {
  if (!full) return;
  const feed = $("#feed");
  feed.replaceChildren();
  const t = viewTime();
  const evs = [];
  for (let i = S.history.length - 1; i >= 0 && evs.length < FEED_MAX; i--) {
    const ev = S.history[i];
    if (ev.rt <= t && isFeedEvent(ev)) evs.push(ev);
  }
  for (const ev of evs) addFeed(ev, false);
}

// ------------------------------------------------------------------------- timeline ----------

function renderTimeline() {
  const tl = $("#timeline");
  if (!S.history.length) return;
  const t0 = S.history[0].rt, t1 = Math.max(now(), t0 + 1);
  const X = (t) => ((t - t0) / (t1 - t0)) * 1000;
  const parts = [];
  // Term bands: the highest term any node reported, over time.
  let bandStart = null, bandTerm = null;
  const flush = (tEnd) => { if (bandTerm != null) parts.push(svg("rect", {x: X(bandStart), y: 6, width: Math.max(0.5, X(tEnd) - X(bandStart)), height: 22, fill: termColour(bandTerm)})); };
  for (const ev of S.history) {
    if (ev.type === "status" && ev.state) {
      const term = ev.state.term;
      if (bandTerm == null || term > bandTerm) { flush(ev.rt); bandStart = ev.rt; bandTerm = term; }
    }
  }
  flush(t1);
  let conf = null;  // every node reports each configuration: one mark per change
  for (const ev of S.history) {
    let mark = null;
    const confNow = ev.type === "trace" && ev.kind === "conf" ? JSON.stringify(ev.detail) : null;
    if (confNow && confNow !== conf) { conf = confNow; mark = ["±", "m-conf"]; }
    else if (ev.type === "trace" && ev.kind === "role" && ev.detail && ev.detail.role === "leader") mark = ["♛", "m-lead"];
    else if (ev.type === "action") mark = [{crash: "✕", partition: "✂", heal: "+", kv: "•", restart: "↻", "force-election": "🗳"}[ev.kind] || "|", "m-act"];
    else if (ev.type === "reach" && ev.reach === "unreachable") mark = ["!", "m-reach"];
    else if (ev.type === "safety" && ev.broken) mark = ["⚠", "m-bad"];
    if (mark) { const tx = svg("text", {x: X(ev.rt), y: 50, class: mark[1], "text-anchor": "middle"}); tx.textContent = mark[0]; parts.push(tx); }
  }
  if (S.viewAt != null) parts.push(svg("line", {x1: X(S.viewAt), x2: X(S.viewAt), y1: 0, y2: 70, class: "cursor"}));
  tl.replaceChildren(...parts);
  const scrub = $("#scrub");
  if (S.viewAt == null) scrub.value = 1000;
}

// ------------------------------------------------------------------------- charts ------------

function pushChart(ev) {
  // One point per second: the leader's figures (it commits), and the worst leaderless time.
  const c = S.chart;
  const second = Math.floor(ev.rt);
  if (c.second !== second) {
    c.second = second;
    c.tput.push(0); c.p50.push(null); c.p99.push(null); c.leaderless.push(0);
    for (const k of ["tput", "p50", "p99", "leaderless"]) if (c[k].length > CHART_POINTS) c[k].shift();
  }
  const last = c.tput.length - 1;
  if (ev.isLeader) {
    c.tput[last] = ev.writesPerSecond;
    c.p50[last] = ev.commitP50Ms; c.p99[last] = ev.commitP99Ms;
  }
  c.leaderless[last] = Math.max(c.leaderless[last], ev.leaderlessSeconds || 0);
}

function drawChart(sel, series) {
  const box = $(sel);
  const all = series.flatMap((s) => s.data.filter((v) => v != null));
  const max = Math.max(1e-9, ...all, 0) * 1.15 || 1;
  const W = 300, H = 80;
  const parts = [svg("line", {x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis"})];
  for (const s of series) {
    let d = "";
    s.data.forEach((v, i) => {
      if (v == null) return;
      const x = (i / (CHART_POINTS - 1)) * W, y = H - (v / max) * (H - 12);
      d += (d && s.data[i - 1] != null ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
    });
    parts.push(svg("path", {d, class: "line " + (s.cls || "")}));
  }
  const lastVals = series.map((s) => { const v = [...s.data].reverse().find((x) => x != null); return v == null ? "–" : Number(v).toFixed(v >= 100 ? 0 : 2); });
  const label = svg("text", {x: W - 2, y: 10, "text-anchor": "end", class: "chart-label"});
  label.textContent = `now ${lastVals.join(" / ")} · max ${max === 1e-9 ? 0 : (max / 1.15).toFixed(2)}`;
  parts.push(label);
  box.replaceChildren(...parts);
}

function renderCharts() {
  drawChart("#c-tput", [{data: S.chart.tput}]);
  drawChart("#c-lat", [{data: S.chart.p50}, {data: S.chart.p99, cls: "dashed"}]);
  drawChart("#c-leaderless", [{data: S.chart.leaderless, cls: "warn"}]);
  // The leader's own view of each link: how long since it last heard from that follower.
  const leader = leaderStatusAt(viewTime());
  const contact = {};
  if (leader) for (const p of leader.state.peers || []) contact[`${leader.state.nodeId}>${p.id}`] = p.lastContact;
  const rows = Object.entries(S.links).sort().map(([k, r]) => el("tr", {},
    el("td", {text: k.replace(">", " → ")}), el("td", {text: r.messages}), el("td", {text: r.entries}),
    el("td", {class: r.dropped ? "bad" : "", text: r.dropped}),
    el("td", {text: contact[k] != null ? `${contact[k]} s` : ""})));
  $("#links-table").replaceChildren(el("table", {},
    el("caption", {text: "per link, last half second"}),
    el("thead", {}, el("tr", {}, ...["link", "msg/s", "entries/s", "dropped/s", "leader last heard"].map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...rows)));
}

// ------------------------------------------------------------------------- safety ------------

function renderSafety() {
  const broken = S.safety.filter((c) => !c.ok);
  const pill = $("#safety-pill");
  pill.textContent = broken.length ? `⚠ safety: ${broken.length} check${broken.length > 1 ? "s" : ""} broken` : "✓ safety checks hold";
  pill.className = "pill " + (broken.length ? "bad" : "ok");
  const banner = $("#safety-banner");
  banner.hidden = !broken.length;
  banner.textContent = broken.map((c) => `⚠ ${c.name} BROKEN: ${c.violation}`).join(" · ");
  $("#safety").replaceChildren(...S.safety.map((c) => el("li", {class: c.ok ? "ok" : "bad", "data-check": c.id},
    el("b", {text: `${c.ok ? "✓" : "✗"} ${c.name}`}), el("small", {text: ` — ${c.explain}; ${c.observations} comparisons`}),
    c.ok ? null : el("div", {text: c.violation}))));
  const sm = $("#slowmo-pill");
  sm.hidden = !(S.slowmo.factor > 1 || S.slowmo.busy);
  sm.textContent = S.slowmo.busy ? "🐢 changing speed: restarting nodes…" : `🐢 slow motion ×${S.slowmo.factor}`;
  const b = $("#slowmo");
  b.disabled = !S.slowmo.available || S.slowmo.busy;
  b.textContent = S.slowmo.factor > 1 ? "🐇 Normal speed" : "🐢 Slow motion ×10";
  b.setAttribute("aria-pressed", String(S.slowmo.factor > 1));
  $("#slowmo-why").textContent = S.slowmo.available ? "(restarts each node with a 10× longer tick, one at a time)" : `Unavailable: ${S.slowmo.why || ""}`;
}

// ------------------------------------------------------------------------- panels ------------

function renderLoad(ev) {
  const errs = Object.entries(ev.errors || {}).map(([k, v]) => `${k}×${v}`).join(" ");
  $("#load-out").textContent = `${ev.running ? "running" : "finished"}: ${ev.ok} writes ok in ${ev.elapsed} s · ` +
    `${ev.throughput}/s · p50 ${ev.p50Ms ?? "–"} ms · p99 ${ev.p99Ms ?? "–"} ms${errs ? " · errors " + errs : ""}`;
}

function renderTour(ev) {
  for (const sel of ["#tour-caption", "#ring-caption"]) {  // the caption also sits right under the ring
    const box = $(sel);
    box.className = "caption " + ev.state;
    box.replaceChildren(el("b", {text: `${ev.title} — step ${ev.step}: `}), ev.caption);
  }
  const ring = $("#ring-caption");
  ring.hidden = false;
  clearTimeout(S.captionTimer);
  if (ev.state !== "running") S.captionTimer = setTimeout(() => { ring.hidden = true; }, 8000);
}

function renderMiniFeed() {
  // The last few events in plain words, right under the ring, so cause and effect are seen together.
  const t = viewTime();
  const out = [];
  for (let i = S.history.length - 1; i >= 0 && out.length < 7; i--) {
    const ev = S.history[i];
    if (ev.rt <= t && isFeedEvent(ev) && ev.type !== "tour") out.push(ev);
  }
  const sig = out.map((e) => e.seq).join(",");
  const box = $("#mini-feed");
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  box.replaceChildren(...out.map((ev) => el("li", {class: `f-${ev.type}`, style: ev.term != null ? `--c:${termColour(ev.term)}` : null},
    el("time", {text: fmtTime(ev.rt)}), " ", feedText(ev))));
}

function renderAll() {
  renderRing();
  renderCards();
  renderLogs();
  renderSafety();
  renderCharts();
  renderTimeline();
  const v = $("#view-at");
  v.textContent = S.viewAt == null ? (S.paused ? "paused" : "live") : `viewing ${fmtTime(S.viewAt)} — events keep recording`;
}

// ------------------------------------------------------------------------- actions -----------

async function api(path, body, method = "POST") {
  const msg = $("#control-msg");
  msg.className = "msg";
  msg.textContent = "…";
  try {
    const r = await fetch(path, {method, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {})});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { msg.className = "msg bad"; msg.textContent = `${r.status}: ${data.error || r.statusText}`; return null; }
    msg.textContent = "done";
    return data;
  } catch (e) {
    msg.className = "msg bad";
    msg.textContent = `the dashboard server did not answer: ${e}`;
    return null;
  }
}

function nodeAction(id, op) { return api(`/api/nodes/${encodeURIComponent(id)}/${op}`); }

function removeNode(id) {
  $("#control-msg").textContent = `removing ${id}…`;
  return api(`/api/members/${encodeURIComponent(id)}`, null, "DELETE");
}

async function addNode() {
  const promote = $("#add-promote").checked;
  const button = $("#add-node");
  button.disabled = true;
  try {
    const r = await api("/api/members", {promote});
    if (r) $("#control-msg").textContent = `${r.node} joined as a ${r.role}`;
  } finally { button.disabled = !(S.features.addNode || {}).available; }
}

function parseValue(text) { try { return JSON.parse(text); } catch { return text; } }

function wire() {
  $("#heal").addEventListener("click", () => api("/api/heal"));
  $("#add-node").addEventListener("click", addNode);
  $("#split").addEventListener("click", () => {
    const a = [...document.querySelectorAll("#split-boxes input:checked")].map((i) => i.value);
    const b = members().map((n) => n.id).filter((x) => !a.includes(x));
    api("/api/split", {groups: [a, b].filter((g) => g.length)});
  });
  $("#cut").addEventListener("click", () => api("/api/cut", {src: $("#cut-src").value, dst: $("#cut-dst").value}));
  $("#link-apply").addEventListener("click", () => api("/api/link-quality", {node: $("#cut-src").value,
    loss_percent: Number($("#link-loss").value), delay_ms: Number($("#link-delay").value)}));
  $("#slowmo").addEventListener("click", () => {
    S.slowmo.busy = true; renderSafety();
    api("/api/slowmo", {factor: S.slowmo.factor > 1 ? 1 : 10});
  });
  $("#load-start").addEventListener("click", () => api("/api/load", {writers: Number($("#load-writers").value), seconds: Number($("#load-seconds").value)}));
  $("#load-stop").addEventListener("click", () => api("/api/load/stop"));
  $("#tour-run").addEventListener("click", () => api("/api/tour", {demo: $("#tour-demo").value}));
  $("#tour-stop").addEventListener("click", () => api("/api/tour/stop"));
  const op = $("#kv-op");
  const syncOp = () => {
    for (const c of document.querySelectorAll(".cas-only")) c.hidden = op.value !== "cas";
    $("#kv-value").disabled = op.value === "get" || op.value === "delete";
  };
  op.addEventListener("change", syncOp); syncOp();
  $("#kv-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {op: op.value, key: $("#kv-key").value, node: $("#kv-node").value || null};
    if (op.value === "put" || op.value === "cas") body.value = parseValue($("#kv-value").value);
    if (op.value === "cas") {
      if ($("#kv-prev-value").value !== "") body.prev_value = parseValue($("#kv-prev-value").value);
      if ($("#kv-prev-rev").value !== "") body.prev_revision = Number($("#kv-prev-rev").value);
      if (body.prev_value === undefined && body.prev_revision === undefined) body.prev_exist = false;
    }
    const out = $("#kv-result");
    out.textContent = "…";
    const leaderLen = () => {
      const st = leaderStatusAt(now());
      return st ? st.state.logLength : null;
    };
    const before = leaderLen();
    const r = await api("/api/kv", body);
    if (r && r.status < 300 && before != null && op.value !== "get") {
      // The write went into the leader's log after index `before`: mark those cells in every node's
      // row for a while, so the entry can be followed from striped (appended) to solid (committed).
      const after = leaderLen();
      S.mine = {from: before + 1, to: Math.min(before + 4, Math.max(before + 1, after || 0)), until: now() + 20};
    }
    if (!r) { out.textContent = $("#control-msg").textContent; out.className = "kv-result bad"; return; }
    const b = r.body || {};
    out.className = "kv-result " + (r.status < 300 ? "ok" : "bad");
    out.dataset.status = r.status;
    out.textContent = `${r.op.toUpperCase()} ${r.key} → ${r.status}` +
      (r.op === "get" && r.status === 200 ? ` value ${short(b.value)}` : "") +
      (r.revision != null ? ` · revision ${r.revision}` : "") +
      ` · asked ${r.askedNode}` + (r.servedBy ? ` · served by ${r.servedBy}` : "") +
      (r.forwardedBy ? ` (forwarded by ${r.forwardedBy})` : "") + ` · ${r.ms} ms` +
      (r.status >= 400 && b.error ? ` · ${b.error}` : "");
  });
  $("#pause").addEventListener("click", () => {
    if (S.paused) goLive(); else { S.paused = true; S.viewAt = now(); $("#pause").setAttribute("aria-pressed", "true"); renderFeed(true); renderAll(); }
  });
  $("#live").addEventListener("click", goLive);
  $("#scrub").addEventListener("input", (e) => {
    if (!S.history.length) return;
    const t0 = S.history[0].rt, t1 = now();
    S.paused = true;
    $("#pause").setAttribute("aria-pressed", "true");
    S.viewAt = t0 + ((t1 - t0) * Number(e.target.value)) / 1000;
    renderFeed(true);
    renderAll();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea")) return;
    if (e.key === "p") $("#pause").click();
  });
}

function goLive() {
  S.paused = false; S.viewAt = null;
  $("#pause").setAttribute("aria-pressed", "false");
  renderFeed(true);
  renderAll();
}

// ------------------------------------------------------------------------- loops -------------

function frame() {
  renderRing();
  requestAnimationFrame(frame);
}

wire();
connect();
setInterval(() => { if (S.nodes.length) { renderCards(); renderLogs(); renderSafety(); renderCharts(); renderMiniFeed(); } }, 250);
setInterval(() => { if (S.nodes.length) { renderTimeline(); const v = $("#view-at"); if (S.viewAt == null) v.textContent = S.paused ? "paused" : "live"; } }, 1000);
requestAnimationFrame(frame);
