// The guided tour's box, under the ring: pick a demo, run it, and go through its steps with Next
// and Back. A caption stays until the learner presses Next (the server waits for it); Back shows an
// earlier step's caption with the cluster as it was at that moment (a past view from the recorded
// history: nothing is undone on the real cluster), and Next walks forward again to the present.

import {S} from "./state.js";
import {$, el, setText} from "./dom.js";
import {api} from "./actions.js";
import {goLive, showPast} from "./replay.js";

const STEPS_KEPT = 60;

export function buildTourChoices() {
  const demos = (S.features.tour && S.features.tour.demos) || {};
  const select = $("#tour-demo");
  const chosen = select.value;
  select.replaceChildren(el("option", {value: "all", text: "All of them, in order"}),
    ...Object.entries(demos).map(([k, v]) => el("option", {value: k, text: v})));
  if (chosen && (chosen === "all" || chosen in demos)) select.value = chosen;
}

export function wireTour() {
  $("#tour-run").addEventListener("click", () => {
    S.tour.viewing = null;
    api("/api/tour", {demo: $("#tour-demo").value}, {out: "#tour-msg"});
  });
  $("#tour-stop").addEventListener("click", () => {
    if (S.tour.viewing != null) {  // a stopped tour has no earlier step to look back on: back to now
      S.tour.viewing = null;
      goLive();
      renderTour();
    }
    api("/api/tour/stop", null, {out: "#tour-msg", said: (d) => d.stopped ? "stopped" : "no tour was running"});
  });
  $("#tour-next").addEventListener("click", next);
  $("#tour-back").addEventListener("click", back);
}

// A tour event arrived (live, or from the history): keep each caption that waited for the learner.
export function noteTour(ev) {
  S.tour.last = ev;
  const steps = S.tour.steps;
  const same = steps.length && steps[steps.length - 1].demo === ev.demo && steps[steps.length - 1].step === ev.step;
  if (ev.state === "waiting" && !same) {
    steps.push({demo: ev.demo, step: ev.step, title: ev.title, caption: ev.caption, rt: ev.rt});
    if (steps.length > STEPS_KEPT) steps.shift();
  }
}

// Where the present is in the list of steps: the last one while it is the tour's current step,
// past the end once the tour went beyond it (finished, failed, stopped).
function presentIndex() {
  const steps = S.tour.steps, last = S.tour.last;
  const tail = steps[steps.length - 1];
  const current = last && tail && tail.demo === last.demo && tail.step === last.step;
  return current ? steps.length - 1 : steps.length;
}

function next() {
  const v = S.tour.viewing;
  if (v != null) {
    if (v + 1 >= presentIndex()) {
      S.tour.viewing = null;
      goLive();
    } else {
      S.tour.viewing = v + 1;
      showPast(S.tour.steps[v + 1].rt);
    }
    renderTour();
    return;
  }
  api("/api/tour/next", null, {out: "#tour-msg"});
}

function back() {
  const steps = S.tour.steps;
  const from = S.tour.viewing == null ? presentIndex() : S.tour.viewing;
  if (from <= 0) return;
  S.tour.viewing = from - 1;
  showPast(steps[from - 1].rt);
  renderTour();
}

export function renderTour() {
  const last = S.tour.last;
  const box = $("#tour-box");
  const viewing = S.tour.viewing != null ? S.tour.steps[S.tour.viewing] : null;
  const shown = viewing || last;
  box.dataset.state = viewing ? "past" : last ? last.state : "idle";
  const caption = $("#tour-caption");
  if (!shown) return;
  const sig = `${shown.title}|${shown.step}|${shown.caption}`;
  if (caption.dataset.sig !== sig) {
    caption.dataset.sig = sig;
    caption.replaceChildren(el("b", {text: `${shown.title}, step ${shown.step}: `}), shown.caption);
  }
  setText($("#tour-doing"), viewing ? "An earlier step, as the cluster was then. Next goes forward again."
    : last.state === "working" ? last.doing || "…" : last.state === "waiting" ? "Press Next to go on." : "");
  const nextButton = $("#tour-next");
  nextButton.disabled = !(viewing || (last && last.state === "waiting"));
  $("#tour-back").disabled = (viewing ? S.tour.viewing : presentIndex()) <= 0;
}
