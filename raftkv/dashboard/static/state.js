// The page's state, and what the cluster looked like at a time T.
//
// Every event the server recorded is kept in `history` (oldest first), bounded in count and in
// bytes like the server's own record. Alongside, per node, the statuses, role changes and log
// reads, in time order, so that "node X at time T" is a binary search. T is now (live) or a moment
// in the past (paused, scrubbed, replaying, or a loaded trace file): everything drawn comes from
// these, so a past view is drawn exactly like a live one.

export const HISTORY_MAX_EVENTS = 40000;
export const HISTORY_MAX_BYTES = 16 * 1024 * 1024;  // as JSON text: objects take a few times that
const ENCODED_BYTES = Symbol("encoded bytes");  // on each kept event: its size as JSON text

export const S = {
  nodes: [],            // [{id, url, raftId, removed}]
  features: {},
  schema: {messages: {}, glyphs: {}, families: {}, events: {}},
  supervisor: false,
  history: [],
  historyBytes: 0,
  statuses: {},         // id -> [{rt, state, kv, recorded}]: the recorded ones, then the newest if it was not
  roles: {},            // id -> [{rt, role, term, leader}]: role changes (they arrive before the next status)
  logs: {},             // id -> [{rt, log, recorded}]: true log reads, like statuses
  replaced: {},         // id -> [{rt, index, oldTerm, oldSummary, newTerm}]
  reach: {},
  links: {},
  safety: [],
  slowmo: {factor: 1, available: false},
  lab: {available: false, active: false, queue: [], held: 0, rates: []},
  sampling: {everyS: 0.1, kept: 0, skipped: 0},
  metrics: {},
  tour: {steps: [], viewing: null, last: null},
  viewAt: null,         // null: live; else a time (seconds) in the past
  file: null,           // {name, from, to} while a loaded trace file is shown
  serverSkew: 0,
};

export const now = () => Date.now() / 1000 + S.serverSkew;
export const isLive = () => S.viewAt == null && !S.file;
export const viewTime = () => (S.viewAt == null ? now() : S.viewAt);
export const members = () => S.nodes.filter((n) => !n.removed);
export const nodeByRaftId = (raftId) => S.nodes.find((n) => n.raftId === raftId || n.id === raftId) || null;
export const nameOf = (raftId) => (nodeByRaftId(raftId) || {id: raftId}).id;

export function resetHistory() {
  S.history = [];
  S.historyBytes = 0;
  S.statuses = {};
  S.roles = {};
  S.logs = {};
  S.replaced = {};
  S.tour = {steps: [], viewing: null, last: null};
}

export function remember(ev) {
  ev[ENCODED_BYTES] = JSON.stringify(ev).length;
  S.history.push(ev);
  S.historyBytes += ev[ENCODED_BYTES];
  if (S.history.length > HISTORY_MAX_EVENTS || S.historyBytes > HISTORY_MAX_BYTES) forgetOldest();
}

function forgetOldest() {
  // Down to 90% of both bounds at once, so a busy cluster does not cost a copy of the history per event.
  let drop = 0;
  while (drop < S.history.length && (S.history.length - drop > 0.9 * HISTORY_MAX_EVENTS ||
                                     S.historyBytes > 0.9 * HISTORY_MAX_BYTES)) {
    S.historyBytes -= S.history[drop][ENCODED_BYTES];
    drop++;
  }
  S.history.splice(0, drop);
  // Per-node records older than the history go with it, except each node's newest: the view needs one.
  const oldest = S.history.length ? S.history[0].rt : Infinity;
  for (const table of [S.statuses, S.roles, S.logs, S.replaced]) {
    for (const arr of Object.values(table)) {
      let old = 0;
      while (old < arr.length - 1 && arr[old].rt < oldest) old++;
      arr.splice(0, old);
    }
  }
}

