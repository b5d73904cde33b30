// Messages travelling between the nodes on the ring.
//
// Each glyph is a small HTML element over the ring, moved by a CSS transform animation (the Web
// Animations API): the browser runs those on its compositor, so a steady stream of heartbeats does
// not keep the main thread busy. Adding or removing a glyph still costs the main thread a frame
// (style, paint, layers), so glyphs start, and finished ones leave, with the page's next redraw
// (render.js, at most RENDER_GAP_MS later) rather than each in a frame of its own; a glyph fades
// out as it arrives, so one waiting to leave is not seen. A message in the lab starts at once: the
// learner pressed Deliver. What is drawn is bounded: per link and glyph at most one every GAP_MS
// (heartbeats: HEARTBEAT_GAP_MS; under load the per-link rate labels say the rest), and at most
// MAX_IN_FLIGHT at once. In the lab, a message is drawn when it is delivered, not when it is sent
// (it waits at its sender until then), and it travels slowly enough to follow.

import {S, isLive, nodeByRaftId} from "./state.js";
import {glyphOf, glyphSvg, labelOf, noteDrawn} from "./glyphs.js";
import {ringPoint, ringScale} from "./ring.js";
import {el} from "./dom.js";
import {invalidate} from "./render.js";

const TRAVEL_MS = 450;
const LAB_TRAVEL_MS = 1100;
const GAP_MS = 200;
const HEARTBEAT_GAP_MS = 1000;
const LOADED_GAP_MS = 600;  // a link carrying more than LOADED_RATE messages a second
const LOADED_RATE = 60;
const MAX_IN_FLIGHT = 60;
const FADE_FROM = 0.85;  // of the travel: where an arriving glyph starts to fade out
const lastDrawn = new Map();  // link|glyph|dropped -> performance.now() of the last one drawn
const starting = [];  // glyphs to add at the next redraw: [element, glyph, keyframes, options, dropped]
const leaving = new Set();  // arrived glyphs (faded out) to remove at the next redraw

// The "messages" part of the redraw (main.js registers it).
export function renderMessages() {
  for (const node of leaving) node.remove();
  leaving.clear();
  const layer = document.getElementById("msg-layer");
  for (const glyph of starting.splice(0)) if (layer) start(layer, ...glyph);
}

function faultsOf(raftId) {
  const n = nodeByRaftId(raftId);
  const arr = n ? S.statuses[n.id] : null;
  const st = arr && arr[arr.length - 1];
  return (st && st.state && st.state.faults) || {};
}

// Whether either end's fault rules stop src -> dst: a "sent" report on a cut link is one that will
// be (or was) dropped, so it is drawn bursting (its "dropped" report), never arriving.
function linkCut(src, dst) {
  const a = faultsOf(src), b = faultsOf(dst);
  const has = (list, x) => Array.isArray(list) && list.includes(x);
  return !!(a.isolated || has(a.partitioned, dst) || has(a.cut_outbound, dst) ||
    b.isolated || has(b.partitioned, src) || has(b.cut_inbound, src));
}

const heldAtSender = (ev) => S.lab.active && S.lab.rate !== "live" && !ev.lab && !ev.dropped;

// A live message event: draw it if it is worth drawing now.
export function onLiveMessage(ev) {
  if (!isLive() || document.hidden || heldAtSender(ev)) return;
  if (!ev.dropped && linkCut(ev.src, ev.dst)) return;
  const glyph = glyphOf(ev.kind, ev.preVote);
  if (!ev.lab && !ev.dropped && tooSoon(ev, glyph)) return;
  draw(ev, glyph, ev.lab ? LAB_TRAVEL_MS : TRAVEL_MS * Math.min(3, Math.sqrt(S.slowmo.factor || 1)));
}

