// A fake canvas-sync deployment for the unit tests: a WebSocket class to hand to
// CanvasClient, replicas that speak the wire protocol (v1, v2, v3: stamps, seq, saved,
// replay) over an in-memory "table", and a clock the tests move by hand.
//
// It models the server's rules closely enough to test the client against them: every
// field of an object carries a stamp, merges keep the newer stamp, properties older than
// the latest create/delete are gone, an ack names the change's stamp and its place.

import { setImmediate as later } from "node:timers";

const V3 = "canvas-sync.v3";
const V2 = "canvas-sync.v2";
const V1 = "canvas-sync.v1";

/** Run what waits on the event loop: socket deliveries (setImmediate) and promise chains. */
export async function flush(rounds = 30) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => later(resolve));
}

/** setTimeout / clearTimeout / now, moved by `advance(ms)` only. */
export class FakeClock {
  constructor(start = Date.UTC(2030, 0, 1)) {
    this.t = start;
    this.timers = new Map();
    this.ids = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms = 0) => {
      const id = ++this.ids;
      this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Move time forward by `ms`, firing every timer due on the way (in order), settling between them. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (!next || timer.at < next.at || (timer.at === next.at && timer.id < next.id))) next = timer;
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = end;
    await flush();
  }

  /** Delays of the timers waiting now, from the present. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

function cmp(a, b) {
  const [am, ac, ...ar] = a.split(".");
  const [bm, bc, ...br] = b.split(".");
  return Number(am) - Number(bm) || Number(ac) - Number(bc) || (ar.join(".") < br.join(".") ? -1 : ar.join(".") > br.join(".") ? 1 : 0);
}

function newer(a, b) {
  return b === undefined || cmp(a, b) > 0;
}

/** An object's stamped state: liveness and every field, each with its stamp. */
function mergeInto(target, source) {
  if (newer(source.aliveStamp, target.aliveStamp)) {
    target.alive = source.alive;
    target.aliveStamp = source.aliveStamp;
  }
  for (const [name, field] of source.fields) {
    const mine = target.fields.get(name);
    if (!mine || newer(field.stamp, mine.stamp)) target.fields.set(name, { ...field });
  }
}

function cloneState(state) {
  return { alive: state.alive, aliveStamp: state.aliveStamp, fields: new Map([...state.fields].map(([k, v]) => [k, { ...v }])) };
}

