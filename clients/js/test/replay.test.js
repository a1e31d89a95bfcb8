// Every change is kept until `saved` and sent again after a reconnect, in order: acked
// ones with their stamps, the others as new. A replica killed at any moment loses nothing.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

const changesOf = (messages) =>
  messages.filter((m) => ["create", "update", "delete"].includes(m.op)).map(({ op, id, object, props, stamp, retry }) => ({
    op,
    id: id ?? object.id,
    ...(props ? { props } : {}),
    ...(stamp ? { stamp } : {}),
    ...(retry ? { retry } : {}),
  }));

async function onTwoReplicas(options = {}) {
  const h = await harness({ CanvasClient, replicas: 2, ...options });
  let target = "ws://a";
  const client = h.make({ url: () => target });
  await client.ready;
  const moveTo = (base) => {
    target = base;
  };
  return { ...h, client, moveTo };
}

test("unsaved changes go again after a reconnect to another replica, in order, with their stamps", async () => {
  const { a, b, client, clock, moveTo, network } = await onTwoReplicas();
  const acks = [];
  acks.push(await client.create({ id: "r1", type: "rect", x: 0 }));
  acks.push(await client.update("r1", { x: 1 }));
  acks.push(await client.update("r1", { y: 2 }));
  a.blackholed = true; // this one is never acked
  client.update("r1", { x: 3 });
  await flush();
  assert.equal(client.unsaved, 4);
  assert.equal(client.pending, 1);
  a.kill();
  moveTo("ws://b");
  await clock.advance(1000);
  assert.equal(client.status, "open");
  assert.deepEqual(changesOf(b.received), [
    { op: "create", id: "r1", stamp: acks[0].stamp },
    { op: "update", id: "r1", props: { x: 1 }, stamp: acks[1].stamp },
    { op: "update", id: "r1", props: { y: 2 }, stamp: acks[2].stamp },
    { op: "update", id: "r1", props: { x: 3 } },
  ]);
  assert.equal(client.unsaved, 3, "kept until saved (the update of x to 1 is covered by the later one)");
  b.save();
  await flush();
  assert.equal(client.unsaved, 0);
  assert.deepEqual(network.saved(), [{ id: "r1", type: "rect", x: 3, y: 2 }]);
  await client.close();
});

test("saved n covers this socket's changes up to seq n only", async () => {
  const { a, client } = await onTwoReplicas();
  const saves = [];
  client.on("saved", (e) => saves.push(e));
  await client.create({ id: "r1", type: "rect" });
  a.save();
  const later = client.update("r1", { x: 1 });
  await flush();
  await later;
  assert.deepEqual(saves, [{ seq: 1, unsaved: 1 }]);
  assert.equal(client.unsaved, 1);
  a.save();
  await flush();
  assert.equal(client.unsaved, 0);
  assert.deepEqual(saves.at(-1), { seq: 2, unsaved: 0 });
  await client.saved();
  await client.close();
});

test("saved() resolves once nothing is unsaved", async () => {
  const { a, client } = await onTwoReplicas();
  let done = false;
  client.create({ id: "r1", type: "rect" });
  client.saved().then(() => {
    done = true;
  });
  await flush();
  assert.equal(done, false);
  a.save();
  await flush();
  assert.equal(done, true);
  await client.close();
});

test("a drag's acked updates are kept as the last one per property set", async () => {
  const { a, b, client, clock, moveTo } = await onTwoReplicas();
  await client.create({ id: "r1", type: "rect" });
  for (let x = 1; x <= 50; x++) await client.update("r1", { x, y: x });
  await client.update("r1", { x: 99 });
  assert.equal(client.unsaved, 3, "the create, the last {x, y}, the last {x}");
  a.kill();
  moveTo("ws://b");
  await clock.advance(1000);
  assert.deepEqual(
    changesOf(b.received).map(({ op, props }) => [op, props]),
    [
      ["create", undefined],
      ["update", { x: 50, y: 50 }],
      ["update", { x: 99 }],
    ],
  );
  assert.deepEqual(b.visible(), [{ id: "r1", type: "rect", x: 99, y: 50 }]);
  await client.close();
});

test("a replay never beats a later change by someone else; the local copy follows the server", async () => {
  const { a, b, client, clock, moveTo, make } = await onTwoReplicas();
  await client.create({ id: "r1", type: "rect", x: 0 });
  a.save();
  await flush();
  await client.update("r1", { x: 1 }); // acked on A, never saved
  const other = make({ url: "ws://b" });
  await other.ready;
  await other.update("r1", { x: 2 }); // later, on B
  a.kill();
  moveTo("ws://b");
  await clock.advance(1000);
  assert.equal(b.visible()[0].x, 2);
  assert.equal(client.objects.get("r1").x, 2, "the server's current state came before the replay's ack");
  b.save();
  await flush();
  assert.equal(client.unsaved, 0);
  await Promise.all([client.close(), other.close()]);
});

