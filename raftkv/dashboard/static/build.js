// The parts of the page that depend on which nodes there are and what the server offers: built
// once per hello, and again when the membership changes.

import {S} from "./state.js";
import {$, setText} from "./dom.js";
import {buildRing} from "./ring.js";
import {buildCards} from "./cards.js";
import {renderLegend} from "./glyphs.js";
import {fillNodeChoices} from "./actions.js";
import {buildTourChoices} from "./tour.js";

export function rebuild() {
  renderLegend();
  fillNodeChoices();
  buildTourChoices();
  const f = S.features;
  const cut = f.oneWayCut || {}, loss = f.lossDelay || {}, add = f.addNode || {};
  $("#cut").disabled = !cut.available;
  $("#link-apply").disabled = !loss.available;
  setText($("#cut-why"), cut.available ? "" : `Unavailable: ${cut.why}.`);
  $("#add-node").disabled = !add.available;
  setText($("#add-why"), add.available ? "" : `Unavailable: ${add.why}.`);
  const remote = $("#remote-note");
  remote.hidden = S.supervisor || !!S.file;
  setText(remote, "Attached to a remote cluster: crash, pause, restart, slow motion and the lab are unavailable " +
    "(they need the supervisor that `raftkv up` provides). Elections, partitions, reads and writes work.");
  buildCards();
  buildRing();
}
