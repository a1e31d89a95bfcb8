// @canvas-sync/client/indexeddb: keeps a CanvasClient's unsaved changes in the browser's
// IndexedDB, so that they survive a page reload (or a crash) and are sent on the next visit.
//
//   import { CanvasClient } from "@canvas-sync/client";
//   import { IndexedDBStorage } from "@canvas-sync/client/indexeddb";
//   const client = new CanvasClient({ url, project, storage: new IndexedDBStorage() });
//
// Each client (each tab) writes its own record. A new client adopts the records that no
// open tab holds any more (with the Web Locks API: every client holds a lock named after
// its record while it lives), so two open tabs never send each other's changes. Without
// Web Locks it adopts every record of the project. No imports: this file stands alone.

const STORE = "unsaved";

export class IndexedDBStorage {
  /**
   * @param {{name?: string, indexedDB?: IDBFactory, locks?: LockManager | null}} [options]
   */
  constructor(options = {}) {
    this.name = options.name ?? "canvas-sync";
    this.indexedDB = options.indexedDB ?? globalThis.indexedDB;
    this.locks = options.locks === undefined ? globalThis.navigator?.locks ?? null : options.locks;
    this.sessions = new Map(); // project -> {id, release}
    this.db = null;
  }

  /** The unsaved changes left by clients that are gone (adopted: they are this client's now). */
  async load(project) {
    const db = await this._open();
    const session = await this._session(project);
    const adopt = async () => {
      const held = await this._held();
      const tx = db.transaction(STORE, "readwrite");
      const store = tx.objectStore(STORE);
      const range = IDBKeyRange.bound([project, ""], [project, "\uffff"]);
      const records = await request(store.getAll(range));
      const orphans = records
        .filter((r) => r.session !== session.id && !held.has(this._lockName(project, r.session)))
        .sort((a, b) => a.updated - b.updated);
      const changes = orphans.flatMap((r) => r.changes);
      if (changes.length) store.put({ project, session: session.id, updated: Date.now(), changes });
      for (const r of orphans) store.delete([project, r.session]);
      await done(tx);
      return changes;
    };
    if (!this.locks) return adopt();
    // one adopter at a time per project: two tabs opening together never take the same record
    return this.locks.request(`${this.name}:${project}:adopt`, adopt);
  }

  /** This client's unsaved changes now (all of them, in order; none: the record goes). */
  async save(project, changes) {
    const db = await this._open();
    const session = await this._session(project);
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    if (changes.length) store.put({ project, session: session.id, updated: Date.now(), changes });
    else store.delete([project, session.id]);
    await done(tx);
  }

  /** The client closed: its record may be adopted by the next one. */
  release(project) {
    const session = this.sessions.get(project);
    this.sessions.delete(project);
    session?.release?.();
  }

  async _session(project) {
    let session = this.sessions.get(project);
    if (session) return session.ready;
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    session = { id };
    session.ready = new Promise((resolve) => {
      if (!this.locks) {
        resolve(session);
        return;
      }
      // held for as long as this page lives (or until release)
      this.locks.request(this._lockName(project, id), () => {
        resolve(session);
        return new Promise((release) => {
          session.release = release;
        });
      });
    });
    this.sessions.set(project, session);
    return session.ready;
  }

  async _held() {
    if (!this.locks) return new Set();
    const state = await this.locks.query();
    return new Set((state.held ?? []).map((lock) => lock.name));
  }

  _lockName(project, session) {
    return `${this.name}:${project}:${session}`;
  }

  _open() {
    if (this.db) return this.db;
    if (!this.indexedDB) return Promise.reject(new Error("IndexedDB is not available here"));
    this.db = new Promise((resolve, reject) => {
      const open = this.indexedDB.open(this.name, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(STORE, { keyPath: ["project", "session"] });
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
    return this.db;
  }
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
  });
}
