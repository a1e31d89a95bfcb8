// canvas-sync demo page: an SVG canvas on one project, built on the JavaScript client
// (canvas-client.js, a copy of clients/js/index.js served from here).
//
// The client keeps the local copy (client.objects), sends edits, reconnects, replays what
// is not yet saved and keeps it in IndexedDB, so edits made offline survive a reload. This
// page draws what it holds, turns pointer and keyboard input into create, update and
// delete calls, and shows the connection, "saving… / all changes saved", and other
// people's cursors and selections (presence, never stored).

import { CanvasClient } from "/static/canvas-client.js";
import { IndexedDBStorage } from "/static/canvas-client-indexeddb.js";

const params = new URLSearchParams(location.search);
const project = params.get("project") || "demo";
const COLOURS = ["#e53935", "#fb8c00", "#fdd835", "#43a047", "#00acc1", "#1e88e5", "#8e24aa", "#6d4c41", "#ffffff"];
const DRAG_INTERVAL_MS = 33; // about 30 updates a second while dragging
const NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"];
const SVG_NS = "http://www.w3.org/2000/svg";

const board = document.getElementById("board");
const statusEl = document.getElementById("status");
const savingEl = document.getElementById("saving");
const queuedEl = document.getElementById("queued");
const undoButton = document.getElementById("undo");
const redoButton = document.getElementById("redo");

const me = {
  name: params.get("name") || `${NAMES[Math.floor(Math.random() * NAMES.length)]}`,
  colour: COLOURS[Math.floor(Math.random() * (COLOURS.length - 1))],
};
let selected = null;
let colour = COLOURS[5];
let cursor = null;

document.getElementById("project").textContent = project;

// The token travels as a WebSocket subprotocol (the client does that): one given in the
// page's #token=... fragment (never sent to a server), else a development token from
// /dev/token, which only `canvas-sync dev` serves. None: authentication is off. Called on
// every connect and before the token expires.
async function token() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) return given;
  try {
    const response = await fetch(`/dev/token?project=${encodeURIComponent(project)}&name=${encodeURIComponent(me.name)}`);
    if (response.ok) return (await response.json()).token;
  } catch {
    // offline, or no dev server: try without
  }
  return null;
}

