// The log table: each node's real log, as the node served it (GET /raft/log, read by the server
// whenever the log moved), never an inferred term. A cell is one index: its term (number and pale
// colour), committed (solid) or not (striped), applied (dot), on disk or not (dashed border), a
// new leader's no-op or a membership change, compacted into the snapshot (hatched). Columns line
// up by index across nodes, so equal committed indexes can be seen to hold equal terms.
//
// Each row says how old its picture is; a node that stopped answering keeps its last known log,
// drawn stale. Entries a node dropped (a conflicting suffix truncated, unsynced entries lost in a
// crash) stay visible for a while, struck through, beside what replaced them. The current leader's
// match and next index for each follower are marked, and only while the leader answers.

import {S, isLive, leaderViewAt, logAt, memberRole, nodeCondition, nodeView, now, viewTime} from "./state.js";
import {$, el, fmtAge, fmtTime, setAttr, setText, termColour} from "./dom.js";

const CELL_PX = 26;
const LABEL_PX = 170;
const MIN_CELLS = 8, MAX_CELLS = 40;
const INDEX_LABEL_EVERY = 5;
const STALE_AFTER_S = 2.5;  // a row whose node has said nothing for this long is drawn stale
const REPLACED_SHOW_S = 60;
const FRESH_S = 3;  // a replacement this recent is animated

let built = {cells: 0, nodes: "", labelPx: 0};

// The table's width, kept by a ResizeObserver: reading clientWidth while drawing would force the
// browser to lay the page out again on every redraw.
let tableWidth = 0;
new ResizeObserver((entries) => { tableWidth = entries[0].contentRect.width; }).observe(document.getElementById("logs"));

function layout() {
  const width = tableWidth || 600;
  const labelPx = Math.min(LABEL_PX, Math.floor(width * 0.3));  // a phone keeps room for cells
  return {labelPx, cells: Math.max(MIN_CELLS, Math.min(MAX_CELLS, Math.floor((width - labelPx) / CELL_PX)))};
}

function build({cells, labelPx}) {
  const row = (cls, label, attrs = {}) => el("div", {class: `log-row ${cls}`, ...attrs,
    style: `grid-template-columns: ${labelPx}px repeat(${cells}, minmax(0, 1fr))`}, label,
  ...[...Array(cells)].map(() => el("span", {class: "cell"})));
  $("#logs").replaceChildren(row("head", el("span", {class: "log-label", text: "index"})),
    ...S.nodes.map((n) => row("", el("span", {class: "log-label"}, el("b", {text: n.id}), el("small")),
      {"data-log-node": n.id})));
  built = {cells, labelPx, nodes: S.nodes.map((n) => n.id).join(",")};
}

export function renderLogs() {
  const shape = layout(), cells = shape.cells;
  if (cells !== built.cells || shape.labelPx !== built.labelPx || built.nodes !== S.nodes.map((n) => n.id).join(",")) {
    build(shape);
  }
  const t = viewTime();
  const reads = Object.fromEntries(S.nodes.map((n) => [n.id, logAt(n.id, t)]));
  const last = Math.max(0, ...Object.values(reads).filter(Boolean).map((r) => r.log.lastIndex));
  const first = Math.max(1, last - cells + 1);
  const heads = $("#logs .log-row.head").querySelectorAll(".cell");
  // Every INDEX_LABEL_EVERY-th index is written out (a four-digit index is wider than a cell), and
  // the first one when the next label is far enough not to overlap it.
  heads.forEach((c, k) => {
    const i = first + k;
    const labelled = i % INDEX_LABEL_EVERY === 0 || (k === 0 && INDEX_LABEL_EVERY - (i % INDEX_LABEL_EVERY) >= 3);
    setText(c, labelled ? String(i) : "");
    setAttr(c, "class", "cell idx");
    setAttr(c, "title", `index ${i}`);
  });
  const leader = liveLeader(t);
  for (const n of S.nodes) {
    const row = document.querySelector(`[data-log-node="${n.id}"]`);
    if (row) renderRow(row, n, reads[n.id], first, t, leader);
  }
}

// The leader's progress, only while it is a leader that answers (a crashed one's is stale).
function liveLeader(t) {
  const v = leaderViewAt(t);
  if (!v) return null;
  const node = S.nodes.find((n) => n.raftId === v.state.nodeId);
  if (!node || nodeCondition(node.id, v).grey || t - (v.statusRt || v.rt) > STALE_AFTER_S) return null;
  return {id: node.id, peers: Object.fromEntries((v.state.peers || []).map((p) => [p.id, p]))};
}

