// A shared board of draggable rectangles with everyone's cursors: the whole app.
import { CanvasClient } from "../index.js";
import { IndexedDBStorage } from "../indexeddb.js";

const params = new URLSearchParams(location.search);
const SVG = "http://www.w3.org/2000/svg";
const board = document.getElementById("board");
const me = { name: params.get("name") || `guest-${Math.floor(Math.random() * 1000)}`, colour: `hsl(${Math.floor(Math.random() * 360)} 70% 55%)` };

const client = new CanvasClient({
  url: params.get("server") || "ws://127.0.0.1:8080", // the canvas-sync service
  project: params.get("project") || "demo",
  // a token from the page's #token=... (your app would fetch one from its own backend)
  token: () => new URLSearchParams(location.hash.slice(1)).get("token"),
  storage: new IndexedDBStorage(), // unsaved changes survive a reload
});
client.warnBeforeUnload();

// --- draw what the client holds -----------------------------------------------------------
function draw(object) {
  let el = board.querySelector(`[data-id="${CSS.escape(object.id)}"]`);
  if (!el) {
    el = document.createElementNS(SVG, "rect");
    el.dataset.id = object.id;
    el.setAttribute("width", 120);
    el.setAttribute("height", 80);
    el.addEventListener("pointerdown", drag);
    board.prepend(el); // shapes under the cursors
  }
  el.setAttribute("x", object.x);
  el.setAttribute("y", object.y);
  el.setAttribute("fill", object.fill);
}

client.on("change", ({ id, object }) => {
  if (object) draw(object);
  else board.querySelector(`[data-id="${CSS.escape(id)}"]`)?.remove();
});
client.on("status", ({ status }) => {
  const el = document.getElementById("status");
  el.dataset.status = status;
  el.textContent = status === "closed" ? `closed: ${client.closeReason.message}` : status;
});
const showSaving = () => {
  document.getElementById("saving").textContent = client.unsaved ? "saving…" : "all changes saved";
};
client.on("unsaved", showSaving);
client.on("saved", showSaving);
client.on("history", ({ canUndo, canRedo }) => {
  document.getElementById("undo").disabled = !canUndo;
  document.getElementById("redo").disabled = !canRedo;
});
client.on("error", (error) => console.warn("canvas-sync:", error.code, error.message));

// --- other people's cursors -----------------------------------------------------------------
client.on("presence", () => {
  board.querySelectorAll("[data-cursor]").forEach((el) => el.remove());
  for (const [id, state] of client.others) {
    if (!state.cursor) continue;
    const label = document.createElementNS(SVG, "text");
    label.dataset.cursor = id;
    label.setAttribute("x", state.cursor[0]);
    label.setAttribute("y", state.cursor[1]);
    label.setAttribute("fill", state.colour);
    label.textContent = `▲ ${state.name}`;
    board.append(label);
  }
});
function point(event) {
  const p = board.createSVGPoint();
  p.x = event.clientX;
  p.y = event.clientY;
  const { x, y } = p.matrixTransform(board.getScreenCTM().inverse());
  return [Math.round(x), Math.round(y)];
}
board.addEventListener("pointermove", (event) => client.setPresence({ ...me, cursor: point(event) }));

// --- editing ----------------------------------------------------------------------------------
document.getElementById("add").onclick = () =>
  client.create({ type: "rect", x: 50 + Math.floor(Math.random() * 900), y: 50 + Math.floor(Math.random() * 500), fill: me.colour });
document.getElementById("undo").onclick = () => client.undo();
document.getElementById("redo").onclick = () => client.redo();

function drag(event) {
  const el = event.currentTarget;
  const id = el.dataset.id;
  const start = client.objects.get(id);
  const [x0, y0] = point(event);
  el.setPointerCapture(event.pointerId);
  client.pauseHistory(); // the whole drag is one undo step
  const move = (e) => {
    const [x, y] = point(e);
    client.update(id, { x: start.x + x - x0, y: start.y + y - y0 }); // shown at once, sent, saved
  };
  el.addEventListener("pointermove", move);
  el.addEventListener("pointerup", () => {
    el.removeEventListener("pointermove", move);
    client.resumeHistory();
  }, { once: true });
}

await client.ready; // the first snapshot is in; client.objects holds the board
for (const object of client.objects.values()) draw(object);
