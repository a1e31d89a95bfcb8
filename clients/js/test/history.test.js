// Undo and redo of this client's own changes: a drag is one step, and other people's
// changes are never undone.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

const state = (client) => [...client.objects.values()].map((o) => ({ ...o })).sort((a, b) => (a.id < b.id ? -1 : 1));

async function two() {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  return { ...h, me, other };
}

test("undo and redo a create, an update and a delete", async () => {
  const { a, me, other } = await two();
  me.create({ id: "r1", type: "rect", x: 1 });
  me.update("r1", { x: 2, fill: "red" });
  me.delete("r1");
  await flush();
  assert.equal(me.canUndo, true);
  assert.equal(me.undo(), true); // the delete
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 2, fill: "red" }]);
  assert.equal(me.undo(), true); // the update
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 1 }]);
  assert.equal(me.undo(), true); // the create
  assert.deepEqual(state(me), []);
  assert.equal(me.undo(), false);
  assert.equal(me.canUndo, false);
  assert.equal(me.redo(), true);
  assert.equal(me.redo(), true);
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 2, fill: "red" }]);
  await flush();
  assert.deepEqual(a.visible(), [{ fill: "red", id: "r1", type: "rect", x: 2 }]);
  assert.deepEqual(state(other), state(me), "undo and redo are ordinary changes for everyone else");
  await Promise.all([me.close(), other.close()]);
});

test("a drag between pauseHistory and resumeHistory is one step", async () => {
  const { me, other } = await two();
  await me.create({ id: "r1", type: "rect", x: 0, y: 0 });
  me.pauseHistory();
  for (let i = 1; i <= 20; i++) me.update("r1", { x: i, y: i * 2 });
  me.resumeHistory();
  await flush();
  me.undo();
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 0, y: 0 }]);
  me.redo();
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 20, y: 40 }]);
  await Promise.all([me.close(), other.close()]);
});

test("batch(fn) makes one step, also for an async fn", async () => {
  const { me, other } = await two();
  me.batch(() => {
    me.create({ id: "a", type: "rect" });
    me.create({ id: "b", type: "rect" });
  });
  await me.batch(async () => {
    me.update("a", { x: 1 });
    await flush();
    me.update("b", { x: 1 });
  });
  me.undo();
  assert.deepEqual(state(me), [
    { id: "a", type: "rect" },
    { id: "b", type: "rect" },
  ]);
  me.undo();
  assert.deepEqual(state(me), []);
  await Promise.all([me.close(), other.close()]);
});

test("undo never undoes someone else's later change of a property", async () => {
  const { me, other } = await two();
  await me.create({ id: "r1", type: "rect", x: 0, fill: "blue" });
  await me.update("r1", { x: 10, fill: "red" });
  await flush();
  await other.update("r1", { fill: "green" }); // theirs, later
  await flush();
  me.undo();
  await flush();
  assert.deepEqual(state(me), [{ id: "r1", type: "rect", x: 0, fill: "green" }], "x undone, their fill kept");
  assert.deepEqual(state(other), state(me));
  await Promise.all([me.close(), other.close()]);
});

test("a step whose every change someone else overwrote is skipped; their changes are not in my history", async () => {
  const { me, other } = await two();
  await me.create({ id: "r1", type: "rect", x: 0 });
  await me.update("r1", { x: 5 });
  await me.create({ id: "r2", type: "rect" });
  await flush();
  await other.update("r1", { x: 7 });
  await other.create({ id: "theirs", type: "rect" });
  await flush();
  assert.equal(me.undo(), true, "r2's create");
  assert.equal(me.undo(), false, "the update of x was overwritten, and r1 is no longer as I left it");
  assert.deepEqual(state(me), [
    { id: "r1", type: "rect", x: 7 },
    { id: "theirs", type: "rect" },
  ]);
  await flush();
  assert.deepEqual(state(other), state(me));
  await Promise.all([me.close(), other.close()]);
});

test("undo of a delete does not resurrect what someone else already recreated; a new change clears redo", async () => {
  const { me, other } = await two();
  await me.create({ id: "r1", type: "rect", x: 1 });
  await me.delete("r1");
  await flush();
  await other.create({ id: "r1", type: "ellipse" });
  await flush();
  assert.equal(me.undo(), false, "nothing left to undo there: the delete is moot, the create is theirs now");
  assert.deepEqual(state(me), [{ id: "r1", type: "ellipse" }]);
  await me.create({ id: "r2", type: "rect" });
  me.undo();
  assert.equal(me.canRedo, true);
  me.create({ id: "r3", type: "rect" });
  assert.equal(me.canRedo, false);
  await Promise.all([me.close(), other.close()]);
});

test("history events say whether undo and redo are possible", async () => {
  const { me, other } = await two();
  const seen = [];
  me.on("history", (e) => seen.push([e.canUndo, e.canRedo]));
  me.create({ id: "r1", type: "rect" });
  me.undo();
  me.redo();
  assert.deepEqual(seen, [
    [true, false],
    [false, true],
    [true, false],
  ]);
  await Promise.all([me.close(), other.close()]);
});
