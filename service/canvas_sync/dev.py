"""``canvas-sync dev``: the zero-setup local run.

Starts DynamoDB Local (or, without Java or npm, moto's server, saying so), creates the
table, starts N replica processes on consecutive ports, prints their URLs, and stops
everything on Ctrl-C or SIGTERM, letting each replica flush first.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from .config import Settings
from .dynamodb_local import DynamoDBLocal, Unavailable, free_port
from .store import DynamoStore, make_client

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


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def run_dev(settings: Settings, replicas: int, host: str, base_port: int) -> int:
    endpoint, stop_database = start_database()
    processes: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        store = DynamoStore(make_client(endpoint), settings.table)
        store.create_table()
        store.close()
        for i in range(replicas):
            env = dict(
                os.environ,
                CANVAS_DYNAMODB_ENDPOINT=endpoint,
                CANVAS_REPLICA_ID=f"replica-{i + 1}",
                CANVAS_TABLE=settings.table,
            )
            cmd = [sys.executable, "-m", "canvas_sync", "serve", "--host", host, "--port", str(base_port + i)]
            processes.append(subprocess.Popen(cmd, env=env))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        urls = [f"http://{shown}:{base_port + i}" for i in range(replicas)]
        for url, process in zip(urls, processes, strict=True):
            if not wait_ready(url, process):
                print(f"canvas-sync dev: replica at {url} did not become ready", file=sys.stderr)
                return 1
        print(f"\nDynamoDB: {endpoint}  table: {settings.table}")
        for i, url in enumerate(urls):
            ws = url.replace("http", "ws", 1)
            print(f"replica-{i + 1}: {url}   page {url}/?project=demo   WebSocket {ws}/ws/<project>")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stopping.is_set() and all(p.poll() is None for p in processes):
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(settings.shutdown_timeout + 5)
            except subprocess.TimeoutExpired:
                process.kill()
        stop_database()
    return 0
