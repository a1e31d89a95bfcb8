// Types of @canvas-sync/client/indexeddb (indexeddb.js).

import type { Storage, StoredChange } from "./index.js";

export interface IndexedDBStorageOptions {
  /** The database's name (default "canvas-sync"); also the prefix of its Web Locks. */
  name?: string;
  /** Default: globalThis.indexedDB. */
  indexedDB?: IDBFactory;
  /** Default: navigator.locks; null: adopt every stored record of the project (one tab at a time). */
  locks?: LockManager | null;
}

/** Unsaved changes in IndexedDB: they survive a reload and are sent by the next page. */
export class IndexedDBStorage implements Storage {
  constructor(options?: IndexedDBStorageOptions);
  readonly name: string;
  /** Adopts the records of clients (tabs) that are gone and returns their changes, oldest first. */
  load(project: string): Promise<StoredChange[]>;
  save(project: string, changes: StoredChange[]): Promise<void>;
  release(project: string): void;
}
