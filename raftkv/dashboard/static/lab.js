// The lab panel: hold-and-step delivery on the real nodes. While it is on, every Raft message
// waits at its sender; the panel shows them as one queue, oldest first, and the learner delivers
// or drops any of them (so also reorders them), one at a time, or lets them flow at a rate. The
// clocks can be held so that nothing times out while a person reads; a node's "Time out" button
// (on its card) lets its clock run until it campaigns. The server carries all of this out (lab.py).

import {S, isLive, nameOf, nodeView, now} from "./state.js";
import {$, el, setAttr, setText} from "./dom.js";
import {glyphSvg} from "./glyphs.js";
import {icon} from "./icons.js";
import {api} from "./actions.js";

const labApi = (path, body) => api(path, body, {out: "#lab-msg"});

export function wireLab() {
  $("#lab-toggle").addEventListener("click", () => labApi("/api/lab", {active: !S.lab.active}));
  $("#lab-clock").addEventListener("click", () => labApi("/api/lab/clock", {held: !S.lab.clockHeld}));
  $("#lab-rate").addEventListener("change", (e) => {
    const v = e.target.value;
    labApi("/api/lab/rate", {rate: v === "step" || v === "live" ? v : Number(v)});
  });
  $("#lab-deliver-next").addEventListener("click", () => deliverHead("/api/lab/deliver"));
  $("#lab-drop-next").addEventListener("click", () => deliverHead("/api/lab/drop"));
  $("#lab-snapshot-set").addEventListener("click", () =>
    labApi("/api/lab/snapshot", {every: Number($("#lab-snapshot-every").value)}));
  $("#lab-snapshot-restore").addEventListener("click", () => labApi("/api/lab/snapshot", {every: null}));
  $("#lab-queue").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-held]");
    if (b) labApi(`/api/lab/${b.dataset.act}`, {ids: [b.dataset.held]});
  });
}

function deliverHead(path) {
  const head = S.lab.queue[0];
  if (head) labApi(path, {ids: [head.id]});
}

export function renderLab() {
  const lab = S.lab, live = isLive();
  const on = lab.active && live;
  $("#lab-panel").classList.toggle("on", on);
  setText($("#lab-why"), !lab.available ? `Unavailable: ${lab.why}.`
    : !live ? "The lab acts on the live cluster: go back to live to use it." : "");
  const toggle = $("#lab-toggle");
  toggle.disabled = !lab.available || !live;
  setAttr(toggle, "aria-pressed", !!lab.active);
  setText(toggle.querySelector(".label"), lab.active ? "Leave the lab (send everything held)" : "Hold every message");
  for (const id of ["#lab-clock", "#lab-rate", "#lab-deliver-next", "#lab-drop-next"]) $(id).disabled = !on;
  setAttr($("#lab-clock"), "aria-pressed", !!lab.clockHeld);
  setText($("#lab-clock .label"), lab.clockHeld ? "Clocks held: let them run" : "Clocks run: hold them");
  const rate = $("#lab-rate");
  if (rate.value !== String(lab.rate)) rate.value = String(lab.rate);
  setText($("#lab-snapshot-now"), lab.snapshotEvery ? `every ${lab.snapshotEvery} entries (lowered)` : "as configured");
  renderQueue(on);
}

function renderQueue(on) {
  const list = $("#lab-queue");
  const queue = on ? S.lab.queue : [];
  const sig = queue.map((h) => `${h.id}${h.preVote}`).join(",") + `|${on}`;
  if (list.dataset.sig === sig) return;
  list.dataset.sig = sig;
  list.replaceChildren(...queue.map(heldItem));
  const more = (S.lab.held || 0) - queue.length;
  setText($("#lab-count"), !on ? "" : S.lab.held ? `${S.lab.held} held${more > 0 ? ` (the oldest ${queue.length} shown)` : ""}`
    : S.lab.rate === "live" ? "messages flow live" : "nothing held yet");
}

function heldItem(h) {
  const held = `${h.srcName}'s ${h.label} to ${h.dstName}`;
  const button = (act, iconName, words) => el("button", {type: "button", "data-held": h.id, "data-act": act,
    "aria-label": `${words} ${held}`}, icon(iconName), ` ${words}`);
  return el("li", {"data-held-id": h.id, "data-type": h.type, "data-src": h.srcName, "data-dst": h.dstName,
    "data-pre-vote": String(!!h.preVote)},
    glyphSvg(h.glyph, 16),
    el("span", {class: "held-what"}, el("b", {text: `${h.srcName} → ${h.dstName}`}), ` ${h.label}, term ${h.term}`,
      h.entries ? `, ${h.entries} entr${h.entries === 1 ? "y" : "ies"}` : "", el("small", {text: termNote(h)})),
    button("deliver", "deliver", "Deliver"), button("drop", "drop", "Drop"));
}

// A pre-vote's term is the one its sender would use: say so, with the sender's own term.
function termNote(h) {
  if (!h.preVote || /Response$/.test(h.type)) return "";  // an answer carries the term it answers
  const src = S.nodes.find((n) => n.raftId === h.src);
  const view = src && nodeView(src.id, now());
  const own = view && view.state ? view.state.term : null;
  const still = own != null && own < h.term ? `; its own is still ${own}` : "";
  return ` (the term ${nameOf(h.src)} would use if it may campaign${still})`;
}
