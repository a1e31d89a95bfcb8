// Two clients on two replicas with the relay: edits converge, presence crosses, saved arrives.
// Env: CANVAS_URL_A, CANVAS_URL_B (ws://host:port), CANVAS_PROJECT.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { WebSocket, env, restObjects, sleep, track, until, view, within } from "./lib.mjs";

const A = env("CANVAS_URL_A");
const B = env("CANVAS_URL_B");
const PROJECT = env("CANVAS_PROJECT");

test("two clients on two replicas converge; saved arrives; the table has it all", { timeout: 60000 }, async () => {
  const ann = track(new CanvasClient({ url: A, project: PROJECT, WebSocket }));
  const bob = track(new CanvasClient({ url: () => B, project: PROJECT, WebSocket }));
  const errors = [];
  for (const c of [ann, bob]) c.on("error", (e) => errors.push(e));
  await within(Promise.all([ann.ready, bob.ready]), 10000, "both snapshots");
  assert.equal(ann.protocol, "canvas-sync.v3");
  assert.equal(bob.protocol, "canvas-sync.v3");
  assert.notEqual(ann.replica, bob.replica);

  // listening from the first edit: on a slow machine the save of the last edit can land
  // before the "saved" step below is reached, and then no event would come after it
  const saves = [];
  ann.on("saved", (e) => saves.push(e));
  const acks = [];
  for (let i = 0; i < 5; i++) {
    acks.push(ann.create({ id: `ann-${i}`, type: "rect", x: i, y: 0 }));
    acks.push(bob.create({ id: `bob-${i}`, type: "ellipse", x: 0, y: i }));
  }
  const first = await within(Promise.all(acks), 10000, "ten acks");
  assert.ok(first.every((ack) => typeof ack.stamp === "string" && ack.seq >= 1));
  await until(() => ann.objects.size === 10 && bob.objects.size === 10, { what: "ten objects on both" });

  // both edit the same object, different properties, and each other's
  ann.update("bob-0", { fill: "red" });
  bob.update("bob-0", { x: 42 });
  ann.pauseHistory();
  for (let x = 0; x <= 30; x++) ann.update("ann-1", { x, y: x });
  ann.resumeHistory();
  bob.delete("ann-4");
  await until(() => JSON.stringify(view(ann)) === JSON.stringify(view(bob)) && ann.pending === 0 && bob.pending === 0, {
    what: "the same local copy on both",
  });
  assert.deepEqual(
    view(ann).find((o) => o.id === "bob-0"),
    { fill: "red", id: "bob-0", type: "ellipse", x: 42, y: 0 },
  );
  assert.equal(ann.objects.has("ann-4"), false);

  // presence crosses replicas
  ann.setPresence({ name: "Ann", cursor: [1, 2] });
  await until(() => [...bob.others.values()].some((s) => s.name === "Ann"), { what: "Ann's presence on B" });

  // saved: nothing unsaved on either, and the table (through either replica) holds it
  await within(Promise.all([ann.saved(), bob.saved()]), 15000, "saved on both");
  assert.equal(ann.unsaved, 0);
  assert.equal(bob.unsaved, 0);
  assert.ok(saves.length >= 1 && saves.at(-1).unsaved === 0);
  await until(
    async () => JSON.stringify(await restObjects(A, PROJECT)) === JSON.stringify(view(ann)) &&
      JSON.stringify(await restObjects(B, PROJECT)) === JSON.stringify(view(ann)),
    { what: "both replicas equal to the local copies", timeout: 15000 },
  );

  // undo of the drag (one step) reaches the other replica as one more change
  assert.equal(ann.undo(), true);
  await until(() => bob.objects.get("ann-1")?.x === 1 && bob.objects.get("ann-1")?.y === 0, {
    what: "the undone drag on B",
  });
  await sleep(50);
  assert.deepEqual(errors, []);
  await Promise.all([ann.close(), bob.close()]);
});
