// Reconnects: jittered exponential backoff, its reset, liveness by ping, status events.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness, record } from "../testing/fake-server.js";

const retries = (events) => events.filter(([name, e]) => name === "status" && e.retryIn !== undefined).map(([, e]) => e.retryIn);

async function retryDelays(h, count) {
  const client = h.make();
  const events = record(client, ["status"]);
  await client.ready;
  h.a.kill();
  await flush();
  for (let i = 0; i < count; i++) await h.clock.advance(retries(events).at(-1));
  await client.close();
  return retries(events);
}

test("reconnects after 1 s, doubling to 30 s, with jitter", async () => {
  const h = await harness({ CanvasClient, client: { random: () => 0.5 } });
  assert.deepEqual(await retryDelays(h, 7), [750, 1500, 3000, 6000, 12000, 22500, 22500, 22500]);
  const low = await harness({ CanvasClient, client: { random: () => 0 } });
  assert.deepEqual(await retryDelays(low, 6), [500, 1000, 2000, 4000, 8000, 15000, 15000]);
  const high = await harness({ CanvasClient, client: { random: () => 0.999999 } });
  const delays = await retryDelays(high, 6);
  assert.deepEqual(delays.map(Math.round), [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
});

test("the status goes connecting, open, reconnecting, open; every try is an event", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  const events = record(client, ["status"]);
  assert.equal(client.status, "connecting");
  await client.ready;
  assert.equal(client.status, "open");
  h.a.closeAll(1001, "shutting down");
  await flush();
  assert.equal(client.status, "reconnecting");
  await h.clock.advance(750);
  assert.equal(client.status, "open");
  assert.deepEqual(
    events.map(([, e]) => e.status),
    ["open", "reconnecting", "open"],
  );
  assert.equal(events[1][1].retryIn, 750);
  await client.close();
  assert.equal(client.status, "closed");
  assert.equal(client.closeReason.code, "closed");
});

test("the backoff starts again after a connection stayed up 10 s, not before", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  const events = record(client, ["status"]);
  await client.ready;
  h.a.kill();
  await flush();
  await h.clock.advance(750); // refused
  await h.clock.advance(1500); // refused
  h.a.start();
  await h.clock.advance(3000); // connects
  assert.equal(client.status, "open");
  await h.clock.advance(5000); // open 5 s only
  h.a.closeAll(1001);
  await flush();
  assert.equal(retries(events).at(-1), 6000, "a short connection does not reset the backoff");
  await h.clock.advance(6000);
  assert.equal(client.status, "open");
  await h.clock.advance(10000);
  h.a.closeAll(1001);
  await flush();
  assert.equal(retries(events).at(-1), 750, "a stable connection resets it");
  await client.close();
});

test("a half-open socket is noticed by its silence and replaced within seconds", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  await h.clock.advance(12000);
  const pings = h.a.received.filter((m) => m.op === "ping").length;
  assert.ok(pings >= 2, `pings every 5 s (${pings})`);
  assert.equal(client.status, "open", "pongs keep it alive");
  h.a.blackholed = true; // nothing in, nothing out, no close
  const lost = h.clock.now();
  while (client.status === "open") await h.clock.advance(250);
  const noticed = h.clock.now() - lost;
  assert.ok(noticed <= 12000, `noticed after ${noticed} ms`);
  h.a.blackholed = false;
  await h.clock.advance(1000);
  assert.equal(client.status, "open");
  assert.equal(h.a.connections.size, 1, "the silent socket was dropped, a new one serves");
  await client.close();
});

test("a handshake that never completes is given up and tried again", async () => {
  const h = await harness({ CanvasClient });
  h.a.silent = true;
  const client = h.make();
  await h.clock.advance(10500);
  assert.equal(client.status, "reconnecting");
  h.a.silent = false;
  await h.clock.advance(1000);
  assert.equal(client.status, "open");
  await client.close();
});

test("the url function is called on every connect: the client moves to another replica", async () => {
  const h = await harness({ CanvasClient, replicas: 2 });
  const calls = [];
  let target = "ws://a";
  const client = h.make({
    url: async () => {
      calls.push(target);
      return target;
    },
  });
  await client.ready;
  assert.equal(client.replica, "wsa");
  target = "ws://b";
  h.a.kill();
  await flush();
  await h.clock.advance(1000);
  assert.equal(client.replica, "wsb");
  assert.deepEqual(calls, ["ws://a", "ws://b"]);
  await client.close();
});

test("reconnect() skips the wait (a browser's online event)", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  h.a.kill();
  await flush();
  await h.clock.advance(750);
  await h.clock.advance(1500);
  h.a.start();
  client.reconnect();
  await flush();
  assert.equal(client.status, "open");
  await client.close();
});

test("close() stops for good: no more tries, the socket closed with 1000", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make();
  await client.ready;
  const socket = h.network.sockets.at(-1);
  await client.close();
  await flush();
  assert.equal(socket.readyState, 3);
  await h.clock.advance(60000);
  assert.equal(h.network.sockets.length, 1);
  await assert.rejects(client.create({ type: "rect" }), { code: "closed" });
});