const client = new CanvasClient({
  url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`,
  project,
  token,
  storage: new IndexedDBStorage(),
});
window.canvasClient = client; // for the console (and the browser tests)
client.warnBeforeUnload();

// --- what the client tells -----------------------------------------------------------------

client.on("status", ({ status, retryIn, message }) => {
  if (status === "open") {
    document.getElementById("replica").textContent = client.replica;
    setStatus("online", "online");
  } else if (status === "connecting") {
    setStatus("connecting", "connecting…");
  } else if (status === "reconnecting") {
    setStatus("offline", retryIn === undefined ? "offline; reconnecting…" : `offline; reconnecting in ${(retryIn / 1000).toFixed(1)} s`);
  } else {
    setStatus("closed", `disconnected: ${message ?? client.closeReason?.message ?? "closed"}`);
  }
  showCounts();
});
client.on("change", ({ id, object }) => {
  if (object) render(object);
  else remove(id);
});
client.on("presence", renderPresence);
client.on("unsaved", showCounts);
client.on("saved", showCounts);
client.on("history", showHistory);
client.on("error", (error) => {
  if (error.change) toast(`Not saved: ${error.message} (${error.code})`);
  else if (error.code !== "connect_failed") toast(error.message);
});

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function showCounts() {
  const pending = client.pending;
  queuedEl.hidden = pending === 0;
  queuedEl.textContent = `${pending} edit${pending === 1 ? "" : "s"} not yet confirmed`;
  queuedEl.dataset.count = String(pending);
  const unsaved = client.unsaved;
  savingEl.dataset.count = String(unsaved);
  if (unsaved === 0) {
    savingEl.dataset.state = "saved";
    savingEl.textContent = "all changes saved";
  } else if (client.status === "open") {
    savingEl.dataset.state = "saving";
    savingEl.textContent = "saving…";
  } else {
    savingEl.dataset.state = "unsaved";
    savingEl.textContent = `${unsaved} unsaved change${unsaved === 1 ? "" : "s"}, kept on this device`;
  }
}

function showHistory() {
  undoButton.disabled = !client.canUndo;
  redoButton.disabled = !client.canRedo;
}

// --- drawing ------------------------------------------------------------------------------

function presenceLayer() {
  let layer = document.getElementById("presence");
  if (!layer) {
    layer = document.createElementNS(SVG_NS, "g");
    layer.id = "presence"; // other people's cursors, always on top
    board.appendChild(layer);
  }
  return layer;
}

function element(id) {
  return board.querySelector(`[data-id="${CSS.escape(id)}"]`);
}

function remove(id) {
  element(id)?.remove();
  if (selected === id) selected = null;
}

function render(object) {
  const tag = object.type === "ellipse" ? "ellipse" : object.type === "text" ? "text" : "rect";
  let el = element(object.id);
  if (!el || el.tagName !== tag) {
    el?.remove();
    el = document.createElementNS(SVG_NS, tag);
    el.dataset.id = object.id;
    el.setAttribute("role", "img");
    el.addEventListener("pointerdown", startDrag);
    board.insertBefore(el, presenceLayer());
  }
  const { x = 0, y = 0, w = 160, h = 100, fill = "#1e88e5" } = object;
  el.setAttribute("aria-label", `${object.type} ${object.id}`);
  el.setAttribute("fill", tag === "text" ? (fill === "#ffffff" ? "#222" : fill) : fill);
  el.dataset.x = String(x);
  el.dataset.y = String(y);
  if (tag === "rect") {
    Object.entries({ x, y, width: w, height: h, stroke: "#333", "stroke-width": 1 }).forEach(([k, v]) => el.setAttribute(k, v));
  } else if (tag === "ellipse") {
    Object.entries({ cx: x + w / 2, cy: y + h / 2, rx: w / 2, ry: h / 2, stroke: "#333", "stroke-width": 1 })
      .forEach(([k, v]) => el.setAttribute(k, v));
  } else {
    el.setAttribute("x", x);
    el.setAttribute("y", y + 36);
    el.textContent = object.text ?? "Text";
  }
  el.classList.toggle("selected", selected === object.id);
  markSelections();
}

function select(id) {
  selected = id;
  board.querySelectorAll("[data-id]").forEach((el) => el.classList.toggle("selected", el.dataset.id === id));
  sendPresence();
}

// --- presence: where the others are -------------------------------------------------------

function sendPresence() {
  client.setPresence({ ...me, cursor, selection: selected }); // the client sends at most every 50 ms
}

function markSelections() {
  board.querySelectorAll("[data-selected-by]").forEach((el) => {
    el.removeAttribute("data-selected-by");
    el.style.removeProperty("outline");
  });
  for (const state of client.others.values()) {
    if (!state?.selection) continue;
    const el = element(String(state.selection));
    if (el) {
      el.dataset.selectedBy = String(state.name ?? "someone").slice(0, 32);
      el.style.outline = `3px dashed ${safeColour(state.colour)}`;
    }
  }
}

function safeColour(value) {
  return /^#[0-9a-f]{6}$/i.test(value ?? "") ? value : "#555";
}

function renderPresence() {
  const layer = presenceLayer();
  layer.replaceChildren();
  markSelections();
  for (const [clientId, state] of client.others) {
    if (!Array.isArray(state?.cursor)) continue;
    const name = String(state.name ?? "someone").slice(0, 32);
    const [x, y] = state.cursor.map(Number);
    const g = document.createElementNS(SVG_NS, "g");
    g.dataset.cursor = clientId;
    g.dataset.name = name;
    g.setAttribute("transform", `translate(${x} ${y})`);
    g.setAttribute("pointer-events", "none");
    const arrow = document.createElementNS(SVG_NS, "path");
    arrow.setAttribute("d", "M0 0 L0 22 L6 16 L11 27 L15 25 L10 15 L18 15 Z");
    arrow.setAttribute("fill", safeColour(state.colour));
    arrow.setAttribute("stroke", "#fff");
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", "16");
    label.setAttribute("y", "40");
    label.setAttribute("fill", safeColour(state.colour));
    label.setAttribute("font-size", "18");
    label.textContent = name;
    g.append(arrow, label);
    layer.appendChild(g);
  }
}

function toSvg(event) {
  const point = board.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  return point.matrixTransform(board.getScreenCTM().inverse());
}

// A drag is one undo step: the history is paused from the first move to the release. The
// shape follows the pointer at once; updates go out about 30 times a second, and the final
// position always.
function startDrag(event) {
  const id = event.currentTarget.dataset.id;
  const object = client.objects.get(id);
  if (!object) return;
  select(id);
  event.currentTarget.setPointerCapture(event.pointerId);
  const origin = toSvg(event);
  const start = { x: object.x ?? 0, y: object.y ?? 0 };
  let lastSent = 0;
  let last = null;
  const target = event.currentTarget;

  const move = (e) => {
    const p = toSvg(e);
    const props = { x: Math.round(start.x + p.x - origin.x), y: Math.round(start.y + p.y - origin.y) };
    if (!last) client.pauseHistory();
    last = props;
    const current = client.objects.get(id);
    if (current) render({ ...current, ...props });
    if (performance.now() - lastSent >= DRAG_INTERVAL_MS) {
      lastSent = performance.now();
      client.update(id, props);
    }
  };
  const up = () => {
    target.removeEventListener("pointermove", move);
    target.removeEventListener("pointerup", up);
    target.removeEventListener("pointercancel", up);
    if (!last) return;
    if (client.objects.has(id)) client.update(id, last);
    client.resumeHistory();
  };
  target.addEventListener("pointermove", move);
  target.addEventListener("pointerup", up);
  target.addEventListener("pointercancel", up);
}

function add(type) {
  const object = {
    id: client.newId(),
    type,
    fill: colour,
    x: 100 + Math.round(Math.random() * 1100),
    y: 80 + Math.round(Math.random() * 600),
    ...(type === "text" ? { text: "Text" } : { w: 180, h: 120 }),
  };
  client.create(object);
  select(object.id);
}

function removeSelected() {
  if (selected && client.objects.has(selected)) {
    client.delete(selected);
    selected = null;
  }
}

function toast(text) {
  const el = document.createElement("div");
  el.className = "toast";
  el.textContent = text;
  document.getElementById("toasts").appendChild(el);
  setTimeout(() => el.remove(), 6000);
}

// --- toolbar and keys ---------------------------------------------------------------------

document.querySelectorAll("[data-add]").forEach((b) => b.addEventListener("click", () => add(b.dataset.add)));
document.getElementById("delete").addEventListener("click", removeSelected);
undoButton.addEventListener("click", () => client.undo());
redoButton.addEventListener("click", () => client.redo());
const palette = document.getElementById("palette");
for (const c of COLOURS) {
  const b = document.createElement("button");
  b.type = "button";
  b.style.background = c;
  b.title = `colour ${c}`;
  b.dataset.colour = c;
  b.setAttribute("aria-pressed", String(c === colour));
  b.addEventListener("click", () => {
    colour = c;
    palette.querySelectorAll("button").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
    if (selected && client.objects.has(selected)) client.update(selected, { fill: c });
  });
  palette.appendChild(b);
}
board.addEventListener("pointerdown", (e) => {
  if (e.target === board) select(null);
});
board.addEventListener("pointermove", (e) => {
  const p = toSvg(e);
  cursor = [Math.round(p.x), Math.round(p.y)];
  sendPresence();
});
board.addEventListener("pointerleave", () => {
  cursor = null;
  sendPresence();
});
document.addEventListener("keydown", (e) => {
  if (document.activeElement?.tagName === "INPUT") return;
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "z") {
    e.preventDefault();
    if (e.shiftKey) client.redo();
    else client.undo();
  } else if (mod && e.key.toLowerCase() === "y") {
    e.preventDefault();
    client.redo();
  } else if (e.key === "Delete" || e.key === "Backspace") {
    removeSelected();
  }
});
document.getElementById("me").textContent = me.name;
document.getElementById("me").style.color = me.colour;
presenceLayer();
for (const object of client.objects.values()) render(object); // unsaved changes from IndexedDB show once loaded
showCounts();
showHistory();
sendPresence(); // others see who is here once connected
