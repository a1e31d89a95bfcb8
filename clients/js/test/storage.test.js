// The persistence adapter: unsaved changes outlive the client (a page reload) and are
// sent by the next one, acked ones with their stamps.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient, MemoryStorage } from "../index.js";
import { flush, harness } from "../testing/fake-server.js";

test("changes made offline survive a reload and are replayed by the next client", async () => {
  const h = await harness({ CanvasClient });
  const storage = new MemoryStorage();
  h.a.up = false;
  const first = h.make({ storage });
  first.create({ id: "r1", type: "rect", x: 1 });
  first.update("r1", { x: 2 });
  first.create({ id: "r2", type: "text" });
  await flush();
  assert.deepEqual(await storage.load("p"), [
    { op: "create", id: "r1", object: { id: "r1", type: "rect", x: 2 } },
    { op: "create", id: "r2", object: { id: "r2", type: "text" } },
  ]);
  await first.close(); // the page goes away

  const second = h.make({ storage });
  await flush();
  assert.deepEqual(
    [...second.objects.values()].map((o) => o.id),
    ["r1", "r2"],
    "shown before any connection",
  );
  assert.equal(second.unsaved, 2);
  h.a.up = true;
  await h.clock.advance(1000);
  assert.deepEqual(h.a.visible(), [
    { id: "r1", type: "rect", x: 2 },
    { id: "r2", type: "text" },
  ]);
  h.a.save();
  await flush();
  assert.equal(second.unsaved, 0);
  assert.deepEqual(await storage.load("p"), []);
  await second.close();
});

test("acked but unsaved changes are stored with their stamps and replayed with them", async () => {
  const h = await harness({ CanvasClient, replicas: 2 });
  const storage = new MemoryStorage();
  const first = h.make({ storage });
  await first.ready;
  const ack = await first.create({ id: "r1", type: "rect" });
  h.a.muted = true;
  first.update("r1", { x: 1 }); // sent, never answered
  await flush();
  assert.deepEqual(await storage.load("p"), [
    { op: "create", id: "r1", object: { id: "r1", type: "rect" }, stamp: ack.stamp, sent: true },
    { op: "update", id: "r1", props: { x: 1 }, sent: true },
  ]);
  h.a.kill(); // replica and page die together
  await first.close();

  const second = h.make({ storage, url: "ws://b" });
  await second.ready;
  await flush();
  const replayed = h.b.received.filter((m) => m.op === "create" || m.op === "update");
  assert.deepEqual(
    replayed.map((m) => [m.op, m.stamp ?? null]),
    [
      ["create", ack.stamp],
      ["update", null],
    ],
  );
  h.b.save();
  await flush();
  assert.deepEqual(h.network.saved(), [{ id: "r1", type: "rect", x: 1 }]);
  assert.equal(second.unsaved, 0);
  await second.close();
});

test("changes made while the storage loads come after the stored ones", async () => {
  const h = await harness({ CanvasClient });
  const storage = new MemoryStorage();
  await storage.save("p", [{ op: "create", id: "r1", object: { id: "r1", type: "rect" } }]);
  let release;
  const slow = {
    load: async (project) => {
      await new Promise((resolve) => {
        release = resolve;
      });
      return storage.load(project);
    },
    save: (project, changes) => storage.save(project, changes),
  };
  const client = h.make({ storage: slow });
  client.update("r1", { x: 5 });
  await flush();
  release();
  await h.clock.advance(100);
  assert.deepEqual(
    h.a.received.filter((m) => m.op !== "ping").map((m) => m.op),
    ["create", "update"],
  );
  assert.deepEqual(h.a.visible(), [{ id: "r1", type: "rect", x: 5 }]);
  await client.close();
});

test("a storage that fails is reported, and the client works on without it", async () => {
  const h = await harness({ CanvasClient });
  const errors = [];
  const broken = {
    load: async () => {
      throw new Error("quota");
    },
    save: async () => {
      throw new Error("quota");
    },
  };
  const client = h.make({ storage: broken });
  client.on("error", (e) => errors.push(e.code));
  await client.ready;
  await client.create({ id: "r1", type: "rect" });
  assert.ok(errors.length >= 1 && errors.every((c) => c === "storage_failed"));
  await client.close();
});
