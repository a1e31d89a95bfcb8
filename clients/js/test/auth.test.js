// Tokens: a function called on every connect, renewal over {"op":"auth"} before expiry,
// and one new token after a 401 or 4401 before giving up.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient, tokenExpiry } from "../index.js";
import { fakeToken, flush, harness } from "../testing/fake-server.js";

test("tokenExpiry reads exp from the payload without verifying", () => {
  assert.equal(tokenExpiry(fakeToken(1_900_000_000_000)), 1_900_000_000_000);
  assert.equal(tokenExpiry("not a jwt"), null);
  assert.equal(tokenExpiry(null), null);
});

test("the token travels as the bearer subprotocol, after the versions, newest first", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ token: "abc" });
  await client.ready;
  assert.deepEqual(h.network.sockets[0].protocols, ["canvas-sync.v3", "canvas-sync.v2", "canvas-sync.v1", "canvas-sync.bearer.abc"]);
  assert.equal(client.protocol, "canvas-sync.v3");
  await client.close();
});

test("a token function is called on every connect, and may be async", async () => {
  const h = await harness({ CanvasClient });
  let n = 0;
  const client = h.make({ token: async () => `t${++n}` });
  await client.ready;
  h.a.closeAll(1001);
  await h.clock.advance(1000);
  assert.equal(client.status, "open");
  assert.deepEqual(
    h.network.sockets.map((s) => s.protocols.at(-1)),
    ["canvas-sync.bearer.t1", "canvas-sync.bearer.t2"],
  );
  await client.close();
});

test("renewal: before expiry a new token goes as {op: auth}, and again for the next one", async () => {
  const h = await harness({ CanvasClient });
  const issued = [];
  const client = h.make({
    token: () => {
      const token = fakeToken(h.clock.now() + 120_000, "me", { n: issued.length });
      issued.push(token);
      return token;
    },
  });
  await client.ready;
  await h.clock.advance(89_000);
  assert.equal(h.a.received.filter((m) => m.op === "auth").length, 0);
  await h.clock.advance(1_000); // 120 s left at the start: 3/4 of it = 90 s (30 s before the end is later)
  const auths = h.a.received.filter((m) => m.op === "auth");
  assert.equal(auths.length, 1);
  assert.equal(auths[0].token, issued[1]);
  assert.equal(h.a.sockets[0].token, issued[1]);
  await h.clock.advance(90_000);
  assert.equal(h.a.received.filter((m) => m.op === "auth").length, 2);
  assert.equal(h.network.sockets.length, 1, "renewed on the same socket");
  await client.close();
});

test("renewal of a long-lived token comes 30 s before its end when that is earlier", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ token: () => fakeToken(h.clock.now() + 100_000) });
  await client.ready;
  await h.clock.advance(69_000);
  assert.equal(h.a.received.filter((m) => m.op === "auth").length, 0);
  await h.clock.advance(1_500);
  assert.equal(h.a.received.filter((m) => m.op === "auth").length, 1);
  await client.close();
});

test("a fixed token string is never renewed", async () => {
  const h = await harness({ CanvasClient });
  const client = h.make({ token: fakeToken(h.clock.now() + 60_000) });
  await client.ready;
  await h.clock.advance(59_000);
  assert.equal(h.a.received.filter((m) => m.op === "auth").length, 0);
  await client.close();
});

test("HTTP 401: a new token and one more try, at once", async () => {
  const h = await harness({ CanvasClient });
  h.a.refuse = ({ token }) => (token === "expired" ? 401 : null);
  const tokens = ["expired", "fresh"];
  const client = h.make({ token: () => tokens.shift() });
  await h.clock.advance(0); // the retry comes at once: no backoff
  await client.ready;
  assert.equal(client.status, "open");
  assert.equal(h.a.sockets[0].token, "fresh");
  assert.deepEqual(h.a.refusals, [401]);
  await client.close();
});

test("HTTP 401 twice in a row is fatal (unauthorized)", async () => {
  const h = await harness({ CanvasClient });
  h.a.refuse = 401;
  const client = h.make({ token: () => "still-bad" });
  await h.clock.advance(0);
  await assert.rejects(client.ready, { code: "unauthorized" });
  assert.equal(client.status, "closed");
  assert.deepEqual(h.a.refusals, [401, 401]);
  await h.clock.advance(60_000);
  assert.equal(h.a.refusals.length, 2);
});

test("4401 on an open socket: a new token, reconnect at once; the next connection works", async () => {
  const h = await harness({ CanvasClient });
  let n = 0;
  const client = h.make({ token: () => `t${++n}` });
  await client.ready;
  h.a.closeAll(4401, "token expired");
  await h.clock.advance(0);
  assert.equal(client.status, "open", "no backoff wait");
  assert.equal(h.a.sockets[0].token, "t2");
  // a later expiry is again worth one retry: the count starts over once connected
  h.a.closeAll(4401);
  await h.clock.advance(0);
  assert.equal(client.status, "open");
  await client.close();
});

test("4401, then the new token refused too: fatal", async () => {
  const h = await harness({ CanvasClient });
  let n = 0;
  h.a.refuse = ({ token }) => (token === "t1" ? null : 401);
  const client = h.make({ token: () => `t${++n}` });
  await client.ready;
  h.a.closeAll(4401);
  await h.clock.advance(0);
  assert.equal(client.status, "closed");
  assert.equal(client.closeReason.code, "unauthorized");
});

test("a token function that throws is retried with backoff, reported as an error", async () => {
  const h = await harness({ CanvasClient });
  let fail = true;
  const errors = [];
  const client = h.make({
    token: async () => {
      if (fail) throw new Error("identity provider down");
      return "ok";
    },
  });
  client.on("error", (e) => errors.push(e.code));
  await flush();
  assert.equal(client.status, "reconnecting");
  fail = false;
  await h.clock.advance(1000);
  assert.equal(client.status, "open");
  assert.deepEqual(errors, ["connect_failed"]);
  await client.close();
});
