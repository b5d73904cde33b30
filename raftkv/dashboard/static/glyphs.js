// Message glyphs, from the server's schema alone: each message type (and a vote's pre-vote form)
// names a glyph; a glyph is a shape, a family (its colour, style.css .m-<family>) and a fill (solid
// request, hollow answer, dashed pre-vote answer). The legend lists every glyph, and lights up the
// ones the page is drawing.

import {$, el, svg} from "./dom.js";
import {invalidate} from "./render.js";
import {S} from "./state.js";

const LIT_MS = 1200;
const litUntil = new Map();  // glyph -> performance.now() when its legend entry goes dark

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
    el("li", {"data-glyph": name, title: S.schema.families[g.family] || ""},
      glyphSvg(name, 14), el("span", {text: g.meaning})),
  ));
}

// Light up a drawn glyph's legend entry for a moment. It goes dark at a redraw (the "legend" part),
// with whatever else changed, not in a frame of its own.
export function noteDrawn(name) {
  const li = legendEntry(name);
  if (!li) return;
  if (!li.classList.contains("seen")) li.classList.add("seen");
  litUntil.set(name, performance.now() + LIT_MS);
  setTimeout(() => invalidate("legend"), LIT_MS);
}

export function renderLegendLights() {
  const t = performance.now();
  for (const [name, until] of litUntil) {
    if (until > t) continue;
    litUntil.delete(name);
    const li = legendEntry(name);
    if (li) li.classList.remove("seen");
  }
}

const legendEntry = (name) => document.querySelector(`#legend-messages [data-glyph="${name}"]`);