function view(id, state) {
  if (!state || !state.alive) return null;
  const out = { id };
  for (const [name, field] of state.fields) {
    if (field.value !== null && cmp(field.stamp, state.aliveStamp) >= 0) out[name] = field.value;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Several fake replicas sharing one table, and the WebSocket class that reaches them. */
export class FakeNetwork {
  constructor(clock = new FakeClock()) {
    this.clock = clock;
    this.replicas = new Map();
    this.table = new Map(); // id -> stamped state (one project)
    this.sockets = [];
    this.counter = 0;
    /** Like a browser: a refused upgrade is an error event without the HTTP status. */
    this.opaqueErrors = false;
    const network = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url, protocols) {
        super(network, url, protocols);
      }
    };
  }

  replica(base, options = {}) {
    const replica = new FakeReplica(this, base, options);
    this.replicas.set(base, replica);
    return replica;
  }

  stamp(replicaId) {
    this.counter += 1;
    return `${this.clock.now()}.${this.counter}.${replicaId}`;
  }

  /** The table's visible objects, sorted by id. */
  saved() {
    return [...this.table.entries()]
      .map(([id, state]) => view(id, state))
      .filter(Boolean)
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  _connect(socket) {
    const match = /^(.*)\/ws\/([^/]+)$/.exec(socket.url);
    const replica = match && this.replicas.get(match[1]);
    if (!replica || !replica.up) {
      socket._fail(this.opaqueErrors ? undefined : "connect ECONNREFUSED");
      return;
    }
    if (replica.silent) return; // accepts TCP, never answers the upgrade
    const offered = socket.protocols;
    const token = offered.find((p) => p.startsWith("canvas-sync.bearer."))?.slice("canvas-sync.bearer.".length) ?? null;
    const refusal = typeof replica.refuse === "function" ? replica.refuse({ token, offered }) : replica.refuse;
    if (refusal) {
      replica.refusals.push(refusal);
      socket._fail(this.opaqueErrors ? undefined : `Unexpected server response: ${refusal}`);
      return;
    }
    const known = [V3, V2, V1].slice(3 - replica.version);
    const protocol = known.find((p) => offered.includes(p)) ?? "";
    replica._open(socket, protocol, token, decodeURIComponent(match[2]));
  }
}

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(network, url, protocols = []) {
    this.url = url;
    this.protocols = Array.isArray(protocols) ? protocols : [protocols];
    this.readyState = 0;
    this.protocol = "";
    this.sent = [];
    this.peer = null;
    network.sockets.push(this);
    later(() => network._connect(this));
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("WebSocket is not open");
    this.sent.push(JSON.parse(text));
    const peer = this.peer;
    if (peer) later(() => peer._fromClient(text));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    const peer = this.peer;
    this.peer = null;
    peer?._clientClosed();
    later(() => this._closed(code === 1000 ? 1000 : code, reason));
  }

  _open(protocol) {
    this.readyState = 1;
    this.protocol = protocol;
    this.onopen?.({ type: "open" });
  }

  _deliver(text) {
    if (this.readyState === 1) this.onmessage?.({ data: text });
  }

  _closed(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.peer = null;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  _fail(message) {
    this.onerror?.({ type: "error", message });
    this._closed(1006);
  }
}

class Connection {
  constructor(replica, socket, protocol, token, n) {
    this.replica = replica;
    this.socket = socket;
    this.protocol = protocol;
    this.token = token;
    this.id = `c${n}`;
    this.seq = 0;
    this.savedSeq = 0;
    this.open = true;
    this.received = [];
    this.sentToClient = [];
  }

  get v3() {
    return this.protocol === V3;
  }

  send(message) {
    if (!this.open || this.replica.blackholed || this.replica.muted) return;
    this.sentToClient.push(message);
    const text = JSON.stringify(this.protocol === V1 || this.protocol === "" ? message : [message]);
    const socket = this.socket;
    later(() => socket._deliver(text));
  }

  /** The server closes this socket with `code` (1006: it just vanishes, no close frame). */
  close(code = 1000, reason = "") {
    if (!this.open) return;
    this.open = false;
    this.replica._drop(this);
    const socket = this.socket;
    later(() => socket._closed(code, reason));
  }

  _fromClient(text) {
    if (!this.open || this.replica.blackholed) return;
    this.replica._handle(this, JSON.parse(text));
  }

  _clientClosed() {
    if (!this.open) return;
    this.open = false;
    this.replica._drop(this);
  }
}

/** One replica: objects in memory, sockets, a dirty set saved by `save()`. */
export class FakeReplica {
  constructor(network, base, { id = base.replace(/\W+/g, ""), version = 3, relay = false, retry = true } = {}) {
    this.supportsRetry = retry;
    this.network = network;
    this.base = base;
    this.id = id;
    this.version = version;
    this.relay = relay;
    this.up = true;
    this.blackholed = false;
    this.silent = false;
    /** Applies what arrives but answers nothing (it is about to die). */
    this.muted = false;
    this.refuse = null;
    this.refusals = [];
    this.objects = new Map();
    this.loaded = false;
    this.dirty = new Set();
    this.connections = new Set();
    this.opened = 0;
    /** Every message any client sent here, in order, with the connection's id. */
    this.received = [];
    /** Set to an error code to refuse every change with it (e.g. "rate_limited"). */
    this.refuseChanges = null;
  }

  get sockets() {
    return [...this.connections];
  }

  /** The objects as clients see them, sorted by id. */
  visible() {
    return [...this.objects.entries()]
      .map(([id, state]) => view(id, state))
      .filter(Boolean)
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** An auto-save pass: dirty objects to the table, then `saved` to every v3 socket. */
  save() {
    for (const id of this.dirty) {
      const state = this.objects.get(id);
      const row = this.network.table.get(id);
      if (row) mergeInto(row, state);
      else this.network.table.set(id, cloneState(state));
    }
    this.dirty.clear();
    for (const conn of this.connections) {
      if (conn.v3 && conn.seq > conn.savedSeq) {
        conn.savedSeq = conn.seq;
        conn.send({ op: "saved", seq: conn.seq });
      }
    }
  }

  /** SIGKILL: every socket vanishes, memory is lost, connections are refused. */
  kill() {
    this.up = false;
    for (const conn of [...this.connections]) conn.close(1006);
    this.objects.clear();
    this.dirty.clear();
    this.loaded = false;
  }

  start() {
    this.up = true;
  }

  /** Read what others saved (the puller), telling clients what changed. */
  pull() {
    for (const [id, row] of this.network.table) {
      const state = this.objects.get(id);
      const before = JSON.stringify(view(id, state));
      if (state) mergeInto(state, row);
      else this.objects.set(id, cloneState(row));
      const after = view(id, this.objects.get(id));
      if (JSON.stringify(after) !== before) this._broadcast(null, id);
    }
  }

  closeAll(code, reason = "") {
    for (const conn of [...this.connections]) conn.close(code, reason);
  }

  _open(socket, protocol, token, project) {
    if (!this.loaded) {
      for (const [id, row] of this.network.table) this.objects.set(id, cloneState(row));
      this.loaded = true;
    }
    this.opened += 1;
    const conn = new Connection(this, socket, protocol, token, this.opened);
    socket.peer = conn;
    const presence = [...this.connections].filter((c) => c.presence).map((c) => ({ client: c.id, state: c.presence }));
    this.connections.add(conn);
    socket._open(protocol);
    conn.send({ op: "snapshot", project, replica: this.id, objects: this.visible(), presence });
  }

  _drop(conn) {
    this.connections.delete(conn);
    if (conn.presence) for (const other of this.connections) other.send({ op: "presence_leave", client: conn.id });
  }

  _handle(conn, message) {
    conn.received.push(message);
    this.received.push({ conn: conn.id, ...message });
    const { op, req } = message;
    if (op === "ping") return conn.send(req ? { op: "pong", req } : { op: "pong" });
    if (op === "auth") {
      conn.token = message.token;
      return conn.send({ op: "ack", req });
    }
    if (op === "presence") {
      conn.presence = message.state;
      for (const other of this.connections) if (other !== conn) other.send({ op: "presence", client: conn.id, state: message.state });
      return undefined;
    }
    if (op === "create" || op === "update" || op === "delete") return this._change(conn, message);
    return conn.send({ op: "error", req, code: "bad_message", message: `unknown op ${op}` });
  }

  _change(conn, message) {
    const { op, req } = message;
    const error = (code) => conn.send({ op: "error", req, code, message: code });
    if (this.refuseChanges) return error(this.refuseChanges);
    const id = op === "create" ? message.object?.id : message.id;
    const stamped = conn.v3 && typeof message.stamp === "string";
    const retry = conn.v3 && this.supportsRetry && message.retry === true;
    const state = this.objects.get(id);
    const alive = Boolean(state?.alive);
    if (op === "create" && alive && !stamped && !retry) return error("conflict");
    if (op !== "create" && !alive && !stamped && !(retry && op === "delete")) return error("not_found");
    const stamp = stamped ? message.stamp : this.network.stamp(this.id);
    const incoming = { alive: op !== "delete", aliveStamp: stamp, fields: new Map() };
    if (op === "create") {
      for (const [k, v] of Object.entries(message.object)) if (k !== "id") incoming.fields.set(k, { value: v, stamp });
    } else if (op === "update") {
      incoming.alive = alive;
      incoming.aliveStamp = state?.aliveStamp ?? stamp;
      for (const [k, v] of Object.entries(message.props)) incoming.fields.set(k, { value: v, stamp });
    }
    // a retried create of a live object sets its type and properties: an update, fresh stamp
    if (op === "create" && retry && alive) Object.assign(incoming, { alive: true, aliveStamp: state.aliveStamp });
    const noop = op === "delete" && retry && !alive;
    if (noop) this.dirty.add(id);
    else this._merge(id, incoming);
    conn.seq += 1;
    if (stamped) {
      const now = view(id, this.objects.get(id));
      conn.send(now ? { op: "upsert", object: now } : { op: "delete", id });
    }
    conn.send(conn.v3 ? { op: "ack", req, stamp, seq: conn.seq } : { op: "ack", req });
    if (!noop) {
      this._broadcast(conn, id);
      if (this.relay) {
        for (const peer of this.network.replicas.values()) {
          if (peer !== this && peer.up && peer.relay && peer.loaded) {
            peer._merge(id, cloneState(this.objects.get(id)));
            peer._broadcast(null, id);
          }
        }
      }
    }
    return undefined;
  }

  _merge(id, incoming) {
    const state = this.objects.get(id);
    if (state) mergeInto(state, incoming);
    else this.objects.set(id, cloneState(incoming));
    this.dirty.add(id);
  }

  _broadcast(sender, id) {
    const now = view(id, this.objects.get(id));
    for (const conn of this.connections) {
      if (conn !== sender) conn.send(now ? { op: "upsert", object: now } : { op: "delete", id });
    }
  }
}

/** A JWT-shaped token (unsigned: the client never verifies) that expires at `exp` (ms). */
export function fakeToken(exp, sub = "me", extra = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(exp / 1000), ...extra })}.sig`;
}

/** A client on a fake network of replicas at ws://a, ws://b, ...; `url` defaults to ws://a. */
export async function harness({ version = 3, relay = false, retry = true, replicas = 1, client: clientOptions = {}, CanvasClient } = {}) {
  const clock = new FakeClock();
  const network = new FakeNetwork(clock);
  const bases = ["ws://a", "ws://b", "ws://c"].slice(0, replicas);
  const [a, b, c] = bases.map((base) => network.replica(base, { version, relay, retry }));
  const make = (options = {}) =>
    new CanvasClient({
      url: "ws://a",
      project: "p",
      WebSocket: network.WebSocket,
      clock,
      random: () => 0.5,
      fetch: null,
      ...clientOptions,
      ...options,
    });
  return { clock, network, a, b, c, make };
}

/** Every event of `client` in order, as [name, payload]. */
export function record(client, names = ["status", "change", "presence", "saved", "error", "unsaved", "history"]) {
  const events = [];
  for (const name of names) client.on(name, (payload) => events.push([name, payload]));
  return events;
}
