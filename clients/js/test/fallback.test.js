// Older servers: canvas-sync.v2 (batched frames, no saved) and v1 (a message a frame).
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

for (const [version, protocol] of [
  [2, "canvas-sync.v2"],
  [1, "canvas-sync.v1"],
]) {
  test(`a v${version} server: offered v3 first, ${protocol} chosen, an ack counts as saved`, async () => {
    const h = await harness({ CanvasClient, version });
    const client = h.make();
    const saves = [];
    client.on("saved", (e) => saves.push(e));
    await client.ready;
    assert.deepEqual(h.network.sockets[0].protocols.slice(0, 3), ["canvas-sync.v3", "canvas-sync.v2", "canvas-sync.v1"]);
    assert.equal(client.protocol, protocol);
    const ack = await client.create({ id: "r1", type: "rect" });
    assert.equal(ack.stamp, undefined);
    assert.equal(client.unsaved, 0);
    assert.deepEqual(saves, [{ seq: null, unsaved: 0 }]);
    await client.saved();
    await client.close();
  });

  test(`a v${version} server: what was not acked goes again after a reconnect, without stamps`, async () => {
    const h = await harness({ CanvasClient, version, replicas: 2 });
    let target = "ws://a";
    const client = h.make({ url: () => target });
    await client.ready;
    await client.create({ id: "r1", type: "rect" });
    h.a.muted = true;
    client.update("r1", { x: 1 });
    await flush();
    h.a.save();
    h.a.kill();
    target = "ws://b";
    await h.clock.advance(1000);
    assert.equal(client.unsaved, 0);
    const sent = h.b.received.filter((m) => m.op === "update");
    assert.deepEqual(sent.map((m) => [m.props, m.stamp, m.retry]), [[{ x: 1 }, undefined, undefined]]);
    assert.deepEqual(h.b.visible(), [{ id: "r1", type: "rect", x: 1 }]);
    await client.close();
  });
}

test("a server that picks no subprotocol is spoken to as v1", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ protocols: ["canvas-sync.v0"] });
  await client.ready;
  assert.equal(client.protocol, "canvas-sync.v1");
  await client.create({ id: "r1", type: "rect" });
  assert.equal(client.unsaved, 0);
  await client.close();
});

test("a v3 client that reconnects to a v2 replica sends its acked changes again without stamps", async () => {
  const h = await harness({ CanvasClient, replicas: 2 });
  h.b.version = 2;
  let target = "ws://a";
  const client = h.make({ url: () => target });
  await client.ready;
  await client.create({ id: "r1", type: "rect", x: 1 });
  assert.equal(client.unsaved, 1);
  h.a.kill();
  target = "ws://b";
  await h.clock.advance(1000);
  assert.equal(client.protocol, "canvas-sync.v2");
  const [create] = h.b.received.filter((m) => m.op === "create");
  assert.equal(create.stamp, undefined);
  assert.equal(client.unsaved, 0);
  assert.deepEqual(h.b.visible(), [{ id: "r1", type: "rect", x: 1 }]);
  await client.close();
});
