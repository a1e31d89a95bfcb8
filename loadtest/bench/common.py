"""Shared helpers for the benchmarks: processes, percentiles, tables, metrics."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from canvas_sync.devtools.process import free_port
from canvas_sync.devtools.replicas import ReplicaProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TABLE = "bench_objects"


def pct(samples: list[float], q: int) -> float:
    if not samples:
        return float("nan")
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


@dataclass(frozen=True)
class Server:
    """A baseline server process: where it listens, and its pid (for its CPU time and memory)."""

    port: int
    pid: int


@contextmanager
def baseline(script: str, *args: str) -> Iterator[Server]:
    """A baseline server (``baseline_*.py``), ready once ``/`` answers at all."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start")
            time.sleep(0.1)
        yield Server(port, proc.pid)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def replica(
    endpoint: str,
    name: str | None = None,
    log_path: Path | None = None,
    cpus: set[int] | None = None,
    stop_timeout: float = 30,
    **settings: object,
) -> Iterator[ReplicaProcess]:
    """One replica process; each gets its own replica id (the clock breaks ties by it).
    ``log_path``: where its log goes (default: nowhere); ``cpus``: pinned to those cores."""
    port = free_port()
    # No rate or connection limits: the benchmarks measure capacity (1,000 idle sockets
    # come from one address), not the limits.
    settings = {
        "rate_limit": 0,
        "log_level": "warning",
        "auth": "off",
        "max_connections_per_address": 0,
        "max_connections_per_project": 0,
        "max_connections_per_subject": 0,
        **settings,
    }
    name = name or f"bench-{port}"
    server = ReplicaProcess.configure(name, port, endpoint, TABLE, log_path=log_path or Path(os.devnull), **settings)
    server.cpus = cpus
    try:
        yield server.start()
    finally:
        try:
            server.terminate(stop_timeout)
        except subprocess.TimeoutExpired:
            server.kill()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read()


def metrics(port: int) -> dict[str, float]:
    """Every canvas_* sample, keyed by name with its labels as printed."""
    text = get(port, "/metrics").decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(canvas_[^ ]+) (\S+)$", text, re.M)}


def counter(port: int, name: str, labels: str = "") -> float:
    """The sum of a metric's series whose labels contain ``labels`` (e.g. 'outcome="success"')."""
    return sum(v for k, v in metrics(port).items() if k.split("{")[0] == name and labels in k)


def wait_clean(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while metrics(port)["canvas_dirty_objects"] and time.monotonic() < deadline:
        time.sleep(0.1)


@contextmanager
def pinned(pid: int | None, cpus: set[int] | None) -> Iterator[None]:
    """Every thread of process ``pid`` (0: this one) on ``cpus`` for the block, then back.

    A process's affinity is per thread: setting it on the pid alone moves only the main
    thread, and a JVM's (DynamoDB Local's) others went on running, garbage collecting and
    answering saves on the core of the server under test."""
    if pid is None or not cpus:
        yield
        return
    saved = {}
    for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
        tid = int(task.name)
        try:
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    try:
        yield
    finally:
        for tid, before in saved.items():
            try:
                os.sched_setaffinity(tid, before)
            except OSError:
                pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
