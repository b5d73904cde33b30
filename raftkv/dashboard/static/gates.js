// The controls this person may not use here, greyed (disabled), with the reason as the control's
// tooltip and as a line of text in its panel. Two sources, independent of each other:
//
//   what the person logged in may do   session.js `access.may`, from the permissions a node
//                                      reported for them (the server words the reasons)
//   whether a node serves the lab      each node's `faultInjection` (its status, through the
//                                      dashboard's reach): partitions, forced elections, the lab
//                                      and slow motion need `--enable-fault-injection`
//
// It runs after every redraw (render.js: afterEachRender): the parts that enable and disable their
// own controls (cards, the lab, the header) go first, and this only ever disables more. A control
// it no longer blocks is handed back to them: every part redraws once more.

import {S, members} from "./state.js";
import {$, $$, el, setText} from "./dom.js";
import {invalidate, invalidateAll} from "./render.js";
import {access} from "./session.js";

const ADMIN_CONTROLS = ["#heal", "#slowmo", "#split", "#cut", "#link-apply", "#add-node", "#lab-toggle", "#lab-clock",
  "#lab-rate", "#lab-deliver-next", "#lab-drop-next", "#lab-snapshot-set", "#lab-snapshot-restore", "#tour-run",
  "#tour-stop", "#tour-next"];
const LAB_CONTROLS = ["#slowmo", "#split", "#lab-toggle", "#lab-clock", "#lab-rate", "#lab-deliver-next",
  "#lab-drop-next", "#lab-snapshot-set", "#lab-snapshot-restore", "#tour-run"];
const CARD_ADMIN_OPS = ["force-election", "isolate", "crash", "restart", "pause", "resume", "timeout", "promote", "remove"];
const CARD_LAB_OPS = ["force-election", "isolate", "timeout"];
const WRITE_OPS = new Set(["put", "delete", "cas"]);

let handedBack = false;

export function wireGates() {
  for (const id of ["#kv-op", "#cut-src"]) $(id).addEventListener("change", () => invalidate());
}

export function renderGates() {
  handedBack = false;
  const may = access.may || {};
  const admin = may.admin || null;
  const labWhy = noLab(members().map((n) => n.id));
  for (const id of ADMIN_CONTROLS) {
    block($(id), [admin, LAB_CONTROLS.includes(id) ? labWhy : null]);
  }
  const src = $("#cut-src").value;
  const srcOff = src && noLab([src]);
  block($("#cut"), [admin, srcOff]);
  block($("#link-apply"), [admin, srcOff]);
  const everyOff = members().length && members().every((n) => lab(n.id) === false) ? labWhy : null;
  block($("#heal"), [admin, everyOff && `nothing to heal: ${everyOff}`]);
  for (const b of $$("#lab-queue button[data-held]")) block(b, [admin]);
  for (const c of $$("[data-node]")) {
    const node = c.dataset.node;
    const off = noLab([node]);
    for (const op of CARD_ADMIN_OPS) {
      const b = c.querySelector(`button[data-op="${op}"]`);
      if (b) block(b, [admin, CARD_LAB_OPS.includes(op) ? off : null]);
    }
    cardNote(c, [off, admin && `its buttons: this ${admin}`]);
  }
  const writing = WRITE_OPS.has($("#kv-op").value);
  block($("#kv-send"), [writing ? may.write : null]);
  block($("#load-start"), [may.load]);
  setText($("#kv-gate"), may.write || may.writeScope || "");
  setText($("#lab-gate"), [admin && `The lab: this ${admin}.`, labWhy && `The lab: ${labWhy}.`].filter(Boolean).join(" "));
  setText($("#controls-gate"), [admin && `Partitions, slow motion and membership: this ${admin}.`,
    labWhy && `Partitions and slow motion: ${labWhy}.`, may.load && `Load: ${may.load}.`].filter(Boolean).join(" "));
  if (handedBack) invalidateAll();  // the parts set their own state of what is no longer blocked
}

// Whether node `id` serves the lab's routes: true, false, or undefined while unknown.
const lab = (id) => (S.reach[id] || {}).faultInjection;

// Why the lab's routes are unavailable on these nodes, or null.
function noLab(ids) {
  const off = ids.filter((id) => lab(id) === false);
  if (!off.length) return null;
  const names = off.length === 1 ? off[0] : `${off.slice(0, -1).join(", ")} and ${off[off.length - 1]}`;
  return `fault injection is off on ${names}: start ${off.length === 1 ? "it" : "them"} with --enable-fault-injection`;
}

function block(control, reasons) {
  if (!control) return;
  const why = reasons.filter(Boolean).join("; ");
  const d = control.dataset;
  if (why) {
    if (d.blocked === undefined) d.titleBefore = control.getAttribute("title") || "";
    if (d.blocked !== why) { d.blocked = why; control.title = why; }
    if (!control.disabled) control.disabled = true;
  } else if (d.blocked !== undefined) {
    delete d.blocked;
    if (d.titleBefore) control.title = d.titleBefore; else control.removeAttribute("title");
    delete d.titleBefore;
    control.disabled = false;
    handedBack = true;
  }
}

function cardNote(card, reasons) {
  const why = reasons.filter(Boolean).join(" · ");
  let p = card.querySelector(".gate-why");
  if (!p && !why) return;
  if (!p) {
    p = el("p", {class: "why gate-why"});
    card.querySelector(".buttons").after(p);
  }
  setText(p, why);
}
