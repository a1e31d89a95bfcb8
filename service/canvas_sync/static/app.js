// canvas-sync demo page: an SVG canvas on one project, live over /ws/<project>.
//
// Other people show as cursors in their colour with their name, and their selection as
// an outline: presence, sent at most 20 times a second and never stored.
//
// Edits are applied locally at once and sent. Until the server acks them they sit in
// `unacked`; edits made while disconnected wait in `outbox`. On every (re)connect the
// server's snapshot replaces the local state, then the unacked and queued edits are
// re-applied and sent again, so nothing is silently dropped: what the server refuses
// (say, an update of a shape someone else deleted meanwhile) is shown as a message.

const params = new URLSearchParams(location.search);
const project = params.get("project") || "demo";
const COLOURS = ["#e53935", "#fb8c00", "#fdd835", "#43a047", "#00acc1", "#1e88e5", "#8e24aa", "#6d4c41", "#ffffff"];
const DRAG_INTERVAL_MS = 33; // about 30 updates a second while dragging
const PRESENCE_INTERVAL_MS = 50; // the server relays at most 20 a second per client anyway
const NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"];
const SVG_NS = "http://www.w3.org/2000/svg";

const board = document.getElementById("board");
const statusEl = document.getElementById("status");
const queuedEl = document.getElementById("queued");
const clientId = Math.random().toString(36).slice(2, 8);

const me = {
  name: params.get("name") || `${NAMES[Math.floor(Math.random() * NAMES.length)]}`,
  colour: COLOURS[Math.floor(Math.random() * (COLOURS.length - 1))],
};
let objects = new Map(); // id -> object, as the user sees it
const others = new Map(); // client -> presence state (cursor, selection, name, colour)
let presenceSent = 0;
let presenceTimer = null;
let selected = null;
let colour = COLOURS[5];
let ws = null;
let online = false;
let attempt = 0;
let counter = 0;
let reqCounter = 0;
const unacked = new Map(); // req -> message sent and not yet answered
let outbox = []; // messages made while offline

document.getElementById("project").textContent = project;

// --- connection ---------------------------------------------------------------------------

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function showQueued() {
  const n = outbox.length + unacked.size;
  queuedEl.hidden = n === 0;
  queuedEl.textContent = `${n} edit${n === 1 ? "" : "s"} not yet confirmed`;
  queuedEl.dataset.count = String(n);
}

// The token travels as a WebSocket subprotocol (browsers cannot set headers there): one
// given in the page's #token=... fragment (never sent to a server), else a development
// token from /dev/token, which only `canvas-sync dev` serves. None: authentication is off.
async function token() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) return given;
  try {
    const response = await fetch(`/dev/token?project=${encodeURIComponent(project)}&name=${encodeURIComponent(me.name)}`);
    if (response.ok) return (await response.json()).token;
  } catch (error) {
    // offline, or no dev server: try without
  }
  return null;
}

