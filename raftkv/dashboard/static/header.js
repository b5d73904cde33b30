// The header's pills and the safety panel: connection, live or past (replay.js), the safety checks,
// slow motion and the lab, each in words (and an icon), never by colour alone.

import {S} from "./state.js";
import {$, el, setAttr, setClass, setHidden, setText} from "./dom.js";
import {icon} from "./icons.js";

export function renderHeader() {
  const broken = S.safety.filter((c) => !c.ok);
  const pill = $("#safety-pill");
  setText(pill, broken.length ? `safety: ${broken.length} check${broken.length > 1 ? "s" : ""} broken`
    : "safety checks hold");
  setClass(pill, `pill ${broken.length ? "bad" : "ok"}`);
  const banner = $("#safety-banner");
  setHidden(banner, !broken.length);
  setText(banner, broken.map((c) => `${c.name} BROKEN: ${c.violation}`).join(" · "));
  renderSafetyList();
  const factor = S.slowmo.factor || 1;
  const sm = $("#slowmo-pill");
  setHidden(sm, factor <= 1);
  setText(sm, `slow motion ×${factor}`);
  const b = $("#slowmo");
  b.disabled = !S.slowmo.available;
  setAttr(b, "aria-pressed", factor > 1);
  setText(b.querySelector(".label"), factor > 1 ? "Normal speed" : "Slow motion ×10");
  setText($("#slowmo-why"), S.slowmo.available ? "(every node's tick changes while it runs: no restart, no new term)"
    : `Unavailable: ${S.slowmo.why || ""}`);
  const lab = $("#lab-pill");
  setHidden(lab, !S.lab.active);
  setText(lab, S.lab.rate === "live" ? "lab: messages flow live" : `lab: ${S.lab.held || 0} held` +
    (S.lab.clockHeld ? " · clocks held" : ""));
}

// Rebuilt when a check is added or its verdict changes; otherwise only its count of comparisons
// moves, in place (it grows at every tick).
function renderSafetyList() {
  const list = $("#safety");
  const sig = S.safety.map((c) => `${c.id}${c.ok}${c.violation || ""}`).join(",");
  if (list.dataset.sig !== sig) {
    list.dataset.sig = sig;
    list.replaceChildren(...S.safety.map((c) => el("li", {class: c.ok ? "ok" : "bad", "data-check": c.id},
      icon(c.ok ? "check" : "cross"), el("b", {text: ` ${c.name}`}), el("small"),
      c.ok ? null : el("div", {text: c.violation}))));
  }
  S.safety.forEach((c, i) => setText(list.children[i].querySelector("small"),
    ` — ${c.explain}; ${c.observations} comparisons`));
}
