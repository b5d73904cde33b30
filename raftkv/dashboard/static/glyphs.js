// Message glyphs, from the server's schema alone: each message type (and a vote's pre-vote form)
// names a glyph; a glyph is a shape, a family (its colour, style.css .m-<family>) and a fill (solid
// request, hollow answer, dashed pre-vote answer). The legend lists every glyph, and counts the ones
// the page has drawn.

import {$, el, svg} from "./dom.js";
import {S} from "./state.js";

const SHAPES = {
  triangle: (s) => `M0,${-s}L${s},${s * 0.8}L${-s},${s * 0.8}Z`,
  square: (s) => `M${-s},${-s}H${s}V${s}H${-s}Z`,
  bigsquare: (s) => `M${-s},${-s}H${s * 0.4}L${s},${-s * 0.4}V${s}H${-s}Z`,
  circle: (s) => `M${-s},0a${s},${s} 0 1,0 ${2 * s},0a${s},${s} 0 1,0 ${-2 * s},0`,
  diamond: (s) => `M0,${-s}L${s},0L0,${s}L${-s},0Z`,
  chevron: (s) => `M${-s},${-s}L${s},0L${-s},${s}L${-s / 3},0Z`,
  hexagon: (s) => "M" + [...Array(6)].map((_, k) => {
    const a = (k * Math.PI) / 3;
    return `${(s * Math.cos(a)).toFixed(2)},${(s * Math.sin(a)).toFixed(2)}`;
  }).join("L") + "Z",
  arrow: (s) => `M${-s},${-s / 2}H0V${-s}L${s},0L0,${s}V${s / 2}H${-s}Z`,
};

// The glyph of a message event (or held message): its type's, or its pre-vote form's.
export function glyphOf(kind, preVote) {
  const m = S.schema.messages[kind];
  if (!m) return null;
  return preVote && m.preVote ? m.preVote.glyph : m.glyph;
}

export function labelOf(kind, preVote) {
  const m = S.schema.messages[kind];
  if (!m) return kind;
  return preVote && m.preVote ? m.preVote.label : m.label;
}

// A standalone <svg> of a glyph, `size` pixels across (for the legend, the lab queue and the ring).
export function glyphSvg(name, size = 16, extraSize = 0) {
  const g = S.schema.glyphs[name];
  const shape = g ? g.shape : "circle";
  const r = 5 + extraSize;
  const box = r + 2;
  const s = svg("svg", {viewBox: `${-box} ${-box} ${2 * box} ${2 * box}`, width: size, height: size,
    class: `glyph m-${g ? g.family : "unknown"} f-${g ? g.fill : "solid"}`, "aria-hidden": "true"});
  s.append(svg("path", {d: SHAPES[shape](r)}));
  return s;
}

export function renderLegend() {
  const list = $("#legend-messages");
  list.replaceChildren(...Object.entries(S.schema.glyphs).map(([name, g]) =>
    el("li", {"data-glyph": name, "data-seen": "0", title: S.schema.families[g.family] || ""},
      glyphSvg(name, 14), el("span", {text: g.meaning})),
  ));
}

// Count a drawn glyph in its legend entry, and light the entry up for a moment.
export function noteDrawn(name) {
  const li = document.querySelector(`#legend-messages [data-glyph="${name}"]`);
  if (!li) return;
  li.dataset.seen = String(Number(li.dataset.seen) + 1);
  if (!li.classList.contains("seen")) {
    li.classList.add("seen");
    setTimeout(() => li.classList.remove("seen"), 1200);
  }
}
