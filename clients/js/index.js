// @canvas-sync/client: a canvas-sync project over WebSocket, for browsers and Node 20+.
//
// One ES module, no dependencies. A CanvasClient keeps a local copy of one project
// (`objects`), applies this client's edits to it at once and sends them; it keeps every
// change until the server says it is in the database (`saved`, protocol canvas-sync.v3)
// and sends the unsaved ones again, in order and with their stamps, after a reconnect to
// any replica. The wire protocol is described in the repository's docs/protocol.md.

export const V3 = "canvas-sync.v3";
export const V2 = "canvas-sync.v2";
export const V1 = "canvas-sync.v1";
export const PROTOCOLS = Object.freeze([V3, V2, V1]);
const BEARER = "canvas-sync.bearer.";

/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSE = { 4403: "forbidden", 4404: "project_deleted" };
/** HTTP answers to the upgrade after which reconnecting cannot help (401 is retried once). */
const FATAL_HTTP = { 400: "bad_project", 403: "forbidden", 404: "not_found" };
const DEAD = 4000; // our own code for a socket we gave up on (no frame for pingTimeout)

const DEFAULTS = {
  presenceInterval: 50,
  pingInterval: 5000,
  minDelay: 1000,
  maxDelay: 30000,
  stableAfter: 10000,
  historyLimit: 200,
  maxRate: 500,
  maxMessageBytes: 65536,
};

/** A refused change, a fatal connection state or a local failure; `code` says which. */
export class CanvasError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "CanvasError";
    this.code = code;
    Object.assign(this, details);
  }
}

const systemClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle),
};

/** Keeps unsaved changes in memory only: survives a new CanvasClient, not a page reload. */
export class MemoryStorage {
  constructor() {
    this.records = new Map();
  }

  async load(project) {
    return structuredClone(this.records.get(project) ?? []);
  }

  async save(project, changes) {
    if (changes.length) this.records.set(project, structuredClone(changes));
    else this.records.delete(project);
  }
}

export class CanvasClient {
  constructor(options = {}) {
    const { url, project } = options;
    if (typeof url !== "string" && typeof url !== "function") throw new TypeError("CanvasClient: `url` is required");
    if (typeof project !== "string" || !project) throw new TypeError("CanvasClient: `project` is required");
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("CanvasClient: no WebSocket here; pass one, e.g. `WebSocket` from the ws package");
    }
    this.project = project;
    this.options = { ...DEFAULTS, ...options };
    this.options.pingTimeout ??= 2 * this.options.pingInterval;
    this._url = url;
    this._token = options.token ?? null;
    this._WebSocket = WebSocketImpl;
    this._clock = options.clock ?? systemClock;
    this._random = options.random ?? Math.random;
    this._fetch = options.fetch === undefined ? globalThis.fetch : options.fetch;
    this._storage = options.storage ?? null;
    this._offer = options.protocols ? [...options.protocols] : [...PROTOCOLS];

    /** id -> object as this user sees it: the server's state with this client's waiting changes on top. */
    this.objects = new Map();
    /** connection id -> presence state of everyone else on the project. */
    this.others = new Map();
    /** connecting | open | reconnecting | closed */
    this.status = "connecting";
    /** The subprotocol the server chose (canvas-sync.v3, v2, v1), once connected. */
    this.protocol = null;
    /** The replica serving this connection (from its snapshot). */
    this.replica = null;
    /** Why the client is closed: {code, message}, or null. */
    this.closeReason = null;

