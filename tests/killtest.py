"""The SIGKILL scenario, shared by the Python client's test and the JavaScript client's.

Two replicas, A and B, serve one DynamoDB Local table (with the relay when a Redis URL is
given). Clients edit through A; at a moment the test picks, A is killed with SIGKILL (no
final flush: whatever A held unsaved is gone from the server side) and the clients' URL
function moves them to B, where they replay what was not yet ``saved``. At the end the
table, read directly through a store (never a replica's memory), must hold exactly each
client's final intended state.

The harness knows nothing about the clients, so either client can be driven against it:

    with KillScenario(endpoint, table, log_dir, redis_url=None) as scenario:
        scenario.current_url        # the base URL clients should use now ("ws://host:port")
        scenario.url_file           # the same, in a file rewritten at the kill (for a node script)
        scenario.kill_delay         # seconds after the start of editing to kill A (2 to 5, seeded)
        ...                         # clients edit through scenario.current_url
        killed_at = scenario.kill_a()   # SIGKILL A; current_url / url_file now name B
        ...                         # clients reconnect to B, keep going, wait until saved
        summary = scenario.check(project, expected, changes=..., acked_unsaved_at_kill=...)
        scenario.write_summary("sigkill-python-relay", summary)
        assert summary["lost"] == 0

Keep a client (a watcher) on B from the start: B then holds the project when A dies, so
with the relay it has A's unsaved edits in memory, and without it it may not have read A's
last save yet, which are the two cases a replay must survive.

``expected`` maps each object id a client ever touched to its final intended state (the
object as ``{"id", "type", ...}``) or ``None`` when it should not exist (deleted). The
interface (``urls``, ``current_url``, ``url_file``, ``kill_delay``, ``kill_a``,
``table_state``, ``check``, ``write_summary``) is kept stable: other tests import it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from canvas_sync.devtools.process import free_port
from canvas_sync.store import DynamoStore, make_client

from tests.helpers import OUTPUT, Replica


class KillScenario:
    """Replicas A and B on one table; A is the one that dies."""

    def __init__(
        self,
        endpoint: str,
        table: str,
        log_dir: Path,
        redis_url: str | None = None,
        autosave_interval: float = 2.0,
        seed: int | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` become both replicas' ``CANVAS_*`` variables (``auth="off"`` unless given)."""
        self.endpoint = endpoint
        self.table = table
        self.log_dir = Path(log_dir)
        self.redis_url = redis_url
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.kill_delay = random.Random(self.seed).uniform(2.0, 5.0)
        """Seconds after editing starts at which the test should call :meth:`kill_a` (2 to 5)."""
        common: dict[str, Any] = {
            "autosave_interval": autosave_interval,
            "shutdown_timeout": 10,
            "auth": "off",
            **settings,
        }
        if redis_url:
            common["redis_url"] = redis_url
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.a = Replica.configure(
            "replica-a", free_port(), endpoint, table, log_path=self.log_dir / "replica-a.log", **common
        )
        self.b = Replica.configure(
            "replica-b", free_port(), endpoint, table, log_path=self.log_dir / "replica-b.log", **common
        )
        self.url_file = self.log_dir / "current-url"
        """A file holding :attr:`current_url`, rewritten by :meth:`kill_a` (read it on every connect)."""
        self.killed_at: float | None = None
        """``time.time()`` of the SIGKILL, once it happened."""
        self._store = DynamoStore(make_client(endpoint), table, replica_id="killtest")

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KillScenario:
        """Start A and B and wait until both are ready."""
        self.a.start()
        self.b.start()
        self._write_url()
        return self

    def stop(self) -> None:
        for replica in (self.a, self.b):
            replica.kill()
        self._store.close()

    def __enter__(self) -> KillScenario:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- what clients use ------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """Both replicas' base WebSocket URLs: ``{"a": "ws://...", "b": "ws://..."}``."""
        return {"a": _ws(self.a.url), "b": _ws(self.b.url)}

    @property
    def current_url(self) -> str:
        """A's base URL until it is killed, then B's. A client's URL function returns this."""
        return self.urls["b" if self.killed_at is not None else "a"]

    def kill_a(self) -> float:
        """SIGKILL replica A (and wait for it to be gone); clients are pointed at B first, so a
        reconnect that races the kill already goes to B. Returns the kill's ``time.time()``."""
        self.killed_at = time.time()
        self._write_url()
        assert self.a.process is not None, "replica A was not started"
        self.a.kill()
        return self.killed_at

    # --- what the table holds --------------------------------------------------------------

    def table_state(self, project: str) -> dict[str, dict[str, Any]]:
        """The live objects of ``project`` in DynamoDB (a consistent read), by id."""
        return {
            state.id: view
            for state in self._store.load_project(project)
            if state.is_alive and (view := state.view()) is not None
        }

    def check(self, project: str, expected: dict[str, dict[str, Any] | None], **counts: Any) -> dict[str, Any]:
        """Compare the table with each client's final intended state.

        ``missing``: expected alive, not in the table (a create lost, or a delete that should
        not have happened); ``resurrected``: expected deleted, in the table (a delete lost);
        ``wrong``: there, with other properties (an update lost, or overwritten by an older
        one); ``unexpected``: in the table, never touched by any client (a duplicate).
        ``lost`` counts the first three. ``counts`` (changes made, acked-but-unsaved at the
        kill, ...) are copied into the summary as given."""
        table = self.table_state(project)
        missing = sorted(oid for oid, obj in expected.items() if obj is not None and oid not in table)
        resurrected = sorted(oid for oid, obj in expected.items() if obj is None and oid in table)
        wrong = [
            {"id": oid, "expected": obj, "table": table[oid]}
            for oid, obj in sorted(expected.items())
            if obj is not None and oid in table and table[oid] != obj
        ]
        unexpected = sorted(set(table) - set(expected))
        lost = len(missing) + len(resurrected) + len(wrong)
        return {
            "project": project,
            "relay": bool(self.redis_url),
            "seed": self.seed,
            "kill_delay_s": round(self.kill_delay, 3),
            "objects_expected_alive": sum(obj is not None for obj in expected.values()),
            "objects_expected_deleted": sum(obj is None for obj in expected.values()),
            "objects_in_table": len(table),
            **counts,
            "lost": lost,
            "duplicated": len(unexpected),
            "missing": missing,
            "resurrected": resurrected,
            "wrong": wrong[:20],
            "unexpected": unexpected[:20],
            "ok": lost == 0 and not unexpected,
        }

    def write_summary(self, name: str, summary: dict[str, Any]) -> Path:
        """Write ``summary`` as ``test-output/<name>.json``; its path."""
        OUTPUT.mkdir(exist_ok=True)
        path = OUTPUT / f"{name}.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return path

    def _write_url(self) -> None:
        self.url_file.write_text(self.current_url + "\n")


def _ws(http_url: str) -> str:
    return http_url.replace("http", "ws", 1)
