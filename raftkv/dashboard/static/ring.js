// The nodes on a ring: role by shape and word (not colour alone), term by pale fill and number,
// the election timer as the outer ring (from the node's status: it stands still while the lab
// holds the clocks), a candidate's votes, a learner's catch-up bar, cut or down nodes marked, and
// per-link message rates under load.

import {S, catchUp, catchUpWords, memberRole, nodeCondition, nodeView, viewTime, isLive, nameOf} from "./state.js";
import {$, setAttr, setClass, setText, svg, termColour} from "./dom.js";
import {icon} from "./icons.js";
import {nodeAction} from "./actions.js";

const VIEW = {w: 440, h: 430};
const RING = {cx: 220, cy: 212, r: 158, nodeR: 34};
const RATE_LABEL_MIN = 60;
const TIMER_STEP = 0.05;  // a link shows its rate once it carries more than this many messages a second

function nodePos(i, count) {
  const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, count);
  return {x: RING.cx + RING.r * Math.cos(a), y: RING.cy + RING.r * Math.sin(a)};
}

function posOf(raftId) {
  const i = S.nodes.findIndex((n) => n.raftId === raftId || n.id === raftId);
  return i < 0 ? null : nodePos(i, S.nodes.length);
}

let box = null;  // where the ring's drawing sits in the message layer: {k, ox, oy}
function layerBox() {
  if (box) return box;
  const ring = $("#ring"), layer = $("#msg-layer");
  const r = ring.getBoundingClientRect(), l = layer.getBoundingClientRect();
  const k = Math.min(r.width / VIEW.w, r.height / VIEW.h) || 1;
  box = {k, ox: r.left - l.left + (r.width - VIEW.w * k) / 2, oy: r.top - l.top + (r.height - VIEW.h * k) / 2};
  return box;
}
new ResizeObserver(() => { box = null; }).observe(document.getElementById("ring"));

// A node's centre in the message layer's pixels.
export function ringPoint(raftId) {
  const p = posOf(raftId);
  if (!p) return null;
  const b = layerBox();
  return {x: b.ox + p.x * b.k, y: b.oy + p.y * b.k};
}
export const ringScale = () => layerBox().k;

export function buildRing() {
  box = null;
  const links = $("#links"), nodes = $("#nodes");
  links.replaceChildren();
  nodes.replaceChildren();
  $("#msg-layer").replaceChildren();
  S.nodes.forEach((a, i) => S.nodes.forEach((b, j) => {
    if (j <= i) return;
    const p = nodePos(i, S.nodes.length), q = nodePos(j, S.nodes.length);
    links.append(svg("line", {x1: p.x, y1: p.y, x2: q.x, y2: q.y, class: "link", "data-link": `${a.raftId}|${b.raftId}`}));
    // The rate label sits just outside the link, away from the ring's centre, clear of the messages.
    const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
    const ox = mx - RING.cx, oy = my - RING.cy, ol = Math.hypot(ox, oy) || 1;
    links.append(svg("text", {x: mx + (ox / ol) * 22, y: my + (oy / ol) * 22 + 4, class: "link-rate",
      "data-rate": `${a.raftId}|${b.raftId}`, "text-anchor": "middle"}));
  }));
  S.nodes.forEach((n, i) => nodes.append(nodeGroup(n, nodePos(i, S.nodes.length))));
}

function nodeGroup(n, p) {
  const g = svg("g", {class: "node", "data-ring-node": n.id, transform: `translate(${p.x},${p.y})`, tabindex: "0",
    role: "button", "aria-label": `${n.id}: press Enter to force an election`});
  g.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); nodeAction(n.id, "force-election"); }
  });
  g.addEventListener("click", () => document.querySelector(`[data-node="${n.id}"]`)
    .scrollIntoView({behavior: "smooth", block: "nearest"}));
  const R = RING.nodeR, C = 2 * Math.PI * (R + 9);
  const text = (cls, y, value = "") => { const t = svg("text", {class: cls, y, "text-anchor": "middle"}); t.textContent = value; return t; };
  const crown = icon("crown");
  crown.setAttribute("class", "crown");
  for (const [k, v] of Object.entries({x: -11, y: -R - 22, width: 22, height: 22})) crown.setAttribute(k, v);
  const badge = svg("g", {class: "badge", transform: `translate(${R - 8},${-R - 6})`});
  const progress = svg("g", {class: "catch-up", transform: `translate(0,${R + 22})`});
  progress.append(svg("rect", {class: "bar-bg", x: -40, y: -5, width: 80, height: 8, rx: 3}),
    svg("rect", {class: "bar", x: -40, y: -5, width: 0, height: 8, rx: 3}), text("bar-text", 16));
  g.append(svg("circle", {r: R + 16, class: "halo"}), svg("circle", {r: R + 9, class: "timer-bg"}),
    svg("circle", {r: R + 9, class: "timer", "stroke-dasharray": `${C} ${C}`, transform: "rotate(-90)"}),
    svg("path", {class: "shape"}), text("n-id", -6, n.id), text("n-role", 9), text("n-term", 22), crown, badge,
    progress, svg("g", {class: "vote-badges"}));
  return g;
}

function shapePath(role) {
  const R = RING.nodeR;
  const polygon = (k, turn) => "M" + [...Array(k)].map((_, i) => {
    const a = turn + (i * 2 * Math.PI) / k;
    return `${(R * Math.cos(a)).toFixed(1)},${(R * Math.sin(a)).toFixed(1)}`;
  }).join("L") + "Z";
  if (role === "learner") return polygon(5, -Math.PI / 2);  // it receives the log but does not vote
  if (role === "leader") return polygon(6, Math.PI / 6);
  if (role === "candidate") return `M0,${-R}L${R},0L0,${R}L${-R},0Z`;
  if (role === "pre-candidate") { const s = R * 0.85; return `M${-s},${-s}H${s}V${s}H${-s}Z`; }
  return `M${-R},0a${R},${R} 0 1,0 ${2 * R},0a${R},${R} 0 1,0 ${-2 * R},0`;
}

