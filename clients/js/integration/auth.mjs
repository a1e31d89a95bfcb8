// Tokens against a replica with authentication on (HS256, no leeway): renewal before
// expiry, a new token after 4401, and the fatal states (403, 401 twice, 4403).
// Env: CANVAS_URL (ws://host:port), CANVAS_PROJECT, CANVAS_SECRET.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { WebSocket, env, mint, sleep, track, until, within } from "./lib.mjs";

const URL = env("CANVAS_URL");
const PROJECT = env("CANVAS_PROJECT");
const SECRET = env("CANVAS_SECRET");
const editor = (ttl) => mint(SECRET, { projects: { [PROJECT]: "editor" }, ttl });
const statuses = (client) => {
  const seen = [];
  client.on("status", (e) => seen.push(e.status));
  return seen;
};

test("a short-lived token is renewed over the open socket before it expires", { timeout: 60000 }, async () => {
  let issued = 0;
  const client = track(new CanvasClient({
    url: URL,
    project: PROJECT,
    WebSocket,
    token: () => {
      issued += 1;
      return editor(4);
    },
  }));
  const seen = statuses(client);
  await within(client.ready, 10000, "the snapshot");
  await sleep(7000); // past the first token's expiry
  assert.equal(client.status, "open");
  assert.deepEqual(seen, ["open"], "never dropped");
  assert.ok(issued >= 3, `renewed (${issued} tokens)`);
  const ack = await within(client.create({ id: "renewed", type: "rect" }), 5000, "an ack");
  assert.equal(typeof ack.stamp, "string");
  await client.close();
});

test("4401 when the token expires: a new token from the function, reconnected at once", async () => {
  let dropped = false;
  const short = editor(2); // renewals get this same token again: nothing to renew with
  const client = track(new CanvasClient({
    url: URL,
    project: PROJECT,
    WebSocket,
    token: () => (dropped ? editor(3600) : short),
  }));
  const seen = statuses(client);
  client.on("status", (e) => {
    if (e.status === "reconnecting") dropped = true;
  });
  await within(client.ready, 10000, "the snapshot");
  const opened = Date.now();
  await until(() => seen.length >= 3, { timeout: 10000, what: "a drop and a reconnect" });
  assert.deepEqual(seen.slice(0, 3), ["open", "reconnecting", "open"]);
  assert.ok(Date.now() - opened < 5000);
  await within(client.create({ id: "after-4401", type: "rect" }), 5000, "an ack");
  await client.close();
});

test("a token without this project's grant is fatal: 403, forbidden, no retries", async () => {
  let calls = 0;
  const client = track(new CanvasClient({
    url: URL,
    project: PROJECT,
    WebSocket,
    token: () => {
      calls += 1;
      return mint(SECRET, { projects: { "some-other-project": "editor" } });
    },
  }));
  await assert.rejects(within(client.ready, 10000, "the refusal"), { code: "forbidden" });
  assert.equal(client.status, "closed");
  assert.equal(client.closeReason.cause, 403);
  await sleep(2500);
  assert.equal(calls, 1);
});

test("an expired token string: 401, one more try, then fatal (unauthorized)", async () => {
  const client = track(new CanvasClient({ url: URL, project: PROJECT, WebSocket, token: editor(-120) }));
  await assert.rejects(within(client.ready, 10000, "the refusal"), { code: "unauthorized" });
  assert.equal(client.status, "closed");
});

test("a renewal without this project's grant: the server closes with 4403, which is fatal", async () => {
  let calls = 0;
  const client = track(new CanvasClient({
    url: URL,
    project: PROJECT,
    WebSocket,
    token: () => (++calls === 1 ? editor(3) : mint(SECRET, { projects: { "some-other-project": "editor" } })),
  }));
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  await within(client.ready, 10000, "the snapshot");
  await until(() => client.status === "closed", { timeout: 10000, what: "the 4403" });
  assert.equal(client.closeReason.code, "forbidden");
  assert.equal(client.closeReason.cause, 4403);
  assert.deepEqual(errors, ["forbidden"]);
});
