"""The peers benchmark's installer and driver (``loadtest/peers``, ``loadtest/bench/peers.py``):
the one node driver gets edits through canvas-sync, Hocuspocus (in memory and, where
better-sqlite3 built, with SQLite) and y-websocket's server, and times them at the observers.

The peers (Node 22, Hocuspocus, y-websocket's server) are fetched into the cache by
``python -m loadtest.peers fetch`` (about a minute: better-sqlite3 builds from source).
Not fetched yet, this skips saying so; with ``CANVAS_STRICT_TESTS=1`` it fetches them.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from loadtest.bench import peers as bench
from loadtest.peers import install
from tests.helpers import STRICT, missing

pytestmark = pytest.mark.dynamodb_local

WINDOW = {"clients": 4, "observers": 2, "rate": 20, "warmup": 0.3, "seconds": 1, "settle": 0.3}


@pytest.fixture(scope="module")
def peers() -> install.Peers:
    found = install.installed()
    if found is not None:
        return found
    if shutil.which("npm") is None:
        missing("npm is not installed, so the peers (Hocuspocus, y-websocket) cannot be fetched")
    if not STRICT:
        pytest.skip("the peers are not fetched yet: python -m loadtest.peers fetch (about a minute)")
    try:
        return install.ensure_installed()
    except install.Unavailable as error:
        missing(str(error))
        raise  # unreachable: missing() fails


def _check(result: dict[str, Any]) -> None:
    assert result["edits"] >= 4 * 20 * 0.8, result  # 4 clients, 20 edits/s, 1 s
    assert result["expected"] > 0, result
    assert result["delivered"] >= 0.5, result  # coalescing may merge some, never most, at this load
    assert result["p99_ms"] is not None and result["p99_ms"] < 1000, result
    assert result["closed_early"] == 0, result


def test_driver_against_each_peer(peers: install.Peers) -> None:
    assert peers.node.exists()
    systems = [s for s in bench.PEERS if peers.sqlite or s != "hocuspocus-sqlite"]
    for system in systems:
        with bench.serve(system, "", peers, None) as target:
            _check(bench.drive(target, peers.node, peers.env(), None, **WINDOW))


def test_driver_against_canvas_sync(peers: install.Peers, replicas: Any) -> None:
    replica = replicas("peers", rate_limit=0)
    target = bench.Target("canvas", replica.url.replace("http", "ws", 1), replica.pid)
    result = bench.drive(target, peers.node, peers.env(), None, **WINDOW)
    _check(result)
    assert result["acks"] > 0, result