    this._session = randomId(this._random, 8);
    this._listeners = new Map();
    this._server = new Map(); // the server's state as this client knows it
    this._unsaved = []; // every change not yet saved, in the order made
    this._pendingById = new Map(); // id -> changes not yet acked on this connection
    this._queue = []; // changes waiting to be sent, in order
    this._byReq = new Map();
    this._counter = 0;
    this._reqCounter = 0;
    this._gen = 0; // bumps with each socket; events of older sockets are ignored
    this._ws = null;
    this._live = false; // a snapshot arrived on the current socket
    this._everLive = false;
    this._attempt = 0;
    this._authFailures = 0;
    this._closed = false;
    this._timers = {};
    this._tokens = 2 * this.options.maxRate;
    this._refilled = this._clock.now();
    this._savedWaiters = [];
    this._presence = undefined;
    this._presenceSent = -Infinity;
    this._currentToken = null;
    this._undo = [];
    this._redo = [];
    this._step = null; // the undo step being recorded (pauseHistory / batch)
    this._paused = 0;
    this._recording = null; // the step an undo or redo records into
    this._lastCounts = { unsaved: 0, pending: 0 };

    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {});

    if (typeof globalThis.addEventListener === "function" && "onLine" in (globalThis.navigator ?? {})) {
      this._onOnline = () => this.reconnect();
      globalThis.addEventListener("online", this._onOnline);
    }
    this._loaded = this._loadStorage().then(() => this._connect());
  }

  // --- the public surface -------------------------------------------------------------

  /** Changes not yet in the database (with a v1/v2 server: not yet acked). */
  get unsaved() {
    return this._unsaved.length;
  }

  /** Changes not yet acked by the server on this connection (queued offline or in flight). */
  get pending() {
    let n = 0;
    for (const list of this._pendingById.values()) n += list.length;
    return n;
  }

  get canUndo() {
    return this._undo.length > 0;
  }

  get canRedo() {
    return this._redo.length > 0;
  }

  /** Subscribe to status, change, presence, saved, unsaved, history or error; returns an unsubscribe function. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  create(object) {
    if (!isPlainObject(object) || typeof object.type !== "string") {
      return rejected(new CanvasError("bad_message", "create needs an object with a string `type`"));
    }
    const copy = structuredClone(object);
    copy.id ??= this.newId();
    return this._change({ op: "create", id: String(copy.id), object: copy });
  }

  update(id, props) {
    if (!isPlainObject(props) || !Object.keys(props).length) {
      return rejected(new CanvasError("bad_message", "update needs a non-empty props object"));
    }
    if ("id" in props) return rejected(new CanvasError("bad_message", "`id` cannot be changed"));
    return this._change({ op: "update", id: String(id), props: structuredClone(props) });
  }

  delete(id) {
    return this._change({ op: "delete", id: String(id) });
  }

  /** A fresh object id (unique enough for one project: this session's id and a counter). */
  newId() {
    return `${this._session}-${(++this._counter).toString(36)}`;
  }

  /** This client's presence (cursor, selection, name...): sent at most every presenceInterval ms, the latest wins. */
  setPresence(state) {
    this._presence = state == null ? {} : structuredClone(state);
    this._sendPresence();
  }

  /** A promise resolved once nothing is unsaved (rejected if the client closes first). */
  saved() {
    if (!this._unsaved.length) return Promise.resolve();
    if (this._closed) return rejected(this._closedError());
    const promise = new Promise((resolve, reject) => this._savedWaiters.push({ resolve, reject }));
    promise.catch(() => {});
    return promise;
  }

  /** Warn before the page is left with unsaved changes; returns a function that stops it. */
  warnBeforeUnload(target = globalThis) {
    const handler = (event) => {
      if (!this._unsaved.length) return undefined;
      event.preventDefault();
      try {
        event.returnValue = ""; // older browsers ask only when this is set
      } catch {
        // read-only here
      }
      return "";
    };
    target.addEventListener("beforeunload", handler);
    return () => target.removeEventListener("beforeunload", handler);
  }

  /** Everything `fn` changes is one undo step (also when it returns a promise). */
  batch(fn) {
    this.pauseHistory();
    let result;
    try {
      result = fn();
    } catch (error) {
      this.resumeHistory();
      throw error;
    }
    if (result && typeof result.then === "function") {
      return Promise.resolve(result).finally(() => this.resumeHistory());
    }
    this.resumeHistory();
    return result;
  }

  /** Start gathering changes into one undo step (a drag); resumeHistory() ends it. Nests. */
  pauseHistory() {
    this._paused += 1;
  }

  resumeHistory() {
    if (this._paused === 0) return;
    this._paused -= 1;
    if (this._paused === 0) this._endStep();
  }

  /** Undo this client's latest step; other people's later changes are kept. False when nothing to undo. */
  undo() {
    return this._travel(this._undo, this._redo);
  }

  redo() {
    return this._travel(this._redo, this._undo);
  }

  /** Reconnect now (e.g. when the network came back) instead of waiting for the backoff. */
  reconnect() {
    if (this._closed || this._live || !this._timers.retry) return;
    this._clear("retry");
    this._attempt = 0;
    this._connect();
  }

  /** Close the connection for good. Unsaved changes stay in the storage adapter, if any. */
  async close() {
    if (this._closed) return;
    this._shutdown({ code: "closed", message: "closed by the application" });
    await this._loaded.catch(() => {});
    await this._persisting;
  }

  // --- changes ------------------------------------------------------------------------

  _change(fields) {
    if (this._closed) return rejected(this._closedError());
    const before = this.objects.get(fields.id);
    const change = {
      ...fields,
      n: ++this._counter,
      stamp: null,
      seq: null,
      state: "queued",
      sent: false, // ever sent: it may have landed although no ack came
      req: null,
      replay: false,
      sawState: false,
      waiters: [],
      settled: false,
    };
    const promise = new Promise((resolve, reject) => change.waiters.push({ resolve, reject }));
    promise.catch(() => {});
    const merged = this._coalesce(change);
    if (!merged) {
      this._unsaved.push(change);
      this._addPending(change);
      this._queue.push(change);
    }
    this._record(fields.id, before, fields);
    this._refresh(fields.id, "local");
    this._persist();
    this._counts();
    this._pump();
    return promise;
  }

  // An update of an object whose latest change still waits unsent merges into that change:
  // a drag made offline costs one change per object, not one per mouse move.
  _coalesce(change) {
    if (change.op !== "update") return false;
    const list = this._pendingById.get(change.id);
    const last = list?.[list.length - 1];
    // never sent, so still in the queue: nothing has seen it yet
    if (!last || last.state !== "queued" || last.sent || last.stamp || last.op === "delete") return false;
    if (last.op === "create") {
      for (const [key, value] of Object.entries(change.props)) {
        if (value === null) delete last.object[key];
        else last.object[key] = value;
      }
    } else {
      Object.assign(last.props, change.props);
    }
    last.waiters.push(...change.waiters);
    return true;
  }

  _addPending(change) {
    const list = this._pendingById.get(change.id);
    if (list) list.push(change);
    else this._pendingById.set(change.id, [change]);
  }

  _removePending(change) {
    const list = this._pendingById.get(change.id);
    if (!list) return;
    const at = list.indexOf(change);
    if (at >= 0) list.splice(at, 1);
    if (!list.length) this._pendingById.delete(change.id);
  }

  _dropUnsaved(change) {
    const at = this._unsaved.indexOf(change);
    if (at >= 0) this._unsaved.splice(at, 1);
  }

  _settle(change, error, ack) {
    if (change.settled) return;
    change.settled = true;
    for (const waiter of change.waiters) {
      if (error) waiter.reject(error);
      else waiter.resolve(ack);
    }
    change.waiters = [];
  }

  // --- the connection -----------------------------------------------------------------

  async _connect() {
    if (this._closed) return;
    const gen = ++this._gen;
    this._setStatus(this._everLive || this._attempt > 0 ? "reconnecting" : "connecting");
    let base;
    let token;
    try {
      base = typeof this._url === "function" ? await this._url() : this._url;
      token = typeof this._token === "function" ? await this._token() : this._token;
    } catch (error) {
      if (gen !== this._gen || this._closed) return;
      this._emit("error", new CanvasError("connect_failed", `url or token failed: ${error?.message ?? error}`));
      this._retry();
      return;
    }
    if (gen !== this._gen || this._closed) return;
    this._currentToken = token || null;
    const protocols = [...this._offer];
    if (token) protocols.push(BEARER + token);
    let ws;
    try {
      ws = new this._WebSocket(socketUrl(base, this.project), protocols);
    } catch (error) {
      this._fatal("bad_url", `cannot open a WebSocket to ${base}: ${error?.message ?? error}`);
      return;
    }
    this._ws = ws;
    this._base = base;
    this._opened = false;
    this._socketError = null;
    this._lastFrame = this._clock.now();
    this._lastPing = this._clock.now();
    this._tick(gen);
    ws.onopen = () => {
      if (gen !== this._gen) return;
      this._opened = true;
      this.protocol = ws.protocol || V1;
    };
    ws.onmessage = (event) => {
      if (gen !== this._gen) return;
      this._lastFrame = this._clock.now();
      this._frame(event.data);
    };
    ws.onerror = (event) => {
      if (gen !== this._gen) return;
      this._socketError = event?.message ?? event?.error?.message ?? null;
    };
    ws.onclose = (event) => {
      if (gen !== this._gen) return;
      this._gone(event?.code ?? 1006, event?.reason ?? "");
    };
  }

  // Liveness: a ping every pingInterval; no frame at all for pingTimeout (a half-open
  // socket, a handshake that never ends) and the socket is dropped and replaced.
  _tick(gen) {
    const period = Math.max(50, Math.min(1000, this.options.pingInterval / 2));
    this._timer("tick", period, () => {
      if (gen !== this._gen || !this._ws) return;
      const now = this._clock.now();
      if (now - this._lastFrame >= this.options.pingTimeout) {
        const ws = this._ws;
        this._detach(ws);
        this._gone(DEAD, "no answer from the server");
        return;
      }
      if (this._live && now - this._lastPing >= this.options.pingInterval) {
        this._lastPing = now;
        this._sendRaw({ op: "ping" });
      }
      this._tick(gen);
    });
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {}; // some implementations throw on an error nobody listens to
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close();
    } catch {
      // already closed
    }
  }

  async _gone(code, reason) {
    const wasOpen = this._opened;
    const hadSnapshot = this._live;
    const socketError = this._socketError;
    const base = this._base;
    const token = this._currentToken;
    this._ws = null;
    this._live = false;
    this._opened = false;
    this._clear("tick");
    this._clear("stable");
    this._clear("renew");
    this._clear("pump");
    this._clear("presence");
    this._requeue();
    this._clearOthers();
    if (this._closed) return;
    if (FATAL_CLOSE[code]) {
      this._fatal(FATAL_CLOSE[code], `the server closed the connection with ${code}${reason ? `: ${reason}` : ""}`, code);
      return;
    }
    if (code === 4401) {
      this._authRetry(4401, "the token expired or was refused");
      return;
    }
    if (!wasOpen && !hadSnapshot && code !== DEAD) {
      const gen = this._gen;
      let status = httpStatus(socketError);
      if (status === null) status = await this._probe(base, token);
      if (gen !== this._gen || this._closed) return;
      if (FATAL_HTTP[status]) {
        this._fatal(FATAL_HTTP[status], `the server refused the connection with HTTP ${status}`, status);
        return;
      }
      if (status === 401) {
        this._authRetry(401, "the server refused the token (HTTP 401)");
        return;
      }
    }
    this._retry();
  }

  // 401 or 4401: a new token and one more try; a second in a row is final.
  _authRetry(code, message) {
    this._authFailures += 1;
    if (this._authFailures >= 2) {
      this._fatal("unauthorized", message, code);
      return;
    }
    this._retry(0);
  }

  // In a browser an upgrade refusal is only a failed socket: ask the project route why.
  async _probe(base, token) {
    if (typeof this._fetch !== "function" || typeof base !== "string") return null;
    try {
      const http = base.replace(/^ws/i, "http").replace(/\/+$/, "");
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const response = await this._fetch(`${http}/projects/${encodeURIComponent(this.project)}/status`, { headers });
      return response.status;
    } catch {
      return null;
    }
  }

  _retry(delay) {
    if (this._closed) return;
    if (delay === undefined) {
      const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
      delay = ceiling / 2 + (this._random() * ceiling) / 2; // equal jitter: half fixed, half random
      this._attempt += 1;
    }
    this._setStatus("reconnecting", { retryIn: delay, attempt: this._attempt });
    this._timer("retry", delay, () => this._connect());
  }

  _fatal(code, message, cause) {
    const error = new CanvasError(code, message, { cause });
    this._emit("error", error);
    this._shutdown({ code, message, cause }, error);
  }

  _shutdown(reason, error = null) {
    this._closed = true;
    this.closeReason = reason;
    for (const name of Object.keys(this._timers)) this._clear(name);
    const ws = this._ws;
    this._ws = null;
    this._live = false;
    this._gen += 1;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        ws.close(1000);
      } catch {
        // not open yet
      }
    }
    if (this._onOnline) globalThis.removeEventListener("online", this._onOnline);
    this._clearOthers();
    const failure = error ?? this._closedError();
    this._rejectReady(failure);
    for (const change of this._unsaved) if (!change.settled && change.state !== "acked") this._settle(change, failure);
    for (const waiter of this._savedWaiters.splice(0)) waiter.reject(failure);
    this._setStatus("closed", reason);
    this._storage?.release?.(this.project);
  }

  _closedError() {
    const reason = this.closeReason ?? { code: "closed", message: "the client is closed" };
    return new CanvasError(reason.code, reason.message, { cause: reason.cause });
  }

  // What was sent and not acked goes back to the queue; on the next snapshot every
  // unsaved change is sent again, in order.
  _requeue() {
    this._byReq.clear();
    for (const change of this._unsaved) {
      change.seq = null;
      if (change.state === "sent") change.state = "queued";
    }
  }

  _setStatus(status, details = {}) {
    const previous = this.status;
    this.status = status;
    if (previous !== status || details.retryIn !== undefined) this._emit("status", { status, previous, ...details });
  }

  // --- what arrives -------------------------------------------------------------------

  _frame(data) {
    let parsed;
    try {
      parsed = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      this._emit("error", new CanvasError("bad_json", "the server sent a frame that is not JSON"));
      return;
    }
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (this._closed || !this._ws) return;
      this._message(message);
    }
  }

  _message(message) {
    switch (message?.op) {
      case "snapshot":
        return this._snapshot(message);
      case "ack":
        return this._ack(message);
      case "error":
        return this._error(message);
      case "saved":
        return this._saved(message.seq);
      case "upsert":
        return this._serverState(message.object?.id, message.object);
      case "delete":
        return this._serverState(message.id, undefined);
      case "presence":
        return this._presenceIn(message);
      case "presence_leave":
        return this._presenceLeave(message.client);
      default:
        return undefined; // pong, and whatever a newer server adds
    }
  }

  _snapshot(message) {
    const first = !this._everLive;
    this._live = true;
    this._everLive = true;
    this._authFailures = 0;
    this.replica = message.replica ?? null;
    if (!this.protocol) this.protocol = this._ws?.protocol || V1;
    this._server = new Map((message.objects ?? []).map((object) => [object.id, object]));
    // Every unsaved change goes again, in order: acked ones with their stamps (v3), the rest as new.
    this._pendingById.clear();
    this._queue = [];
    for (const change of this._unsaved) {
      change.state = "queued";
      this._addPending(change);
      this._queue.push(change);
    }
    this._refreshAll("snapshot");
    this._clearOthers();
    for (const p of message.presence ?? []) {
      this.others.set(p.client, p.state);
      this._emit("presence", { client: p.client, state: p.state, sub: p.sub, left: false });
    }
    this._timer("stable", this.options.stableAfter, () => {
      this._attempt = 0;
    });
    this._scheduleRenewal();
    this._setStatus("open", { replica: this.replica, protocol: this.protocol });
    if (first) this._resolveReady(this);
    this._pump();
    if (this._presence !== undefined) {
      this._presenceSent = -Infinity;
      this._sendPresence();
    }
    this._counts();
  }

  _ack(message) {
    const change = this._byReq.get(message.req);
    if (!change) {
      if (message.req === this._authReq) this._authReq = null;
      return;
    }
    this._byReq.delete(message.req);
    change.req = null;
    const v3 = this.protocol === V3 && typeof message.stamp === "string";
    if (v3) {
      change.stamp = message.stamp;
      change.seq = message.seq ?? null;
    }
    this._acked(change, message, v3);
  }

  _acked(change, ack, durable) {
    change.state = "acked";
    this._removePending(change);
    // The server applied it and sends no echo: the known server state takes it. A replayed
    // change was preceded by the object's current state, which already says what won.
    if (change.replay) {
      if (!change.sawState) this._applyToServer(change);
    } else if (change.retried && change.op === "create" && this._server.has(change.id)) {
      // a retried create of a live object sets its type and properties (v3 with retry)
      if (change.retryFlag) this._applyToServer({ op: "update", id: change.id, props: change.object });
    } else {
      this._applyToServer(change);
    }
    if (durable) this._compact(change);
    else this._dropUnsaved(change); // v1/v2: an ack is all there is
    this._settle(change, null, { ...ack, id: change.id });
    this._refresh(change.id, "ack");
    this._persist();
    this._afterSave();
  }

  _error(message) {
    if (message.req && message.req === this._authReq) {
      this._authReq = null; // authentication is off there: nothing to renew
      this._renewable = false;
      return;
    }
    const change = this._byReq.get(message.req);
    if (!change) {
      this._emit("error", new CanvasError(message.code, message.message, { reply: message }));
      return;
    }
    this._byReq.delete(message.req);
    change.req = null;
    // Sent before, no ack, sent again: the first one landed.
    const landed =
      change.retried &&
      ((change.op === "create" && message.code === "conflict") || (change.op === "delete" && message.code === "not_found"));
    if (landed) {
      this._acked(change, { op: "ack", req: message.req, duplicate: true }, false);
      return;
    }
    if (message.code === "rate_limited") {
      // Order matters: start over on a new socket, where every unsaved change goes again in order.
      this._tokens = 0;
      const ws = this._ws;
      if (ws) {
        this._detach(ws);
        this._gone(4429, "rate limited");
      }
      return;
    }
    this._removePending(change);
    this._dropUnsaved(change);
    const error = new CanvasError(message.code, message.message, { change: publicChange(change), reply: message });
    this._settle(change, error);
    this._emit("error", error);
    this._refresh(change.id, "refused");
    this._persist();
    this._afterSave();
  }

  _saved(seq) {
    if (typeof seq !== "number") return;
    const before = this._unsaved.length;
    this._unsaved = this._unsaved.filter((c) => !(c.state === "acked" && c.seq !== null && c.seq <= seq));
    if (this._unsaved.length !== before) {
      this._persist();
      this._afterSave(seq);
    }
  }

  _afterSave(seq) {
    this._counts();
    if (seq !== undefined) this._emit("saved", { seq, unsaved: this._unsaved.length });
    if (!this._unsaved.length) {
      if (seq === undefined) this._emit("saved", { seq: null, unsaved: 0 });
      for (const waiter of this._savedWaiters.splice(0)) waiter.resolve();
    }
  }

  // An acked update or delete makes earlier acked updates of the same properties useless
  // to replay (the later stamp wins anyway): the unsaved list stays one entry per object
  // and property set during a drag.
  _compact(change) {
    if (change.op === "create") return;
    const at = this._unsaved.indexOf(change);
    if (at <= 0) return;
    const keys = change.op === "update" ? Object.keys(change.props) : null;
    const covered = (c) =>
      c.id === change.id &&
      c.op === "update" &&
      c.state === "acked" &&
      (keys === null || Object.keys(c.props).every((k) => keys.includes(k)));
    const earlier = this._unsaved.slice(0, at);
    const kept = earlier.filter((c) => !covered(c));
    if (kept.length !== earlier.length) this._unsaved = [...kept, ...this._unsaved.slice(at)];
  }

  _serverState(id, object) {
    if (id === undefined) return;
    for (const change of this._pendingById.get(id) ?? []) if (change.replay) change.sawState = true;
    if (object) this._server.set(id, object);
    else this._server.delete(id);
    this._refresh(id, "remote");
  }

  _applyToServer(change) {
    if (change.op === "create") {
      this._server.set(change.id, { ...change.object });
    } else if (change.op === "delete") {
      this._server.delete(change.id);
    } else {
      const current = this._server.get(change.id);
      if (current) this._server.set(change.id, applyProps({ ...current }, change.props));
    }
  }

  // --- sending ------------------------------------------------------------------------

  _sendRaw(message) {
    try {
      this._ws.send(JSON.stringify(message));
      return true;
    } catch {
      return false; // closing: the close event follows
    }
  }

  _takeToken() {
    const now = this._clock.now();
    const rate = this.options.maxRate;
    this._tokens = Math.min(2 * rate, this._tokens + ((now - this._refilled) * rate) / 1000);
    this._refilled = now;
    if (this._tokens < 1) return false;
    this._tokens -= 1;
    return true;
  }

  _pump() {
    if (!this._live || !this._ws || this._timers.pump) return;
    while (this._queue.length) {
      if (!this._takeToken()) {
        const wait = Math.ceil(((1 - this._tokens) * 1000) / this.options.maxRate);
        this._timer("pump", wait, () => this._pump());
        return;
      }
      this._transmit(this._queue.shift());
      if (!this._ws) return;
    }
  }

  _transmit(change) {
    const req = `${this._session}.${(++this._reqCounter).toString(36)}`;
    const message = { op: change.op, req };
    if (change.op === "create") message.object = change.object;
    else message.id = change.id;
    if (change.op === "update") message.props = change.props;
    const v3 = this.protocol === V3;
    change.replay = Boolean(v3 && change.stamp);
    change.retried = !change.replay && change.sent;
    if (change.replay) message.stamp = change.stamp;
    change.retryFlag = change.retried && v3 && change.op !== "update";
    if (change.retryFlag) message.retry = true;
    if (!v3) change.stamp = null;
    change.sawState = false;
    const text = JSON.stringify(message);
    if (byteLength(text) > this.options.maxMessageBytes) {
      this._removePending(change);
      this._dropUnsaved(change);
      const error = new CanvasError("too_large", `the change is larger than ${this.options.maxMessageBytes} bytes`, {
        change: publicChange(change),
      });
      this._settle(change, error);
      this._emit("error", error);
      this._refresh(change.id, "refused");
      this._persist();
      this._afterSave();
      return;
    }
    change.req = req;
    change.state = "sent";
    const firstSend = !change.sent;
    change.sent = true;
    this._byReq.set(req, change);
    try {
      this._ws.send(text);
    } catch {
      return; // the close event requeues it
    }
    if (firstSend) this._persist();
  }

  _sendPresence() {
    if (!this._live || !this._ws || this._presence === undefined || this._timers.presence) return;
    const wait = this._presenceSent + this.options.presenceInterval - this._clock.now();
    if (wait > 0) {
      this._timer("presence", wait, () => this._sendPresence());
      return;
    }
    if (!this._takeToken()) {
      this._timer("presence", Math.ceil(1000 / this.options.maxRate), () => this._sendPresence());
      return;
    }
    this._presenceSent = this._clock.now();
    this._sendRaw({ op: "presence", state: this._presence });
  }

  // --- presence in --------------------------------------------------------------------

  _presenceIn(message) {
    this.others.set(message.client, message.state);
    this._emit("presence", { client: message.client, state: message.state, sub: message.sub, left: false });
  }

  _presenceLeave(client) {
    if (!this.others.has(client)) return;
    this.others.delete(client);
    this._emit("presence", { client, state: null, left: true });
  }

  _clearOthers() {
    for (const client of [...this.others.keys()]) this._presenceLeave(client);
  }

  // --- tokens -------------------------------------------------------------------------

  // Before the token expires (at 3/4 of its remaining life, or 30 s before the end when
  // that comes first) a new one from the token function is sent as {"op":"auth"}.
  _scheduleRenewal() {
    this._clear("renew");
    if (typeof this._token !== "function" || this._renewable === false || !this._currentToken) return;
    const exp = tokenExpiry(this._currentToken);
    if (exp === null) return;
    const remaining = exp - this._clock.now();
    const delay = Math.max(1000, remaining > 30000 ? Math.min(remaining * 0.75, remaining - 30000) : remaining * 0.75);
    this._timer("renew", delay, () => this._renew());
  }

  async _renew() {
    const gen = this._gen;
    let token;
    try {
      token = await this._token();
    } catch (error) {
      if (gen !== this._gen || !this._live) return;
      this._emit("error", new CanvasError("token_failed", `the token function failed: ${error?.message ?? error}`));
      this._timer("renew", 5000, () => this._renew());
      return;
    }
    if (gen !== this._gen || !this._live) return;
    if (!token || token === this._currentToken) {
      const exp = tokenExpiry(this._currentToken);
      const left = exp === null ? 60000 : exp - this._clock.now();
      if (left > 0) this._timer("renew", Math.max(1000, Math.min(10000, left / 2)), () => this._renew());
      return;
    }
    this._currentToken = token;
    this._authReq = `${this._session}.auth${(++this._reqCounter).toString(36)}`;
    this._sendRaw({ op: "auth", token, req: this._authReq });
    this._scheduleRenewal();
  }

  // --- the local copy -----------------------------------------------------------------

  _compute(id) {
    let object = this._server.get(id);
    object = object ? { ...object } : undefined;
    for (const change of this._pendingById.get(id) ?? []) {
      if (change.op === "create") object = { ...change.object };
      else if (change.op === "delete") object = undefined;
      else if (object) applyProps(object, change.props);
    }
    return object ? Object.freeze(object) : undefined;
  }

  _refresh(id, origin) {
    const previous = this.objects.get(id);
    const next = this._compute(id);
    if (jsonEqual(previous, next)) return;
    if (next) this.objects.set(id, next);
    else this.objects.delete(id);
    this._emit("change", { id, object: next ?? null, previous: previous ?? null, origin });
  }

  _refreshAll(origin) {
    const ids = new Set([...this.objects.keys(), ...this._server.keys(), ...this._pendingById.keys()]);
    for (const id of ids) this._refresh(id, origin);
  }

  // --- undo and redo ------------------------------------------------------------------

  _record(id, before, fields) {
    if (this._applyingHistory) {
      this._addToStep(this._recording, id, before, fields);
      return;
    }
    this._step ??= new Map();
    this._addToStep(this._step, id, before, fields);
    this._redo = [];
    if (this._paused === 0) this._endStep();
  }

  _addToStep(step, id, before, fields) {
    const after = this._compute(id) ?? null;
    const props =
      fields.op === "update"
        ? Object.keys(fields.props)
        : Object.keys({ ...(before ?? {}), ...(fields.object ?? {}) }).filter((k) => k !== "id");
    const entry = step.get(id);
    if (entry) {
      entry.after = after;
      for (const p of props) entry.props.add(p);
    } else {
      step.set(id, { before: before ?? null, after, props: new Set(props) });
    }
  }

  _endStep() {
    const step = this._step;
    this._step = null;
    if (!step || !step.size) return;
    this._undo.push(step);
    if (this._undo.length > this.options.historyLimit) this._undo.shift();
    this._emit("history", { canUndo: this.canUndo, canRedo: this.canRedo });
  }

  _travel(from, to) {
    if (this._closed) return false;
    this._endStep();
    while (from.length) {
      const step = from.pop();
      this._recording = new Map();
      this._applyingHistory = true;
      try {
        for (const [id, entry] of step) this._revert(id, entry);
      } finally {
        this._applyingHistory = false;
      }
      const inverse = this._recording;
      this._recording = null;
      if (inverse.size) {
        to.push(inverse);
        this._emit("history", { canUndo: this.canUndo, canRedo: this.canRedo });
        return true;
      }
      // everything in that step was changed since by someone else: nothing to undo there
    }
    this._emit("history", { canUndo: this.canUndo, canRedo: this.canRedo });
    return false;
  }

  // Revert one object to how it was before a step, property by property, where the
  // property still holds what this client set: a later change by anyone else stays. A
  // create is undone only while the object is as this client left it.
  _revert(id, { before, after, props }) {
    const current = this.objects.get(id);
    if (!before && after) {
      if (current && jsonEqual(current, after)) this.delete(id);
    } else if (before && !after) {
      if (!current) this.create({ ...before });
    } else if (before && after && current) {
      const set = {};
      for (const p of props) {
        if (!jsonEqual(current[p], after[p])) continue;
        const old = before[p] === undefined ? null : before[p];
        if (!jsonEqual(current[p] ?? null, old)) set[p] = old;
      }
      if (Object.keys(set).length) this.update(id, set);
    }
  }

  // --- persistence --------------------------------------------------------------------

  async _loadStorage() {
    if (!this._storage) return;
    let records = [];
    try {
      records = (await this._storage.load(this.project)) ?? [];
    } catch (error) {
      this._emit("error", new CanvasError("storage_failed", `loading unsaved changes failed: ${error?.message ?? error}`));
    }
    this._storageLoaded = true;
    if (this._closed) return;
    if (!records.length) {
      if (this._unsaved.length) this._persist(); // what was made while loading
      return;
    }
    const loaded = records.map((r) => ({
      op: r.op,
      id: r.id,
      object: r.object,
      props: r.props,
      n: ++this._counter,
      stamp: r.stamp ?? null,
      seq: null,
      state: "queued",
      sent: Boolean(r.sent),
      req: null,
      replay: false,
      sawState: false,
      waiters: [],
      settled: true, // nobody waits for a change made by an earlier page
    }));
    // They came first: before anything made while loading.
    this._unsaved = [...loaded, ...this._unsaved];
    this._queue = [...loaded, ...this._queue];
    const pending = this._pendingById;
    this._pendingById = new Map();
    for (const change of loaded) this._addPending(change);
    for (const [, list] of pending) for (const change of list) this._addPending(change);
    for (const id of new Set(loaded.map((c) => c.id))) this._refresh(id, "storage");
    this._counts();
    this._persist();
  }

  _persist() {
    if (!this._storage || !this._storageLoaded) return;
    this._persistDirty = true;
    this._persisting ??= this._persistLoop();
  }

  async _persistLoop() {
    while (this._persistDirty) {
      this._persistDirty = false;
      await Promise.resolve(); // gather what one task changes into one write
      const records = this._unsaved.map((c) => {
        const record = { op: c.op, id: c.id };
        if (c.object) record.object = c.object;
        if (c.props) record.props = c.props;
        if (c.stamp) record.stamp = c.stamp;
        if (c.sent) record.sent = true;
        return structuredClone(record);
      });
      try {
        await this._storage.save(this.project, records);
      } catch (error) {
        this._emit("error", new CanvasError("storage_failed", `saving unsaved changes failed: ${error?.message ?? error}`));
      }
    }
    this._persisting = null;
  }

  // --- plumbing -----------------------------------------------------------------------

  _counts() {
    const counts = { unsaved: this._unsaved.length, pending: this.pending };
    if (counts.unsaved === this._lastCounts.unsaved && counts.pending === this._lastCounts.pending) return;
    this._lastCounts = counts;
    this._emit("unsaved", counts);
  }

  _timer(name, ms, fn) {
    this._clear(name);
    this._timers[name] = this._clock.setTimeout(() => {
      delete this._timers[name];
      fn();
    }, Math.max(0, ms));
  }

  _clear(name) {
    if (this._timers[name] !== undefined) {
      this._clock.clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  }

  _emit(event, payload) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (error) {
        if (event !== "error") {
          const message = `a ${event} listener threw: ${error?.message ?? error}`;
          this._emit("error", new CanvasError("listener_failed", message));
        }
      }
    }
  }
}

// --- helpers ----------------------------------------------------------------------------

function socketUrl(base, project) {
  return `${String(base).replace(/\/+$/, "")}/ws/${encodeURIComponent(project)}`;
}

function httpStatus(message) {
  const match = /Unexpected server response: (\d{3})/.exec(message ?? "");
  return match ? Number(match[1]) : null;
}

/** The `exp` of a JWT in milliseconds, read without verifying it (null when unreadable). */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const payload = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))));
    return typeof payload.exp === "number" ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}

function applyProps(object, props) {
  for (const [key, value] of Object.entries(props)) {
    if (key === "id") continue;
    if (value === null) delete object[key];
    else object[key] = value;
  }
  return object;
}

function publicChange(change) {
  const out = { op: change.op, id: change.id };
  if (change.object) out.object = change.object;
  if (change.props) out.props = change.props;
  return out;
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function jsonEqual(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual(a[k], b[k]));
}

function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

function randomId(random, length) {
  let out = "";
  while (out.length < length) out += Math.floor(random() * 36).toString(36);
  return out;
}

function rejected(error) {
  const promise = Promise.reject(error);
  promise.catch(() => {});
  return promise;
}
