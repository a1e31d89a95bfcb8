// Presence: throttled (the latest state wins), others' presence with leave events.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

const sentPresence = (replica) => replica.received.filter((m) => m.op === "presence").map((m) => m.state);

test("setPresence sends at once, then at most every 50 ms, the latest state", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  for (let x = 0; x < 10; x++) client.setPresence({ cursor: [x, 0] });
  await flush();
  assert.deepEqual(sentPresence(h.a), [{ cursor: [0, 0] }]);
  await h.clock.advance(49);
  assert.equal(sentPresence(h.a).length, 1);
  await h.clock.advance(1);
  assert.deepEqual(sentPresence(h.a), [{ cursor: [0, 0] }, { cursor: [9, 0] }]);
  await h.clock.advance(500);
  assert.equal(sentPresence(h.a).length, 2, "nothing new, nothing sent");
  for (let i = 0; i < 100; i++) {
    client.setPresence({ cursor: [i, i] });
    await h.clock.advance(5);
  }
  await h.clock.advance(100);
  const n = sentPresence(h.a).length - 2;
  assert.ok(n >= 10 && n <= 11, `500 ms of moves at most every 50 ms: ${n}`);
  assert.deepEqual(sentPresence(h.a).at(-1), { cursor: [99, 99] });
  await client.close();
});

test("the interval is an option", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ presenceInterval: 200 });
  await client.ready;
  client.setPresence({ n: 1 });
  client.setPresence({ n: 2 });
  await h.clock.advance(199);
  assert.equal(sentPresence(h.a).length, 1);
  await h.clock.advance(1);
  assert.equal(sentPresence(h.a).length, 2);
  await client.close();
});

test("others: who is here from the snapshot, their updates, and leave events", async () => {
  const h = await harness({ CanvasClient });
  const ann = h.make();
  await ann.ready;
  ann.setPresence({ name: "Ann" });
  await flush();
  const bob = h.make();
  const events = [];
  bob.on("presence", (e) => events.push(e));
  await bob.ready;
  assert.deepEqual([...bob.others.values()], [{ name: "Ann" }]);
  const [annId] = bob.others.keys();
  await h.clock.advance(60);
  ann.setPresence({ name: "Ann", cursor: [1, 2] });
  await flush();
  assert.deepEqual(bob.others.get(annId), { name: "Ann", cursor: [1, 2] });
  await ann.close();
  await flush();
  assert.equal(bob.others.size, 0);
  assert.deepEqual(events, [
    { client: annId, state: { name: "Ann" }, sub: undefined, left: false },
    { client: annId, state: { name: "Ann", cursor: [1, 2] }, sub: undefined, left: false },
    { client: annId, state: null, left: true },
  ]);
  await bob.close();
});

test("after a reconnect the latest presence goes again; others from the old socket leave", async () => {
  const h = await harness({ CanvasClient });
  const ann = h.make();
  const bob = h.make();
  await Promise.all([ann.ready, bob.ready]);
  ann.setPresence({ name: "Ann" });
  bob.setPresence({ name: "Bob" });
  await flush();
  assert.equal(ann.others.size, 1);
  const left = [];
  ann.on("presence", (e) => e.left && left.push(e.client));
  h.a.closeAll(1001);
  await flush();
  assert.equal(ann.others.size, 0, "nobody is known to be here while disconnected");
  assert.equal(left.length, 1);
  await h.clock.advance(1000);
  await flush();
  assert.deepEqual([...ann.others.values()], [{ name: "Bob" }]);
  assert.deepEqual([...bob.others.values()], [{ name: "Ann" }]);
  await Promise.all([ann.close(), bob.close()]);
});

test("presence set while offline goes out once connected", async () => {
  const h = await harness({ CanvasClient });
  h.a.up = false;
  const client = h.make();
  client.setPresence({ name: "Eve" });
  await h.clock.advance(100);
  assert.equal(sentPresence(h.a).length, 0);
  h.a.up = true;
  await h.clock.advance(1000);
  assert.deepEqual(sentPresence(h.a), [{ name: "Eve" }]);
  await client.close();
});
