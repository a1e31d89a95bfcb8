// Fatal states: a refusal that reconnecting cannot fix closes the client with its reason.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CanvasClient } from "../index.js";
import { flush, harness, record } from "../testing/fake-server.js";

async function refusedWith(status) {
  const h = await harness({ CanvasClient });
  h.a.refuse = status;
  const client = h.make();
  const errors = record(client, ["error"]);
  const change = client.create({ id: "r1", type: "rect" });
  await assert.rejects(client.ready, { code: expectedCode(status) });
  await assert.rejects(change, { code: expectedCode(status) });
  await h.clock.advance(120000);
  return { h, client, errors };
}

const expectedCode = (status) => ({ 400: "bad_project", 403: "forbidden", 404: "not_found" })[status];

for (const status of [400, 403, 404]) {
  test(`HTTP ${status} on the upgrade is fatal: closed with the reason, never retried`, async () => {
    const { h, client, errors } = await refusedWith(status);
    assert.equal(client.status, "closed");
    assert.equal(client.closeReason.code, expectedCode(status));
    assert.equal(client.closeReason.cause, status);
    assert.match(client.closeReason.message, new RegExp(String(status)));
    assert.equal(h.network.sockets.length, 1, "one try only");
    assert.equal(errors.length, 1);
    assert.equal(errors[0][1].code, expectedCode(status));
    assert.equal(client.unsaved, 1, "the change is kept (a storage adapter would keep it for later)");
  });
}

for (const [code, reason] of [
  [4403, "forbidden"],
  [4404, "project_deleted"],
]) {
  test(`close code ${code} is fatal (${reason})`, async () => {
    const h = await harness({ CanvasClient });
    const client = h.make();
    const statuses = record(client, ["status"]);
    await client.ready;
    h.a.closeAll(code);
    await flush();
    assert.equal(client.status, "closed");
    assert.equal(client.closeReason.code, reason);
    assert.equal(client.closeReason.cause, code);
    await assert.rejects(client.saved().then(() => client.create({ type: "x" })), { code: reason });
    await h.clock.advance(60000);
    assert.equal(h.network.sockets.length, 1);
    assert.deepEqual(
      statuses.map(([, e]) => e.status),
      ["open", "closed"],
    );
  });
}

for (const status of [429, 503]) {
  test(`HTTP ${status} is retried with backoff`, async () => {
    const h = await harness({ CanvasClient });
    h.a.refuse = status;
    const client = h.make();
    await h.clock.advance(750 + 1500 + 3000);
    assert.equal(client.status, "reconnecting");
    assert.deepEqual(h.a.refusals, [status, status, status, status]);
    h.a.refuse = null;
    await h.clock.advance(6000);
    assert.equal(client.status, "open");
    await client.close();
  });
}

test("in a browser (no status on a failed socket) the project route tells why", async () => {
  const h = await harness({ CanvasClient });
  h.network.opaqueErrors = true;
  h.a.refuse = 403;
  const asked = [];
  const client = h.make({
    token: "tok",
    fetch: async (url, init) => {
      asked.push([url, init.headers.Authorization]);
      return { status: 403 };
    },
  });
  await assert.rejects(client.ready, { code: "forbidden" });
  assert.deepEqual(asked, [["http://a/projects/p/status", "Bearer tok"]]);
});

test("in a browser, a failed probe (server down) means try again", async () => {
  const h = await harness({ CanvasClient });
  h.network.opaqueErrors = true;
  h.a.up = false;
  const client = h.make({
    fetch: async () => {
      throw new TypeError("Failed to fetch");
    },
  });
  await h.clock.advance(3000);
  assert.equal(client.status, "reconnecting");
  h.a.up = true;
  await h.clock.advance(3000);
  assert.equal(client.status, "open");
  await client.close();
});

test("the client's listeners and promises never see an unhandled rejection", async () => {
  const h = await harness({ CanvasClient });
  h.a.refuse = 403;
  const client = h.make();
  client.create({ type: "rect" }); // nobody catches it
  client.saved(); // nor this
  await h.clock.advance(1000);
  assert.equal(client.status, "closed");
});