test("a create sent, never acked, that landed: sent again with retry, acked, saved", async () => {
  const { a, b, client, clock, moveTo, make } = await onTwoReplicas({ relay: true });
  const watcher = make({ url: "ws://b" }); // B holds the project: the relay reaches it
  await watcher.ready;
  // A applies it and relays it to B, but the ack never reaches the client
  a.muted = true;
  const create = client.create({ id: "r1", type: "rect" });
  await flush();
  assert.equal(client.pending, 1);
  assert.equal(b.visible().length, 1);
  a.kill();
  moveTo("ws://b");
  await clock.advance(1000);
  const ack = await create;
  assert.equal(ack.op, "ack");
  assert.deepEqual(changesOf(b.received), [{ op: "create", id: "r1", retry: true }]);
  b.save();
  await flush();
  assert.equal(client.unsaved, 0);
  await Promise.all([client.close(), watcher.close()]);
});

test("without retry on the server, conflict and not_found after a resend mean it landed", async () => {
  const { a, b, client, clock, moveTo, make } = await onTwoReplicas({ relay: true, retry: false });
  const watcher = make({ url: "ws://b" });
  await watcher.ready;
  await client.create({ id: "gone", type: "rect" });
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  a.muted = true;
  const create = client.create({ id: "r1", type: "rect" });
  const remove = client.delete("gone");
  await flush();
  a.kill();
  moveTo("ws://b");
  await clock.advance(1000);
  assert.equal((await create).duplicate, true);
  assert.equal((await remove).duplicate, true);
  assert.deepEqual(errors, []);
  assert.deepEqual(b.visible(), [{ id: "r1", type: "rect" }]);
  await Promise.all([client.close(), watcher.close()]);
});

test("a rate-limited change starts a new connection, where everything goes again in order", async () => {
  const { a, client, clock } = await onTwoReplicas();
  a.refuseChanges = "rate_limited";
  const done = client.create({ id: "r1", type: "rect" });
  client.update("r1", { x: 1 });
  await flush();
  assert.equal(client.status, "reconnecting");
  a.refuseChanges = null;
  await clock.advance(1000);
  await done;
  assert.deepEqual(a.visible(), [{ id: "r1", type: "rect", x: 1 }]);
  await client.close();
});

// A seeded random walk: three clients edit through A (own objects, and one shared object
// where each owns a property), A dies at a random step, they go on through B; once saved,
// the table holds exactly what each client meant, with and without the relay.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

for (const relay of [false, true]) {
  for (const seed of [1, 2, 3, 4, 5]) {
    test(`killing A at a random moment loses nothing (relay ${relay}, seed ${seed})`, async () => {
      const random = rng(seed);
      const h = await harness({ CanvasClient, replicas: 2, relay });
      let target = "ws://a";
      const clients = [0, 1, 2].map(() => h.make({ url: () => target }));
      await Promise.all(clients.map((c) => c.ready));
      await clients[0].create({ id: "shared", type: "board" });
      const intended = new Map([["shared", { id: "shared", type: "board" }]]);
      const killAt = 20 + Math.floor(random() * 60);
      for (let step = 0; step < 100; step++) {
        if (step === killAt) {
          h.a.kill();
          target = "ws://b";
        }
        if (step % 17 === 0) h.a.up && h.a.save();
        const i = Math.floor(random() * 3);
        const client = clients[i];
        const own = [...intended.keys()].filter((id) => id.startsWith(`c${i}-`));
        const roll = random();
        if (roll < 0.25 || !own.length) {
          const id = `c${i}-${step}`;
          const object = { id, type: "rect", x: step };
          client.create(object);
          intended.set(id, { ...object });
        } else if (roll < 0.85) {
          const id = own[Math.floor(random() * own.length)];
          client.update(id, { x: step, [`p${step % 3}`]: step });
          Object.assign(intended.get(id), { x: step, [`p${step % 3}`]: step });
        } else if (roll < 0.93) {
          client.update("shared", { [`by${i}`]: step });
          intended.get("shared")[`by${i}`] = step;
        } else {
          const id = own[Math.floor(random() * own.length)];
          client.delete(id);
          intended.delete(id);
        }
        await h.clock.advance(Math.floor(random() * 200));
      }
      await h.clock.advance(5000);
      h.b.save();
      await flush();
      for (const client of clients) assert.equal(client.unsaved, 0);
      const expected = [...intended.values()].sort((x, y) => (x.id < y.id ? -1 : 1));
      const sorted = (o) => Object.fromEntries(Object.entries(o).sort(([p], [q]) => (p < q ? -1 : 1)));
      assert.deepEqual(h.network.saved(), expected.map(sorted));
      for (const client of clients) {
        assert.deepEqual(
          [...client.objects.values()].map((o) => ({ ...o })).sort((x, y) => (x.id < y.id ? -1 : 1)),
          expected.map(sorted),
        );
      }
      await Promise.all(clients.map((c) => c.close()));
    });
  }
}
