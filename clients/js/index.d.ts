// Types of @canvas-sync/client (index.js).

/** A canvas object: `id` and `type` and flat JSON properties. */
export interface CanvasObject {
  readonly id: string;
  readonly type: string;
  readonly [property: string]: unknown;
}

/** What `create` takes: `id` is made up when missing. */
export interface NewObject {
  id?: string;
  type: string;
  [property: string]: unknown;
}

/** Properties to set; `null` removes one. `id` cannot change. */
export type Props = { [property: string]: unknown };

export type PresenceState = { [key: string]: unknown };

export type Status = "connecting" | "open" | "reconnecting" | "closed";

export type ProtocolName = "canvas-sync.v3" | "canvas-sync.v2" | "canvas-sync.v1";

export const V3: "canvas-sync.v3";
export const V2: "canvas-sync.v2";
export const V1: "canvas-sync.v1";
export const PROTOCOLS: readonly ProtocolName[];

/** The server's answer to an accepted change. */
export interface Ack {
  op: "ack";
  req?: string;
  /** The clock stamp the change was given (canvas-sync.v3). */
  stamp?: string;
  /** Its place among this connection's accepted changes (canvas-sync.v3). */
  seq?: number;
  /** The object the change was about. */
  id: string;
  /** A change sent twice whose first send had landed (answered conflict / not_found the second time). */
  duplicate?: boolean;
}

/** A stored change (what a persistence adapter holds). */
export interface StoredChange {
  op: "create" | "update" | "delete";
  id: string;
  object?: NewObject & { id: string };
  props?: Props;
  /** The stamp of its ack, when it was acked: it is replayed with it. */
  stamp?: string;
  /** It was sent at least once (it may have landed). */
  sent?: boolean;
}

/** Where unsaved changes outlive the client: IndexedDBStorage, MemoryStorage, or your own. */
export interface Storage {
  /** The changes an earlier client left unsaved (this client sends them first). */
  load(project: string): Promise<StoredChange[] | null | undefined>;
  /** All of this client's unsaved changes now, in order ([] when none). */
  save(project: string, changes: StoredChange[]): Promise<void>;
  /** Called once the client is closed. */
  release?(project: string): void;
}

/** Keeps unsaved changes in memory: they outlive one CanvasClient, not the process. */
export class MemoryStorage implements Storage {
  records: Map<string, StoredChange[]>;
  load(project: string): Promise<StoredChange[]>;
  save(project: string, changes: StoredChange[]): Promise<void>;
}