// Append a record to a node's time-ordered list; an unrecorded one only stands in until the next.
export function keepLatest(table, node, record) {
  const arr = table[node] || (table[node] = []);
  if (arr.length && arr[arr.length - 1].recorded === false) arr.pop();
  arr.push(record);
}

export function at(arr, t) {
  // The last record at or before t (binary search: records are in time order).
  if (!arr || !arr.length) return null;
  if (S.viewAt == null && !S.file) return arr[arr.length - 1];
  let lo = 0, hi = arr.length - 1, found = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (arr[mid].rt <= t) { found = arr[mid]; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

export const statusAt = (id, t) => at(S.statuses[id], t);
export const logAt = (id, t) => at(S.logs[id], t);

// A node as it was at t: its status, with a role change that came after that status applied to
// it (a role change is reported at once; the next status comes up to a quarter second later).
export function nodeView(id, t) {
  const st = statusAt(id, t);
  const role = at(S.roles[id], t);
  if (!role || (st && role.rt <= st.rt)) return st;
  const base = st ? st.state : {};
  return {rt: role.rt, kv: st && st.kv, statusRt: st ? st.rt : null,
    state: {...base, state: role.role, term: role.term, leaderId: role.leader,
      votes: role.role === base.state && role.term === base.term ? base.votes : {}}};
}

// The view of the node that believed itself leader at t, with the highest term (null when none).
export function leaderViewAt(t) {
  let best = null;
  for (const n of members()) {
    const v = nodeView(n.id, t);
    if (v && v.state && v.state.state === "leader" && (!best || v.state.term > best.state.term)) best = v;
  }
  return best;
}

// Voter or learner, as the leader's configuration says (the node's own when no leader is known).
export function memberRole(n, view, t) {
  const leader = leaderViewAt(t);
  const conf = leader ? leader.state : view && view.state;
  if (!conf || !conf.learners) return "voter";
  return conf.learners.includes(n.raftId) ? "learner" : "voter";
}

// How far a learner has come: the leader's match index for it against the leader's last index.
export function catchUp(n, t) {
  const leader = leaderViewAt(t);
  if (!leader) return null;
  const p = (leader.state.peers || []).find((x) => x.id === n.raftId);
  if (!p || p.matchIndex == null) return null;
  return {match: p.matchIndex, last: leader.state.logLength, snapshot: p.state === "snapshot"};
}

export function catchUpWords(c) {
  if (!c) return "waiting to hear from the leader";
  if (c.snapshot) return "receiving a snapshot";
  return c.match >= c.last ? `caught up (${c.match} of ${c.last})` : `catching up: ${c.match} of ${c.last}`;
}

// What the dashboard can say about a node, most serious first.
export function nodeCondition(id, view) {
  const r = S.reach[id] || {};
  const proc = r.process;
  const node = S.nodes.find((n) => n.id === id);
  const removed = (view && view.state && view.state.removed) || (node && node.removed);
  if (removed) {
    return {key: "removed", text: `removed from the cluster${typeof removed === "string" ? `: ${removed}` : ""}`,
      grey: true};
  }
  if (isLive()) {
    if (proc && !proc.running) return {key: "crashed", text: `crashed (exit ${proc.exitCode})`, grey: true};
    if (proc && proc.paused) return {key: "paused", text: "paused (SIGSTOP): not answering", grey: true};
    if (r.reach === "unreachable") {
      return {key: "unreachable", text: `dashboard cannot reach node: ${r.error || "no connection"}`, grey: true};
    }
    if (r.reach === "silent") return {key: "silent", text: "dashboard cannot reach node: connected but silent", grey: true};
  }
  const f = (view && view.state && view.state.faults) || {};
  if (f.isolated) return {key: "partitioned", text: "node reports: partitioned from all peers", cut: true};
  if (f.partitioned && f.partitioned.length) {
    return {key: "partitioned", text: `node reports: partitioned from ${f.partitioned.map(nameOf).join(", ")}`, cut: true};
  }
  return {key: "ok", text: "", grey: false};
}
