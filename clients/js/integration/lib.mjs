// Shared by the integration scripts, which tests/system/test_js_client.py runs against
// real replicas (node --test integration/<name>.mjs) with the URLs in the environment.
// `ws` comes from NODE_PATH (canvas_sync.devtools.node installs it).

import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { after } from "node:test";

const require = createRequire(import.meta.url);
export const { WebSocket } = require("ws");

const opened = [];
after(() => Promise.all(opened.map((client) => client.close())));

/** Closed after the tests whatever happens: an open client's timers would keep node running. */
export function track(client) {
  opened.push(client);
  return client;
}

export function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === "") {
    if (fallback !== undefined) return fallback;
    throw new Error(`${name} is not set (tests/system/test_js_client.py sets it)`);
  }
  return value;
}

/** Poll `predicate` every 20 ms until true; throws after `timeout` ms naming `what`. */
export async function until(predicate, { timeout = 20000, what = "condition" } = {}) {
  const started = Date.now();
  while (!(await predicate())) {
    if (Date.now() - started > timeout) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(20);
  }
  return Date.now() - started;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A promise, or an error naming `what` after `ms`. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The objects of a client's local copy, plain and sorted by id. */
export function view(client) {
  return [...client.objects.values()].map((o) => sortKeys(o)).sort((a, b) => (a.id < b.id ? -1 : 1));
}

export function sortKeys(object) {
  return Object.fromEntries(Object.entries(object).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** GET /projects/<p>/objects of a replica, from its base ws:// URL. */
export async function restObjects(base, project, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(`${base.replace(/^ws/, "http")}/projects/${project}/objects`, { headers });
  if (response.status !== 200) throw new Error(`GET objects: ${response.status}`);
  return (await response.json()).objects;
}

/** An HS256 token as the replicas under test accept it (CANVAS_AUTH_SECRET). */
export function mint(secret, { sub = "js-client", projects = {}, ttl = 3600, aud = "canvas-sync" } = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, aud, iat: now, exp: now + ttl, projects })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}
