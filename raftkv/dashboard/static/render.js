// When the page redraws: parts are marked dirty as events arrive and redrawn together, at most
// every RENDER_GAP_MS (a node's status comes four times a second), and not at all while the tab is
// hidden. Nothing redraws on a timer at frame rate: message glyphs move by Web Animations
// (messages.js), which the browser runs on its compositor, so an idle page costs little.

const RENDER_GAP_MS = 200;
const renderers = new Map();  // part -> function
const dirty = new Set();
let scheduled = false;
let waitingForVisible = false;

const afterEach = [];  // run after every redraw, whatever was dirty (gates.js)

export function register(part, fn) { renderers.set(part, fn); }
export function afterEachRender(fn) { afterEach.push(fn); }

export function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  if (!scheduled) {
    scheduled = true;
    setTimeout(flush, RENDER_GAP_MS);
  }
}

export const invalidateAll = () => invalidate(...renderers.keys());

function flush() {
  scheduled = false;
  if (document.hidden) {  // the dirty parts wait until the tab is shown again
    if (!waitingForVisible) {
      waitingForVisible = true;
      document.addEventListener("visibilitychange", () => { waitingForVisible = false; invalidate(); }, {once: true});
    }
    return;
  }
  const parts = [...dirty];
  dirty.clear();
  for (const p of parts) {
    const fn = renderers.get(p);
    if (fn) fn();
  }
  for (const fn of afterEach) fn();
}
