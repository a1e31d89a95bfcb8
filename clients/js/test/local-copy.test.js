// The local copy: this client's changes show at once; the server's events never undo a
// property still waiting for its ack; after a reconnect the copy equals the server's.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness, record } from "../testing/fake-server.js";

const plain = (map) => Object.fromEntries([...map].map(([id, o]) => [id, { ...o }]));
const byId = (objects) => Object.fromEntries(objects.map((o) => [o.id, o]));

test("a change shows at once and resolves with its ack (stamp and seq)", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  const changes = record(client, ["change"]);
  const done = client.create({ id: "r1", type: "rect", x: 1 });
  assert.deepEqual({ ...client.objects.get("r1") }, { id: "r1", type: "rect", x: 1 });
  assert.equal(changes[0][1].origin, "local");
  assert.equal(client.unsaved, 1);
  assert.equal(client.pending, 1);
  const ack = await done;
  assert.equal(ack.op, "ack");
  assert.equal(ack.seq, 1);
  assert.match(ack.stamp, /^\d+\.\d+\.wsa$/);
  assert.equal(client.pending, 0);
  assert.equal(client.unsaved, 1, "acked is not saved");
  assert.ok(Object.isFrozen(client.objects.get("r1")));
  await client.close();
});

test("create without an id gets one; the ack names it", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  const ack = await client.create({ type: "rect" });
  assert.ok(client.objects.has(ack.id));
  assert.deepEqual(h.a.visible().map((o) => o.id), [ack.id]);
  await client.close();
});

test("a server event never undoes a property of a change still waiting for its ack", async () => {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  await other.create({ id: "r1", type: "rect", x: 0, fill: "blue" });
  await flush();
  const seen = [];
  me.on("change", (e) => seen.push({ ...e.object }));
  other.update("r1", { x: 7, fill: "red" }); // reaches the server first
  me.update("r1", { x: 5 }); // then this one
  assert.equal(me.objects.get("r1").x, 5);
  await flush();
  // me got other's upsert (x 7, red) before its own ack: x stayed 5, fill turned red
  assert.deepEqual(seen, [{ id: "r1", type: "rect", x: 5, fill: "blue" }, { id: "r1", type: "rect", x: 5, fill: "red" }]);
  assert.deepEqual(plain(me.objects), byId(h.a.visible()));
  assert.deepEqual(plain(other.objects), byId(h.a.visible()));
  assert.equal(h.a.visible()[0].x, 5);
  await Promise.all([me.close(), other.close()]);
});

test("after its ack, the server's events rule that property again", async () => {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  await me.create({ id: "r1", type: "rect", x: 1 });
  await me.update("r1", { x: 2 });
  await other.update("r1", { x: 3 });
  await flush();
  assert.equal(me.objects.get("r1").x, 3);
  await Promise.all([me.close(), other.close()]);
});

test("someone else's delete wins over an update still waiting", async () => {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  await other.create({ id: "r1", type: "rect" });
  await flush();
  const errors = record(me, ["error"]);
  other.delete("r1");
  const update = me.update("r1", { x: 1 });
  await assert.rejects(update, { code: "not_found" });
  assert.equal(me.objects.has("r1"), false);
  assert.equal(errors[0][1].code, "not_found");
  assert.equal(me.unsaved, 0);
  await Promise.all([me.close(), other.close()]);
});

test("a refused change is taken back, rejected and reported", async () => {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  await other.create({ id: "r1", type: "rect", x: 1 });
  await flush();
  const events = record(me, ["change", "error"]);
  const create = me.create({ id: "r1", type: "ellipse", x: 9 });
  assert.equal(me.objects.get("r1").type, "ellipse");
  const error = await create.catch((e) => e);
  assert.equal(error.code, "conflict");
  assert.deepEqual(error.change, { op: "create", id: "r1", object: { id: "r1", type: "ellipse", x: 9 } });
  assert.deepEqual({ ...me.objects.get("r1") }, { id: "r1", type: "rect", x: 1 });
  assert.deepEqual(
    events.map(([name, e]) => [name, e.origin ?? e.code]),
    [
      ["change", "local"],
      ["error", "conflict"],
      ["change", "refused"],
    ],
  );
  await Promise.all([me.close(), other.close()]);
});

test("a change too large for a frame is refused locally, never sent", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ maxMessageBytes: 200 });
  await client.ready;
  await assert.rejects(client.create({ id: "big", type: "text", text: "x".repeat(300) }), { code: "too_large" });
  assert.equal(client.objects.has("big"), false);
  assert.equal(h.a.received.filter((m) => m.op === "create").length, 0);
  await client.close();
});

test("after a reconnect the local copy equals the server's, with what happened meanwhile", async () => {
  const h = await harness({ CanvasClient, replicas: 2 });
  let target = "ws://a";
  const me = h.make({ url: () => target });
  const other = h.make({ url: "ws://b" });
  await Promise.all([me.ready, other.ready]);
  await me.create({ id: "mine", type: "rect", x: 1 });
  await me.create({ id: "gone", type: "rect" });
  h.a.save();
  await flush();
  h.b.pull();
  await flush();
  h.a.kill(); // me is away
  target = "ws://b";
  await other.update("mine", { fill: "red" });
  await other.delete("gone");
  await other.create({ id: "theirs", type: "ellipse" });
  me.update("mine", { x: 2 }); // made while away
  await h.clock.advance(1000);
  assert.equal(me.status, "open");
  assert.deepEqual(plain(me.objects), byId(h.b.visible()));
  assert.deepEqual(h.b.visible(), [
    { fill: "red", id: "mine", type: "rect", x: 2 },
    { id: "theirs", type: "ellipse" },
  ]);
  await Promise.all([me.close(), other.close()]);
});

test("the objects Map is the same instance throughout; change events carry before and after", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  const map = client.objects;
  await client.ready;
  const events = record(client, ["change"]);
  await client.create({ id: "a", type: "rect", x: 1 });
  await client.update("a", { x: 2, y: null });
  await client.delete("a");
  assert.equal(client.objects, map);
  assert.deepEqual(
    events.map(([, e]) => [e.previous?.x ?? null, e.object?.x ?? null]),
    [
      [null, 1],
      [1, 2],
      [2, null],
    ],
  );
  await client.close();
});