async function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const bearer = await token();
  // v2: a frame may hold several messages (a JSON array), so a busy board costs fewer frames
  const protocols = bearer ? ["canvas-sync.v2", `canvas-sync.bearer.${bearer}`] : ["canvas-sync.v2"];
  ws = new WebSocket(`${scheme}://${location.host}/ws/${encodeURIComponent(project)}`, protocols);
  setStatus("connecting", attempt ? `reconnecting (try ${attempt + 1})…` : "connecting…");
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    for (const message of Array.isArray(data) ? data : [data]) receive(message);
  };
  ws.onclose = (event) => {
    online = false;
    const delay = Math.min(5000, 250 * 2 ** attempt) * (0.75 + Math.random() / 2);
    attempt += 1;
    setStatus("offline", `offline (code ${event.code}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  };
}

function receive(message) {
  switch (message.op) {
    case "snapshot": {
      online = true;
      attempt = 0;
      document.getElementById("replica").textContent = message.replica;
      setStatus("online", "online");
      objects = new Map(message.objects.map((o) => [o.id, o]));
      others.clear();
      for (const p of message.presence ?? []) others.set(p.client, p.state);
      renderPresence();
      sendPresence(true);
      // Replay what the server has not confirmed, then what waited offline.
      const replay = [...unacked.values(), ...outbox].filter((m) => stillMeaningful(m));
      unacked.clear();
      outbox = [];
      replay.forEach((m) => { applyLocally(m); transmit(m); });
      renderAll();
      break;
    }
    case "ack":
      unacked.delete(message.req);
      break;
    case "error":
      unacked.delete(message.req);
      toast(`Not saved: ${message.message} (${message.code})`);
      break;
    case "upsert":
      objects.set(message.object.id, message.object);
      render(message.object);
      break;
    case "delete":
      objects.delete(message.id);
      document.querySelector(`[data-id="${CSS.escape(message.id)}"]`)?.remove();
      if (selected === message.id) selected = null;
      break;
    case "presence":
      others.set(message.client, message.state);
      renderPresence();
      break;
    case "presence_leave":
      others.delete(message.client);
      renderPresence();
      break;
  }
  showQueued();
}

// A replayed create whose object the snapshot already has was applied before the drop.
function stillMeaningful(message) {
  if (message.op === "create") return !objects.has(message.object.id);
  if (message.op === "delete") return objects.has(message.id);
  return true;
}

function transmit(message) {
  message.req = `${clientId}-${++reqCounter}`;
  unacked.set(message.req, message);
  ws.send(JSON.stringify(message));
}

function send(message) {
  applyLocally(message);
  if (online && ws.readyState === WebSocket.OPEN) {
    transmit(message);
  } else {
    // Coalesce offline drags: one queued update per object and property set.
    const last = outbox[outbox.length - 1];
    if (message.op === "update" && last?.op === "update" && last.id === message.id) {
      Object.assign(last.props, message.props);
    } else {
      outbox.push(message);
    }
  }
  showQueued();
}

function applyLocally(message) {
  if (message.op === "create") {
    objects.set(message.object.id, { ...message.object });
  } else if (message.op === "update") {
    const current = objects.get(message.id);
    if (!current) return;
    for (const [key, value] of Object.entries(message.props)) {
      if (value === null) delete current[key]; else current[key] = value;
    }
  } else if (message.op === "delete") {
    objects.delete(message.id);
    document.querySelector(`[data-id="${CSS.escape(message.id)}"]`)?.remove();
    return;
  }
  const object = objects.get(message.object?.id ?? message.id);
  if (object) render(object);
}

// --- drawing ------------------------------------------------------------------------------

function renderAll() {
  board.replaceChildren();
  for (const object of objects.values()) render(object);
  const layer = document.createElementNS(SVG_NS, "g");
  layer.id = "presence"; // other people's cursors, always on top
  board.appendChild(layer);
  renderPresence();
}

function render(object) {
  const tag = object.type === "ellipse" ? "ellipse" : object.type === "text" ? "text" : "rect";
  let el = board.querySelector(`[data-id="${CSS.escape(object.id)}"]`);
  if (!el || el.tagName !== tag) {
    el?.remove();
    el = document.createElementNS(SVG_NS, tag);
    el.dataset.id = object.id;
    el.setAttribute("role", "img");
    el.addEventListener("pointerdown", startDrag);
    board.insertBefore(el, document.getElementById("presence"));
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
}

function select(id) {
  selected = id;
  board.querySelectorAll("[data-id]").forEach((el) => el.classList.toggle("selected", el.dataset.id === id));
  sendPresence();
}

// --- presence: where the others are -------------------------------------------------------

let cursor = null;

function sendPresence(now = false) {
  if (!online || ws.readyState !== WebSocket.OPEN) return;
  const wait = PRESENCE_INTERVAL_MS - (performance.now() - presenceSent);
  if (!now && wait > 0) {
    presenceTimer ??= setTimeout(() => { presenceTimer = null; sendPresence(true); }, wait);
    return;
  }
  presenceSent = performance.now();
  ws.send(JSON.stringify({ op: "presence", state: { ...me, cursor, selection: selected } }));
}

function renderPresence() {
  const layer = document.getElementById("presence");
  layer.replaceChildren();
  board.querySelectorAll("[data-selected-by]").forEach((el) => {
    el.removeAttribute("data-selected-by");
    el.style.removeProperty("outline");
  });
  for (const [client, state] of others) {
    const colour = /^#[0-9a-f]{6}$/i.test(state.colour ?? "") ? state.colour : "#555";
    const name = String(state.name ?? "someone").slice(0, 32);
    if (state.selection) {
      const el = board.querySelector(`[data-id="${CSS.escape(String(state.selection))}"]`);
      if (el) {
        el.dataset.selectedBy = name;
        el.style.outline = `3px dashed ${colour}`;
      }
    }
    if (!Array.isArray(state.cursor)) continue;
    const [x, y] = state.cursor.map(Number);
    const g = document.createElementNS(SVG_NS, "g");
    g.dataset.cursor = client;
    g.dataset.name = name;
    g.setAttribute("transform", `translate(${x} ${y})`);
    g.setAttribute("pointer-events", "none");
    const arrow = document.createElementNS(SVG_NS, "path");
    arrow.setAttribute("d", "M0 0 L0 22 L6 16 L11 27 L15 25 L10 15 L18 15 Z");
    arrow.setAttribute("fill", colour);
    arrow.setAttribute("stroke", "#fff");
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", "16");
    label.setAttribute("y", "40");
    label.setAttribute("fill", colour);
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

function startDrag(event) {
  const id = event.currentTarget.dataset.id;
  const object = objects.get(id);
  if (!object) return;
  select(id);
  event.currentTarget.setPointerCapture(event.pointerId);
  const origin = toSvg(event);
  const start = { x: object.x ?? 0, y: object.y ?? 0 };
  let lastSent = 0;
  let pending = null;
  let moved = false;
  const target = event.currentTarget;

  const move = (e) => {
    const p = toSvg(e);
    const props = { x: Math.round(start.x + p.x - origin.x), y: Math.round(start.y + p.y - origin.y) };
    moved = true;
    Object.assign(objects.get(id) ?? {}, props);
    render(objects.get(id));
    pending = props;
    if (performance.now() - lastSent >= DRAG_INTERVAL_MS) {
      lastSent = performance.now();
      send({ op: "update", id, props: pending });
      pending = null;
    }
  };
  const up = () => {
    target.removeEventListener("pointermove", move);
    target.removeEventListener("pointerup", up);
    target.removeEventListener("pointercancel", up);
    const o = objects.get(id);
    if (o && moved) send({ op: "update", id, props: { x: o.x, y: o.y } }); // the final position, always
  };
  target.addEventListener("pointermove", move);
  target.addEventListener("pointerup", up);
  target.addEventListener("pointercancel", up);
}

function add(type) {
  counter += 1;
  const object = {
    id: `${clientId}-${counter}`, type, fill: colour,
    x: 100 + Math.round(Math.random() * 1100), y: 80 + Math.round(Math.random() * 600),
    ...(type === "text" ? { text: "Text" } : { w: 180, h: 120 }),
  };
  send({ op: "create", object });
  select(object.id);
}

function removeSelected() {
  if (selected && objects.has(selected)) {
    send({ op: "delete", id: selected });
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

// --- toolbar ------------------------------------------------------------------------------

document.querySelectorAll("[data-add]").forEach((b) => b.addEventListener("click", () => add(b.dataset.add)));
document.getElementById("delete").addEventListener("click", removeSelected);
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
    if (selected && objects.has(selected)) send({ op: "update", id: selected, props: { fill: c } });
  });
  palette.appendChild(b);
}
board.addEventListener("pointerdown", (e) => { if (e.target === board) select(null); });
board.addEventListener("pointermove", (e) => {
  const p = toSvg(e);
  cursor = [Math.round(p.x), Math.round(p.y)];
  sendPresence();
});
board.addEventListener("pointerleave", () => { cursor = null; sendPresence(); });
document.getElementById("me").textContent = me.name;
document.getElementById("me").style.color = me.colour;
renderAll();
document.addEventListener("keydown", (e) => {
  if ((e.key === "Delete" || e.key === "Backspace") && document.activeElement?.tagName !== "INPUT") removeSelected();
});

connect();