function renderRow(row, n, read, first, t, leader) {
  const view = nodeView(n.id, t);
  const cond = nodeCondition(n.id, view);
  const heardAge = view ? t - (view.statusRt || view.rt) : Infinity;
  const stale = !read || cond.grey || heardAge > STALE_AFTER_S;
  setAttr(row, "class", `log-row${stale ? " stale" : ""}`);
  setAttr(row, "data-stale", stale ? "true" : "false");
  const log = read && read.log;
  const progress = leader && leader.id !== n.id ? leader.peers[n.raftId] : null;
  const words = rowWords(n, view, log, read, cond, stale, progress, t);
  setText(row.querySelector(".log-label small"), words);
  setAttr(row.querySelector(".log-label"), "title", `${n.id}${words}`);
  const entries = new Map(((log && log.entries) || []).map((e) => [e.index, e]));
  const replaced = recentReplacements(n.id, t);
  row.querySelectorAll(".cell").forEach((c, k) => renderCell(c, first + k, log, entries, replaced, progress, t));
}

function rowWords(n, view, log, read, cond, stale, progress, t) {
  const learner = memberRole(n, view, t) === "learner" ? " learner" : "";
  if (!log) return `${learner} no log read yet`;
  const age = isLive() ? `read ${fmtAge(Math.max(0, now() - read.rt))} ago` : `read at ${fmtTime(read.rt)}`;
  const where = progress ? ` · leader's match ${progress.matchIndex}, next ${progress.nextIndex}` : "";
  const down = cond.grey ? ` · ${cond.key}: its last known log` : stale ? " · stale" : "";
  const snap = log.snapshotIndex ? ` · snapshot ${log.snapshotIndex}` : "";  // its hatched cells may lie left of the table
  return `${learner} last ${log.lastIndex} · commit ${log.commitIndex}${snap}${where} · ${age}${down}`;
}

function recentReplacements(node, t) {
  const out = new Map();
  for (const r of S.replaced[node] || []) {
    if (r.rt <= t && t - r.rt < REPLACED_SHOW_S) out.set(r.index, r);
  }
  return out;
}

function renderCell(c, i, log, entries, replaced, progress, t) {
  const e = entries.get(i);
  const r = replaced.get(i);
  const cls = ["cell"];
  let text = "", title = `index ${i}`, term = null;
  if (!log || i > log.lastIndex) {
    cls.push(r ? "dropped" : "none");
    if (r) { text = String(r.oldTerm); title += `: dropped (was term ${r.oldTerm}: ${r.oldSummary})`; }
  } else if (i < log.firstIndex) {
    cls.push("snap");
    title += `: compacted into the snapshot at index ${log.snapshotIndex}`;
  } else if (!e) {
    cls.push("unread");
    title += ": not in the part of the log that was read";
  } else {
    term = e.term;
    text = String(e.term);
    cls.push(e.committed ? "committed" : "uncommitted", `kind-${e.kind}`);
    if (e.applied) cls.push("applied");
    if (!e.onDisk) cls.push("volatile");
    title += ` · term ${e.term} · ${e.summary} · ${e.committed ? "committed" : "not committed yet"}` +
      `${e.applied ? ", applied" : ""}${e.onDisk ? "" : ", in memory only (not on disk yet)"}`;
    if (r && r.newTerm === e.term) {
      cls.push("replaced");
      if (t - r.rt < FRESH_S) cls.push("fresh");
      title += ` · replaced an entry of term ${r.oldTerm} (${r.oldSummary}) that conflicted with the leader's log`;
    }
  }
  if (progress && i === progress.matchIndex) { cls.push("match"); title += " · the leader's match index for it"; }
  if (progress && i === progress.nextIndex) { cls.push("next"); title += " · the next index the leader sends it"; }
  if (S.mine && i >= S.mine.from && i <= S.mine.to && now() < S.mine.until) { cls.push("mine"); title += " · your write"; }
  const sig = `${cls.join(" ")}|${text}|${title}`;
  if (c._sig === sig) return;
  c._sig = sig;
  c.className = cls.join(" ");
  c.title = title;
  c.dataset.index = i;
  c.dataset.term = term == null ? "" : term;
  c.dataset.committed = cls.includes("committed") ? "true" : "false";
  c.dataset.oldTerm = r ? r.oldTerm : "";
  c.style.setProperty("--c", termColour(term));
  c.replaceChildren();
  if (r && (cls.includes("replaced") || cls.includes("dropped"))) {
    c.append(el("s", {class: "old", text: String(r.oldTerm)}));
    if (cls.includes("replaced")) c.append(el("span", {class: "new", text}));
  } else c.textContent = text;
}
