// The timeline over the recorded history: a band per term (the highest term any node reported),
// and marks for what happened (a leader elected, a configuration change, a person's action, a node
// lost, a safety check broken). Marks of one kind that fall within one slot of the width are drawn
// once, with how many they stand for, so a busy minute reads as a mark with a count, not a clump.
// Redrawn at most once a second: it is an overview.

import {S, isLive, now, viewTime} from "./state.js";
import {$, svg, termColour} from "./dom.js";

const WIDTH = 1000;
const SLOTS = 100;
const REDRAW_GAP_MS = 1000;
let drawnAt = 0;

const FOLDED = new Set(["leader", "action", "reach"]);  // the frequent kinds; each conf change and broken check stays one mark
const MARKS = {  // kind -> [row y, shape, css class, words]
  leader: [40, "M0,-5L4.3,-2.5L4.3,2.5L0,5L-4.3,2.5L-4.3,-2.5Z", "m-lead", "a leader elected"],
  conf: [40, "M-5,-1H5V1H-5ZM-1,-5H1V5H-1Z", "m-conf", "a configuration change"],
  action: [56, "M-1,-6H1V6H-1Z", "m-act", "something done from the page"],
  reach: [56, "M0,-5L5,5H-5Z", "m-reach", "a node became unreachable"],
  safety: [56, "M-5,-5H5V5H-5Z", "m-bad", "a safety check broke"],
};

function markOf(ev, seen) {
  if (ev.type === "trace" && ev.kind === "conf") {
    const conf = JSON.stringify(ev.detail);
    if (conf === seen.conf) return null;  // every node reports each configuration: one mark per change
    seen.conf = conf;
    return "conf";
  }
  if (ev.type === "trace" && ev.kind === "role" && ev.detail && ev.detail.role === "leader") return "leader";
  if (ev.type === "action") return "action";
  if (ev.type === "reach" && ev.reach === "unreachable") return "reach";
  if (ev.type === "safety" && ev.broken) return "safety";
  return null;
}

export function renderTimeline(force = false) {
  if (!force && performance.now() - drawnAt < REDRAW_GAP_MS) return;
  drawnAt = performance.now();
  const tl = $("#timeline");
  if (!S.history.length) { tl.replaceChildren(); return; }
  const t0 = S.history[0].rt, t1 = S.file ? S.file.to : Math.max(now(), t0 + 1);
  const X = (t) => ((t - t0) / Math.max(1e-3, t1 - t0)) * WIDTH;
  const parts = [];
  let bandStart = null, bandTerm = null;
  const band = (tEnd) => {
    if (bandTerm == null) return;
    const r = svg("rect", {x: X(bandStart), y: 4, width: Math.max(0.5, X(tEnd) - X(bandStart)), height: 24,
      fill: termColour(bandTerm), class: "band"});
    r.append(Object.assign(svg("title"), {textContent: `term ${bandTerm}`}));
    parts.push(r);
  };
  const slots = new Map(), seen = {conf: null};
  for (const ev of S.history) {
    if (ev.type === "status" && ev.state && (bandTerm == null || ev.state.term > bandTerm)) {
      band(ev.rt);
      bandStart = ev.rt;
      bandTerm = ev.state.term;
    }
    const kind = markOf(ev, seen);
    if (!kind) continue;
    const key = FOLDED.has(kind) ? `${kind}|${Math.floor((X(ev.rt) / WIDTH) * SLOTS)}` : `${kind}|${ev.seq}`;
    const slot = slots.get(key);
    if (slot) { slot.count++; slot.last = ev; } else slots.set(key, {kind, first: ev, last: ev, count: 1});
  }
  band(t1);
  for (const {kind, first, last, count} of slots.values()) {
    const [y, d, cls, words] = MARKS[kind];
    const g = svg("g", {transform: `translate(${X(first.rt).toFixed(1)},${y})`, class: `mark ${cls}`});
    g.append(svg("path", {d}));
    const what = count > 1 ? `${count}× ${words}` : (last.text || words);
    g.append(Object.assign(svg("title"), {textContent: what}));
    parts.push(g);
    if (count > 1) {
      const c = svg("text", {x: X(first.rt) + 6, y: y + 4, class: `mark-count ${cls}`});
      c.textContent = String(count);
      parts.push(c);
    }
  }
  if (!isLive()) {
    const x = X(viewTime());
    parts.push(svg("line", {x1: x, x2: x, y1: 0, y2: 70, class: "cursor"}));
  }
  tl.replaceChildren(...parts);
}