// A recorded message met while replaying at `speed` times real time.
export function onReplayedMessage(ev, speed) {
  if (document.hidden) return;
  const glyph = glyphOf(ev.kind, ev.preVote);
  if (!ev.lab && tooSoon(ev, glyph)) return;
  draw(ev, glyph, (ev.lab ? LAB_TRAVEL_MS : TRAVEL_MS) / Math.min(2, Math.max(0.5, speed)));
}

function tooSoon(ev, glyph) {
  const key = `${ev.src}>${ev.dst}|${glyph}|${ev.dropped ? 1 : 0}`;
  const rate = S.links[`${ev.src}>${ev.dst}`] ? S.links[`${ev.src}>${ev.dst}`].messages : 0;
  const gap = rate > LOADED_RATE ? LOADED_GAP_MS : glyph && glyph.startsWith("hb") ? HEARTBEAT_GAP_MS : GAP_MS;
  const t = performance.now();
  if (t - (lastDrawn.get(key) || -Infinity) < gap) return true;
  lastDrawn.set(key, t);
  return false;
}

function draw(ev, glyph, travelMs) {
  const layer = document.getElementById("msg-layer");
  const p = ringPoint(ev.src), q = ringPoint(ev.dst);
  if (!layer || !p || !q || layer.childElementCount + starting.length >= MAX_IN_FLIGHT) return;
  const k = ringScale();
  const answer = /Response$|Answer$/.test(ev.kind);
  const off = (answer ? 7 : -7) * k;  // requests and answers travel on either side of the link
  const dx = q.x - p.x, dy = q.y - p.y, len = Math.hypot(dx, dy) || 1;
  const nx = (-dy / len) * off, ny = (dx / len) * off;
  const at = (f) => `translate(${p.x + dx * f + nx}px,${p.y + dy * f + ny}px)`;
  const from = 0.16, end = ev.dropped ? 0.5 : 0.84;
  const keyframes = ev.dropped ? [{transform: at(from)}, {transform: at(end)}]
    : [{transform: at(from), opacity: 1}, {transform: at(from + (end - from) * FADE_FROM), opacity: 1, offset: FADE_FROM},
      {transform: at(end), opacity: 0}];
  const bigger = glyph === "append" ? Math.min(5, Math.log2(1 + (ev.entries || 0))) : 0;
  const node = el("div", {class: `mg${ev.dropped ? " dropped" : ""}`, "data-glyph": glyph || "unknown",
    title: `${labelOf(ev.kind, ev.preVote)} ${ev.src} → ${ev.dst}, term ${ev.term}` +
      `${ev.entries ? `, ${ev.entries} entries` : ""}${ev.dropped ? " (dropped)" : ""}`});
  node.append(glyphSvg(glyph, Math.round((14 + 2 * bigger) * Math.max(0.8, k))));
  const options = {duration: travelMs, easing: "linear", fill: "forwards"};
  if (ev.lab) start(layer, node, glyph, keyframes, options, ev.dropped);
  else {
    starting.push([node, glyph, keyframes, options, ev.dropped]);
    invalidate("messages");
  }
}

function start(layer, node, glyph, keyframes, options, dropped) {
  layer.append(node);
  if (glyph) noteDrawn(glyph);
  node.animate(keyframes, options).onfinish = () => {
    if (dropped) burst(node);
    else {
      leaving.add(node);
      invalidate("messages");
    }
  };
}

// A dropped message bursts where it was lost, half-way along its link. The glyph grows about its own
// centre: the element around it is placed by a translate, which a scale of its own would multiply,
// carrying the burst off the link and out of the ring.
function burst(node) {
  node.classList.add("burst");
  const glyph = node.firstElementChild;
  const centred = "translate(-50%, -50%)";  // as style.css centres every glyph on its point
  const pop = glyph.animate(
    [{opacity: 1, transform: `${centred} scale(1)`}, {opacity: 0, transform: `${centred} scale(2.5)`}],
    {duration: 500, easing: "ease-out", fill: "forwards"});
  pop.onfinish = () => node.remove();
}