export function renderRing() {
  const t = viewTime();
  for (const n of S.nodes) {
    const g = document.querySelector(`[data-ring-node="${n.id}"]`);
    if (g) renderNode(g, n, t);
  }
  renderLinkRates();
}

function renderNode(g, n, t) {
  const view = nodeView(n.id, t);
  const s = view ? view.state : null;
  const member = memberRole(n, view, t);
  const role = s ? (member === "learner" && s.state === "follower" ? "learner" : s.state) : "unknown";
  const cond = nodeCondition(n.id, view);
  setAttr(g, "data-role", role);
  setAttr(g, "data-member", cond.key === "removed" ? "removed" : member);
  setAttr(g, "data-term", s ? s.term : "");
  setClass(g, ["node", cond.grey ? "grey" : "", cond.cut ? "cut" : "", role === "leader" && !cond.grey ? "leader" : "",
    S.lab.active && S.lab.clockHeld && isLive() ? "clock-held" : ""].filter(Boolean).join(" "));
  const shape = g.querySelector(".shape");
  setAttr(shape, "d", shapePath(role));
  setAttr(shape, "fill", cond.grey ? "#d9d9d9" : termColour(s && s.term));
  setClass(shape, role === "pre-candidate" ? "shape dashed" : "shape");
  setText(g.querySelector(".n-role"), cond.grey ? cond.key : role);
  setText(g.querySelector(".n-term"), s ? `term ${s.term}` : "");
  renderBadge(g.querySelector(".badge"), cond.key === "removed" ? "remove" : cond.grey ? "cross" : cond.cut ? "cut" : "");
  renderCatchUp(g, role === "learner" && !cond.grey ? catchUp(n, t) : undefined);
  setAttr(g, "aria-label", `${n.id}: ${cond.grey ? cond.key : role}, term ${s ? s.term : "?"}. Enter forces an election.`);
  // The election timer: what remains before this node would time out (a learner never campaigns).
  const C = 2 * Math.PI * (RING.nodeR + 9);
  let frac = 0;
  if (s && !cond.grey && role !== "leader" && role !== "learner" && s.electionTimeout) {
    // In steps of TIMER_STEP: a change too small to see would still cost the browser a repaint.
    frac = Math.round(Math.max(0, 1 - s.electionElapsed / s.electionTimeout) / TIMER_STEP) * TIMER_STEP;
  }
  const timer = g.querySelector(".timer");
  setAttr(timer, "stroke-dasharray", `${(frac * C).toFixed(1)} ${C.toFixed(1)}`);
  setClass(timer, frac < 0.3 ? "timer low" : "timer");
  renderVotes(g.querySelector(".vote-badges"), s, role);
}

function renderBadge(badge, name) {
  if (badge.dataset.icon === name) return;
  badge.dataset.icon = name;
  badge.replaceChildren();
  if (!name) return;
  const i = icon(name);
  for (const [k, v] of Object.entries({x: 0, y: 0, width: 18, height: 18})) i.setAttribute(k, v);
  badge.append(i);
}

function renderVotes(vb, s, role) {
  const votes = s && (role === "candidate" || role === "pre-candidate") ? Object.entries(s.votes || {}) : [];
  const sig = votes.map(([v, g]) => `${v}${g}`).join(",");
  if (vb.dataset.sig === sig) return;
  vb.dataset.sig = sig;
  vb.replaceChildren(...votes.map(([voter, granted], k) => {
    const tx = svg("text", {x: -RING.nodeR + k * 26, y: RING.nodeR + 26, class: granted ? "vote yes" : "vote no"});
    // who answered, then how ("n2✓"): a bare "✓2" read as a count of votes
    tx.textContent = `${nameOf(voter).replace(/^node/, "n")}${granted ? "✓" : "✗"}`;
    const title = svg("title", {});
    title.textContent = `${nameOf(voter)} ${granted ? "granted" : "refused"} its vote`;
    tx.append(title);
    return tx;
  }));
}

function renderCatchUp(g, c) {
  // A learner's progress bar under its shape (`undefined`: not a learner, no bar).
  const bar = g.querySelector(".catch-up");
  setAttr(bar, "display", c === undefined ? "none" : null);
  if (c === undefined) return;
  const frac = c && c.last ? Math.min(1, c.match / c.last) : 0;
  setAttr(bar.querySelector(".bar"), "width", (80 * frac).toFixed(1));
  setText(bar.querySelector(".bar-text"), catchUpWords(c));
}

function renderLinkRates() {
  for (const text of document.querySelectorAll("[data-rate]")) {
    const [a, b] = text.getAttribute("data-rate").split("|");
    const ab = S.links[`${a}>${b}`], ba = S.links[`${b}>${a}`];
    const sum = (k) => (ab ? ab[k] : 0) + (ba ? ba[k] : 0);
    const total = sum("messages"), entries = sum("entries"), dropped = sum("dropped");
    setText(text, isLive() && (total > RATE_LABEL_MIN || dropped > 0)
      ? `${Math.round(total)}/s${entries ? ` ${Math.round(entries)}e/s` : ""}${dropped ? ` ✗${Math.round(dropped)}/s` : ""}` : "");
    const line = document.querySelector(`[data-link="${a}|${b}"]`);
    setClass(line, dropped > 0 && isLive() ? "link dropping" : "link");
  }
}
