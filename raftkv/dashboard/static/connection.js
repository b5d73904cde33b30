// The page's one connection to the dashboard server (a WebSocket on /ws), and what each event does
// to the page's state. The server first sends a `hello` (nodes, features, schema, recent events),
// then batches of events as they happen. A trace file loaded from disk goes through the same
// `ingest`, so a past cluster is drawn exactly like the live one.

import {S, keepLatest, remember, resetHistory} from "./state.js";
import {$, setText} from "./dom.js";
import {invalidate, invalidateAll} from "./render.js";
import {onLiveMessage} from "./messages.js";
import {noteTour} from "./tour.js";
import {noteCoordination} from "./coordination.js";
import {pushChart, resetCharts} from "./charts.js";
import {noteFeedEvent} from "./feed.js";
import {renderLoad} from "./actions.js";
import {rebuild} from "./build.js";
import {noteTraceHello, noteTraces} from "./traces.js";

const RECONNECT_MAX_MS = 4000;
let socket = null;
let mayReconnect = null;  // asked before reconnecting whether this person may still see the stream

export function onStreamClosed(fn) { mayReconnect = fn; }

export function connect(delay = 250) {
  if (socket) { socket.onclose = null; socket.close(); }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  socket = ws;
  ws.onopen = () => setConn("connected", "ok");
  ws.onmessage = (m) => {
    if (S.file) return;  // a loaded trace is on show: the live events wait for "Back to live"
    const msg = JSON.parse(m.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "batch") for (const ev of msg.events) ingest(ev, true);
  };
  ws.onclose = async (e) => {
    setConn(e.reason ? `${e.reason}` : "dashboard server disconnected: reconnecting…", "bad");
    if (mayReconnect && !(await mayReconnect(e))) return;
    setTimeout(() => connect(Math.min(delay * 2, RECONNECT_MAX_MS)), delay);
  };
}

// A trace file is shown instead of the live cluster: the live connection stops until the page
// goes back to live (which reconnects, and the new hello brings the live history back).
export function loadTrace(header, events) {
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  setConn("showing a trace file", "");
  start({nodes: header ? header.nodes : nodesSeen(events), schema: header && header.schema,
    sampling: header && header.sampling, features: S.features, supervisor: S.supervisor, now: Date.now() / 1000});
  S.serverSkew = 0;
  for (const ev of events) ingest(ev, false);
  invalidateAll();
}

function nodesSeen(events) {
  const ids = [...new Set(events.map((e) => e.via || e.node).filter(Boolean))].sort();
  return ids.map((id) => ({id, raftId: id, url: ""}));
}

function setConn(text, cls) {
  const c = $("#conn");
  setText(c, text);
  c.className = `pill ${cls}`;
}

function onHello(h) {
  start(h);
  for (const ev of h.events || []) ingest(ev, false);
  invalidateAll();
}

export function start(h) {
  S.serverSkew = h.now - Date.now() / 1000;
  S.nodes = h.nodes || [];
  S.features = h.features || S.features;
  S.schema = h.schema || S.schema;
  S.supervisor = !!h.supervisor;
  if (h.slowmo) S.slowmo = h.slowmo;
  if (h.lab) S.lab = h.lab;
  if (h.sampling) S.sampling = h.sampling;
  S.safety = h.safety || [];
  S.reach = h.reach || {};
  S.links = {};
  noteTraceHello(h);
  resetHistory();
  resetCharts();
  rebuild();
}

// One event from the server (live) or from the recorded past (the hello, a loaded file).
export function ingest(ev, live) {
  if (ev.recorded !== false && ev.type !== "tick") remember(ev);
  const node = ev.via || ev.node;
  switch (ev.type) {
    case "status":
      if (live) noteRaftId(node, ev.state);
      keepLatest(S.statuses, node, {rt: ev.rt, state: ev.state, kv: ev.kv, recorded: ev.recorded !== false});
      invalidate("ring", "cards", "logs");
      break;
    case "trace":
      if (ev.kind === "role" && ev.detail) {
        const roles = S.roles[node] || (S.roles[node] = []);
        roles.push({rt: ev.rt, role: ev.detail.role, term: ev.term, leader: ev.detail.leader});
        invalidate("ring", "cards");
      }
      break;
    case "log":
      keepLatest(S.logs, ev.node, {rt: ev.rt, log: ev, recorded: ev.recorded !== false});
      for (const r of ev.replaced || []) (S.replaced[ev.node] || (S.replaced[ev.node] = [])).push({rt: ev.rt, ...r});
      invalidate("logs");
      break;
    case "msg":
      if (live) onLiveMessage(ev);
      break;
    case "tick":
      S.reach = ev.reach || S.reach;
      S.links = ev.links || {};
      S.safety = ev.safety || S.safety;
      if (ev.slowmo) S.slowmo = ev.slowmo;
      if (ev.sampling) S.sampling = ev.sampling;
      invalidate("ring", "cards", "header", "charts", "timeline");
      break;
    case "safety":
      S.safety = ev.checks;
      invalidate("header");
      break;
    case "lab":
      if (live && !ev.via) S.lab = ev;  // the dashboard's lab (a node's own lab report carries `via`)
      invalidate("lab", "ring", "cards", "header");
      break;
    case "metrics":
      S.metrics[node] = ev;
      if (live) pushChart(ev);
      invalidate("charts");
      break;
    case "load":
      if (live) renderLoad(ev);
      break;
    case "tour":
      noteTour(ev);
      invalidate("tour");
      break;
    case "coordination":
    case "watch":
      noteCoordination(ev);
      break;
    case "nodes":
      if (live) applyNodes(ev.nodes);
      break;
    case "traces":
      if (live) noteTraces(ev);
      break;
  }
  if (noteFeedEvent(ev)) invalidate("feed", "timeline");
}

function applyNodes(nodes) {
  // Rebuilt only when the set (or a node's id, or its being removed) changed: cards keep their state.
  const sig = (ns) => ns.map((n) => `${n.id}|${n.raftId}|${n.removed}`).join(",");
  const changed = sig(nodes) !== sig(S.nodes);
  S.nodes = nodes;
  if (changed) { rebuild(); invalidateAll(); }
}

function noteRaftId(node, st) {
  // A node watched before the cluster gave it its id learns it from its first status.
  const n = S.nodes.find((x) => x.id === node);
  if (n && st && st.nodeId && n.raftId !== st.nodeId) applyNodes(S.nodes.map((x) => (x === n ? {...x, raftId: st.nodeId} : x)));
}
