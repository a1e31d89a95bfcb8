"""``canvas-sync dev``: the zero-setup local run.

Starts DynamoDB Local (or, without Java or npm, moto's server, saying so), a local
redis-server for the live relay when one is installed (or says that the replicas will see
each other only through the table), creates the table, starts N replica processes on
consecutive ports, prints their URLs, and stops everything on Ctrl-C or SIGTERM, letting
each replica flush first.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ..config import AuthMode, Settings
from ..store import DynamoStore, make_client
from ..tokens import generate_keys
from .dynamodb_local import DynamoDBLocal, Unavailable
from .process import cache_dir, free_port
from .redis_local import RedisServer
from .redis_local import Unavailable as RedisUnavailable
from .replicas import ReplicaError, ReplicaProcess

log = logging.getLogger(__name__)


def start_database() -> tuple[str, Callable[[], None]]:
    """An endpoint and a function that stops it: DynamoDB Local, else moto's server."""
    try:
        local = DynamoDBLocal().start()
        log.info("DynamoDB Local started", extra={"event": "dynamodb_local", "endpoint": local.endpoint})
        return local.endpoint, local.stop
    except Unavailable as error:
        log.warning(
            "DynamoDB Local unavailable; falling back to moto's in-process DynamoDB (development only)",
            extra={"event": "dynamodb_fallback", "reason": str(error)},
        )
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return f"http://127.0.0.1:{port}", server.stop


def start_relay(settings: Settings) -> tuple[str | None, Callable[[], None]]:
    """A Redis URL for the relay (``CANVAS_REDIS_URL`` if set, else a local redis-server) and
    a function that stops what was started; no URL when neither is there."""
    if settings.redis_url:
        return settings.redis_url, lambda: None
    try:
        server = RedisServer().start()
    except RedisUnavailable as error:
        log.warning(
            "no redis-server: the replicas will see each other only through the table (seconds, not milliseconds)",
            extra={"event": "relay_off", "reason": str(error)},
        )
        return None, lambda: None
    log.info("redis-server started for the live relay", extra={"event": "redis_local", "url": server.url})
    return server.url, server.stop


def dev_auth(settings: Settings) -> dict[str, str]:
    """The replicas' authentication: development keys made once in the cache (the demo page
    gets tokens from /dev/token), or off when CANVAS_AUTH=off says so."""
    if settings.auth == AuthMode.off:
        return {"CANVAS_AUTH": "off"}
    folder = cache_dir() / "dev-keys"
    private, jwks = folder / "private.pem", folder / "jwks.json"
    if not (private.exists() and jwks.exists()):
        private, jwks = generate_keys(folder)
    return {"CANVAS_AUTH": "jwt", "CANVAS_AUTH_JWKS_URL": jwks.resolve().as_uri(), "CANVAS_DEV_TOKEN_KEY": str(private)}


def run_dev(settings: Settings, replicas: int, host: str, base_port: int) -> int:
    endpoint, stop_database = start_database()
    redis_url, stop_relay = start_relay(settings)
    auth = dev_auth(settings)
    started: list[ReplicaProcess] = []
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        store = DynamoStore(make_client(endpoint), settings.table)
        store.create_table()
        store.close()
        for i in range(replicas):
            replica = ReplicaProcess.configure(f"replica-{i + 1}", base_port + i, endpoint, settings.table, host=host)
            if redis_url:
                replica.env["CANVAS_REDIS_URL"] = redis_url
            replica.env.update(auth)
            started.append(replica.start(wait=False))
        for replica in started:
            try:
                replica.wait_ready()
            except ReplicaError as error:
                print(f"canvas-sync dev: {error}", file=sys.stderr)
                return 1
        print(f"\nDynamoDB: {endpoint}  table: {settings.table}")
        if "CANVAS_DEV_TOKEN_KEY" in auth:
            key = auth["CANVAS_DEV_TOKEN_KEY"]
            print(f"Auth: development keys in {Path(key).parent}; the demo page gets a token from /dev/token.")
            print(f"      Your own: canvas-sync token --key {key} --sub you --project demo=editor")
        else:
            print("Auth: OFF (CANVAS_AUTH=off): anyone who reaches these ports may edit everything")
        if redis_url:
            print(f"Live relay: {redis_url} (edits and cursors reach the other replicas in milliseconds)")
        else:
            print("Live relay: off (no redis-server here): replicas see each other through the table, seconds later")
        for replica in started:
            url = replica.url
            print(f"{replica.name}: {url}   page {url}/?project=demo   WebSocket {replica.ws_url('<project>')}")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stopping.is_set() and all(r.running for r in started):
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for replica in started:  # every replica flushes at once, then each is awaited
            replica.send_signal(signal.SIGTERM)
        for replica in started:
            try:
                replica.terminate(settings.shutdown_timeout + 5)
            except subprocess.TimeoutExpired:
                replica.kill()
        stop_relay()
        stop_database()
    return 0
