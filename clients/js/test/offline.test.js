// Offline: changes queue, show at once, go out in order on reconnect; unsaved and
// saved(); the beforeunload helper.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

test("changes made before the first connection wait and go out once connected", async () => {
  const h = await harness({ CanvasClient });
  h.a.up = false;
  const client = h.make();
  const done = client.create({ id: "r1", type: "rect", x: 1 });
  client.update("r1", { x: 2 });
  await flush();
  assert.equal(client.status, "reconnecting");
  assert.equal(client.objects.get("r1").x, 2);
  assert.equal(client.unsaved, 1, "an update of a change not yet sent merges into it");
  h.a.up = true;
  await h.clock.advance(1000);
  await done;
  assert.deepEqual(h.a.visible(), [{ id: "r1", type: "rect", x: 2 }]);
  await client.close();
});

test("changes made while disconnected queue in order, an offline drag as one update", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  const unsaved = [];
  client.on("unsaved", (e) => unsaved.push(e.unsaved));
  await client.ready;
  await client.create({ id: "a", type: "rect" });
  await client.create({ id: "b", type: "rect" });
  h.a.save();
  await flush();
  h.a.kill();
  await flush();
  const promises = [];
  for (let x = 0; x < 30; x++) promises.push(client.update("a", { x }));
  promises.push(client.update("b", { y: 1 }));
  promises.push(client.delete("b"));
  promises.push(client.create({ id: "c", type: "text" }));
  promises.push(client.update("a", { fill: "red" }));
  assert.equal(client.pending, 4, "a's drag and fill: one update; b's update and delete; c");
  assert.equal(client.unsaved, 4);
  assert.deepEqual(
    [...client.objects.values()].map((o) => ({ ...o })),
    [
      { id: "a", type: "rect", x: 29, fill: "red" },
      { id: "c", type: "text" },
    ],
  );
  h.a.start();
  await h.clock.advance(1000);
  await Promise.all(promises);
  const sent = h.a.received.filter((m) => m.op !== "ping").map((m) => [m.op, m.id ?? m.object.id]);
  assert.deepEqual(sent, [
    ["create", "a"],
    ["create", "b"],
    ["update", "a"],
    ["update", "b"],
    ["delete", "b"],
    ["create", "c"],
  ]);
  assert.deepEqual(h.a.received.find((m) => m.op === "update" && m.id === "a" && m.conn === "c2")?.props, { x: 29, fill: "red" });
  assert.deepEqual(h.a.visible(), [
    { fill: "red", id: "a", type: "rect", x: 29 },
    { id: "c", type: "text" },
  ]);
  h.a.save();
  await flush();
  assert.equal(client.unsaved, 0);
  assert.equal(unsaved.at(-1), 0);
  await client.close();
});

test("a queued change whose object another client deleted meanwhile is refused, not silently lost", async () => {
  const h = await harness({ CanvasClient });
  const me = h.make();
  const other = h.make();
  await Promise.all([me.ready, other.ready]);
  await me.create({ id: "r1", type: "rect" });
  await flush();
  h.a.closeAll(1001);
  await flush();
  const update = me.update("r1", { x: 1 }); // me is away...
  await other.close();
  const again = h.make();
  await again.ready; // ...while someone else deletes it
  await again.delete("r1");
  await h.clock.advance(1000);
  assert.equal(me.status, "open");
  await assert.rejects(update, { code: "not_found" });
  assert.equal(me.objects.has("r1"), false);
  await Promise.all([me.close(), again.close()]);
});

test("warnBeforeUnload asks only while something is unsaved, and can be removed", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  const target = new EventTarget();
  const stop = client.warnBeforeUnload(target);
  const leave = () => {
    const event = new Event("beforeunload", { cancelable: true });
    target.dispatchEvent(event);
    return event.defaultPrevented;
  };
  assert.equal(leave(), false);
  const created = client.create({ id: "r1", type: "rect" });
  assert.equal(leave(), true);
  await created;
  assert.equal(leave(), true, "acked is not saved");
  h.a.save();
  await flush();
  assert.equal(leave(), false);
  client.update("r1", { x: 1 });
  stop();
  assert.equal(leave(), false);
  await client.close();
});
