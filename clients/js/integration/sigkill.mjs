// THE SIGKILL TEST, the client's half: several clients edit through replica A without
// pause; the test kills A with SIGKILL at a moment of its choosing; the clients' url
// function (which reads CANVAS_URL_FILE on every connect) sends them to B; they go on
// editing, and once everything is saved this script writes what each client meant the
// project to hold. tests/system/test_js_client.py compares that with the table.
//
// Env: CANVAS_URL_FILE, CANVAS_PROJECT, CANVAS_MARK (created when editing starts),
// CANVAS_RESULT (the JSON written at the end), CANVAS_CLIENTS (3), CANVAS_EDIT_SECONDS (8),
// CANVAS_SEED.
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { WebSocket, env, sleep, sortKeys, track, within } from "./lib.mjs";

const URL_FILE = env("CANVAS_URL_FILE");
const PROJECT = env("CANVAS_PROJECT");
const MARK = env("CANVAS_MARK");
const RESULT = env("CANVAS_RESULT");
const CLIENTS = Number(env("CANVAS_CLIENTS", "3"));
const EDIT_SECONDS = Number(env("CANVAS_EDIT_SECONDS", "8"));
const SEED = Number(env("CANVAS_SEED", "1"));

function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

const currentUrl = async () => (await readFile(URL_FILE, "utf8")).trim();

test("edits through a replica killed with SIGKILL all reach the table through the other", { timeout: 120000 }, async () => {
  const random = rng(SEED);
  const intended = new Map(); // id -> the object as its client last meant it, or null: deleted
  const clients = [];
  const stats = [];
  const errors = [];
  for (let i = 0; i < CLIENTS; i++) {
    // reconnect quickly: the test is about what is kept, not about the backoff
    const client = track(new CanvasClient({ url: currentUrl, project: PROJECT, WebSocket, minDelay: 200, maxDelay: 2000 }));
    const stat = { client: i, changes: 0, acked_unsaved_at_drop: null, pending_at_drop: null, replicas: [] };
    client.on("status", (e) => {
      if (e.previous === "open" && e.status !== "open" && stat.acked_unsaved_at_drop === null) {
        stat.acked_unsaved_at_drop = client.unsaved - client.pending;
        stat.pending_at_drop = client.pending;
      }
      if (e.status === "open") stat.replicas.push(e.replica);
    });
    client.on("error", (e) => errors.push({ client: i, code: e.code, message: e.message }));
    clients.push(client);
    stats.push(stat);
  }
  await within(Promise.all(clients.map((c) => c.ready)), 15000, "every client's snapshot");
  await clients[0].create({ id: "shared", type: "board" });
  intended.set("shared", { id: "shared", type: "board" });
  await writeFile(MARK, `${Date.now()}\n`);

  const deadline = Date.now() + EDIT_SECONDS * 1000;
  const edit = async (i) => {
    const client = clients[i];
    let made = 0;
    while (Date.now() < deadline) {
      const own = [...intended].filter(([id, o]) => o && id.startsWith(`c${i}-`)).map(([id]) => id);
      const roll = random();
      if (roll < 0.2 || own.length < 2) {
        const object = { id: `c${i}-${made}`, type: "rect", x: made, y: i, fill: "#1e88e5" };
        client.create(object);
        intended.set(object.id, { ...object });
      } else if (roll < 0.85) {
        const id = own[Math.floor(random() * own.length)];
        const props = random() < 0.5 ? { x: made, y: made % 7 } : { fill: `#${(made % 4096).toString(16).padStart(3, "0")}` };
        client.update(id, props);
        Object.assign(intended.get(id), props);
      } else if (roll < 0.93) {
        client.update("shared", { [`by${i}`]: made });
        intended.get("shared")[`by${i}`] = made;
      } else {
        const id = own[Math.floor(random() * own.length)];
        client.delete(id);
        intended.set(id, null);
      }
      made += 1;
      stats[i].changes = made;
      await sleep(15 + Math.floor(random() * 30));
    }
  };
  await Promise.all(clients.map((_, i) => edit(i)));

  await within(Promise.all(clients.map((c) => c.saved())), 60000, "every change saved");
  const expected = Object.fromEntries([...intended].map(([id, o]) => [id, o && sortKeys(o)]));
  const result = {
    expected,
    changes: stats.reduce((n, s) => n + s.changes + (s.client === 0 ? 1 : 0), 0),
    acked_unsaved_at_kill: stats.reduce((n, s) => n + (s.acked_unsaved_at_drop ?? 0), 0),
    pending_at_kill: stats.reduce((n, s) => n + (s.pending_at_drop ?? 0), 0),
    clients: stats,
    errors,
  };
  await writeFile(RESULT, JSON.stringify(result, null, 2));
  assert.deepEqual(errors, [], "no change refused");
  for (const [i, client] of clients.entries()) {
    assert.equal(client.unsaved, 0, `client ${i} has nothing unsaved`);
    assert.equal(client.replica, "replica-b", `client ${i} ended on B`);
    assert.ok(stats[i].acked_unsaved_at_drop !== null, `client ${i} saw A go`);
  }
  await Promise.all(clients.map((c) => c.close()));
});