/** Anything with the browser WebSocket's constructor and on* handlers (ws in Node). */
export interface WebSocketLike {
  readonly protocol: string;
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface CanvasClientOptions {
  /** The service's base WebSocket URL (`wss://host`), or a function returning it, called on every connect. */
  url: string | (() => string | Promise<string>);
  /** The project id. */
  project: string;
  /** A JWT, or a function returning one (or a promise of one), called on every connect and before expiry. None: no token. */
  token?: string | null | (() => string | null | undefined | Promise<string | null | undefined>);
  /** The WebSocket class (default: globalThis.WebSocket; in Node 20 pass `WebSocket` from the ws package). */
  WebSocket?: WebSocketConstructor;
  /** Keeps unsaved changes across reloads (IndexedDBStorage from "@canvas-sync/client/indexeddb"). */
  storage?: Storage | null;
  /** Least milliseconds between two presence messages (default 50; the latest state wins). */
  presenceInterval?: number;
  /** Milliseconds between pings (default 5000). */
  pingInterval?: number;
  /** Milliseconds without any frame after which the socket counts as dead (default 2 × pingInterval). */
  pingTimeout?: number;
  /** First reconnect delay in ms (default 1000; doubled each try, with jitter). */
  minDelay?: number;
  /** Longest reconnect delay in ms (default 30000). */
  maxDelay?: number;
  /** A connection open this long (ms) resets the backoff (default 10000). */
  stableAfter?: number;
  /** Undo steps kept (default 200). */
  historyLimit?: number;
  /** Messages a second this client sends at most (default 500, bursts of twice that). */
  maxRate?: number;
  /** Largest frame sent (default 65536, the server's default); a larger change is refused locally. */
  maxMessageBytes?: number;
  /** Subprotocols offered, newest first (default PROTOCOLS). */
  protocols?: string[];
  /** Used to ask why a browser's socket was refused (GET /projects/{p}/status); null turns it off. */
  fetch?: typeof fetch | null;
  /** Time and timers (tests). */
  clock?: Clock;
  /** A number in [0, 1) (the backoff's jitter, ids; tests). */
  random?: () => number;
}

export interface StatusEvent {
  status: Status;
  previous: Status;
  /** Milliseconds until the next try (reconnecting). */
  retryIn?: number;
  attempt?: number;
  /** open: the replica and subprotocol. */
  replica?: string | null;
  protocol?: string | null;
  /** closed: why. */
  code?: string;
  message?: string;
  cause?: number | string;
}

export interface ChangeEvent {
  id: string;
  /** The object now, or null when it is gone. */
  object: CanvasObject | null;
  previous: CanvasObject | null;
  /** local: this client; remote: someone else; ack, refused, snapshot, storage: the copy caught up. */
  origin: "local" | "remote" | "ack" | "refused" | "snapshot" | "storage";
}

export interface PresenceEvent {
  client: string;
  /** null when the client left. */
  state: PresenceState | null;
  sub?: string;
  left: boolean;
}

export interface SavedEvent {
  /** The seq the server named (null with a v1/v2 server, where an ack counts as saved). */
  seq: number | null;
  unsaved: number;
}

export interface UnsavedEvent {
  unsaved: number;
  pending: number;
}

export interface HistoryEvent {
  canUndo: boolean;
  canRedo: boolean;
}

/** A refused change (code: conflict, not_found, too_large, forbidden, ...) or a connection state. */
export class CanvasError extends Error {
  constructor(code: string, message?: string, details?: object);
  code: string;
  /** The refused change, for errors about one. */
  change?: { op: "create" | "update" | "delete"; id: string; object?: NewObject; props?: Props };
  /** The server's error message, as received. */
  reply?: { op: "error"; req?: string; code: string; message: string };
  /** The HTTP status or close code behind a fatal state. */
  cause?: unknown;
}

export interface EventMap {
  status: StatusEvent;
  change: ChangeEvent;
  presence: PresenceEvent;
  saved: SavedEvent;
  unsaved: UnsavedEvent;
  history: HistoryEvent;
  error: CanvasError;
}

export class CanvasClient {
  constructor(options: CanvasClientOptions);
  readonly project: string;
  /** Resolved once the first snapshot is in; rejected if the client closes before. */
  readonly ready: Promise<CanvasClient>;
  /** The local copy: the server's state with this client's waiting changes on top. Read only. */
  readonly objects: Map<string, CanvasObject>;
  /** Everyone else's presence, by connection id. */
  readonly others: Map<string, PresenceState>;
  readonly status: Status;
  /** The subprotocol the server chose, once connected. */
  readonly protocol: ProtocolName | null;
  /** The replica serving this connection. */
  readonly replica: string | null;
  /** Why the client is closed (fatal: forbidden, bad_project, project_deleted, unauthorized, ...). */
  readonly closeReason: { code: string; message: string; cause?: unknown } | null;
  /** Changes not yet in the database (with a v1/v2 server: not yet acked). */
  readonly unsaved: number;
  /** Changes not yet acked (queued offline or in flight). */
  readonly pending: number;
  readonly canUndo: boolean;
  readonly canRedo: boolean;

  create(object: NewObject): Promise<Ack>;
  update(id: string, props: Props): Promise<Ack>;
  delete(id: string): Promise<Ack>;
  /** A fresh object id. */
  newId(): string;
  setPresence(state: PresenceState | null): void;
  /** Resolved once nothing is unsaved. */
  saved(): Promise<void>;
  /** Ask before the page is left with unsaved changes; returns a function that stops asking. */
  warnBeforeUnload(target?: { addEventListener: Function; removeEventListener: Function }): () => void;
  on<K extends keyof EventMap>(event: K, listener: (event: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, listener: (event: EventMap[K]) => void): void;
  /** Everything fn changes is one undo step. */
  batch<T>(fn: () => T): T;
  pauseHistory(): void;
  resumeHistory(): void;
  /** Undo this client's latest step (other people's later changes stay); false when nothing was undone. */
  undo(): boolean;
  redo(): boolean;
  /** Try now instead of waiting for the backoff. */
  reconnect(): void;
  /** Close for good; unsaved changes stay in the storage adapter. */
  close(): Promise<void>;
}

/** The `exp` of a JWT in milliseconds (not verified), or null. */
export function tokenExpiry(token: string | null | undefined): number | null;
