"""``peers``: canvas-sync beside Hocuspocus 4 (with its SQLite extension, and in memory) and
y-websocket's server (``@y/websocket-server``), side by side under one node driver
(``loadtest/peers/driver.mjs``) that speaks each one's protocol.

Every client drags its own shape (a canvas object; a Y.Map entry) at a fixed rate on an
open loop, with its send time in the edit; a few observer clients per board decode
everything and time every other client's edit from send to arrival (one process, one
clock); the others read and drop, so flow control is real. Three workloads:

- big board: everyone on one board, 20 edits/s each, clients stepped up: the most clients
  with a propagation p99 under 100 ms ("clients per core"), and the server's CPU per
  1,000 edits at 128 clients. canvas-sync also with permessage-deflate offered, as
  browsers do;
- quiet board: 16 clients, 20 edits/s each: propagation p50/p99;
- many small boards: 200 boards of 4 clients, 5 edits/s each: CPU per 1,000 edits and
  resident memory per connection.

The server under test is pinned to one core, the driver (and DynamoDB Local's JVM, which
canvas-sync saves to) to another; CPU is the server process's CPU time (/proc) over the
measured window. The systems' runs are interleaved (A B C D, A B C D, ...) and each figure
is given as the range over the repeats. Hocuspocus, y-websocket's server and Node 22 come
from npm into the cache (``python -m loadtest.peers fetch``, run on first use).

    python -m loadtest.bench peers [--seconds S]
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvas_sync.devtools.process import free_port

from loadtest.peers import install

from .common import cpu_seconds, pinned, replica, rss_bytes, stop, table

DRIVER = install.HERE / "driver.mjs"
HOCUSPOCUS = install.HERE / "hocuspocus.mjs"

SYSTEMS = {
    "canvas": "canvas-sync",
    "canvas-deflate": "canvas-sync, permessage-deflate offered",
    "hocuspocus-sqlite": "Hocuspocus 4.7, SQLite extension",
    "hocuspocus-memory": "Hocuspocus 4.7, in memory",
    "y-websocket": "y-websocket server (@y/websocket-server 0.1.1)",
}
PEERS = ("hocuspocus-sqlite", "hocuspocus-memory", "y-websocket")
BIG_STEPS = (32, 64, 128, 192, 256, 320, 384, 448, 512)
"""Up to 512: on a fast machine Hocuspocus holds 256 to 320 and canvas-sync more, so a top step
of 320 (as before 2026-12-06) did not tell them apart."""
CPU_AT = 128
"""The big board's CPU per 1,000 edits is read at this many clients."""
RATE = 20.0
QUIET_CLIENTS = 16
SMALL_BOARDS, SMALL_CLIENTS, SMALL_RATE = 200, 4, 5.0
SMALL_SECONDS = 10.0
"""The small boards' window: two of canvas-sync's 5 s save intervals, so every run holds as
many save passes (in 3 s windows a pass, 200 head updates and 800 items, fell in or not:
182 to 219 ms per 1,000 edits), and past Hocuspocus' 2 s SQLite debounce."""
P99_GOAL_MS = 100.0
OBSERVERS = 8
"""Observers on the big board (on the others: every quiet client, one per small board)."""
REPEATS = 2
DRIVER_FULL = 0.9
"""Past this share of its core busy, the driver's own queueing shows in the latencies."""
CONTENDED = 0.1
"""Past this share of the window spent waiting for its core, other processes held the server back."""
DRIVER_LAG_MS = 50.0
"""Past this event-loop delay (p99) in the driver, it timed arrivals late (a full core, or a shared one)."""


@dataclass(frozen=True)
class Target:
    system: str
    url: str
    pid: int


def _cores() -> tuple[set[int] | None, set[int] | None]:
    """(server, driver) cores: the second core for the server, the first for the driver."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[1]}, {cores[0]}


def _pin(cpus: set[int] | None) -> Any:
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within {timeout:.0f}s")


@contextmanager
def serve(
    system: str, endpoint: str, peers: install.Peers, cpus: set[int] | None, **settings: object
) -> Iterator[Target]:
    """A fresh server of ``system`` on its own port, pinned to ``cpus`` (``settings``: canvas-sync's ``CANVAS_*``)."""
    if system.startswith("canvas"):
        with replica(endpoint, cpus=cpus, **settings) as server:
            yield Target(system, f"ws://127.0.0.1:{server.port}", server.pid)
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="peers-") as folder:
        if system == "y-websocket":
            script = peers.modules / "@y" / "websocket-server" / "src" / "server.js"
            command = [str(peers.node), str(script)]
            env = peers.env({**os.environ, "HOST": "127.0.0.1", "PORT": str(port)})
        else:
            mode = system.removeprefix("hocuspocus-")
            command = [str(peers.node), str(HOCUSPOCUS), str(port), mode, str(Path(folder) / "documents.sqlite")]
            env = peers.env()
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin(cpus)
        )
        try:
            _wait_port(port, proc, system)
            yield Target(system, f"ws://127.0.0.1:{port}", proc.pid)
        finally:
            stop(proc)


def waited_seconds(pid: int) -> float:
    """Time the process's threads have spent runnable but waiting for a core (/proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def drive(target: Target, node: Path, env: dict[str, str], cpus: set[int] | None, **options: Any) -> dict[str, Any]:
    """One driver run against ``target``: its result, with the server's CPU time and RSS
    over the measured window."""
    protocol = "canvas" if target.system.startswith("canvas") else target.system.split("-")[0]
    if protocol == "y":
        protocol = "ywebsocket"
    config = {
        "system": protocol,
        "url": target.url,
        "deflate": target.system == "canvas-deflate",
        "prefix": f"peers{time.time_ns()}",
        **options,
    }
    rss_idle = rss_bytes(target.pid)
    proc = subprocess.Popen(
        [str(node), str(DRIVER), json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_pin(cpus),
    )
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + 120 + float(config.get("seconds", 4)) * 2
    cpu_start = cpu_stop = rss_stop = wait_start = wait_stop = 0.0
    result: dict[str, Any] | None = None
    try:
        while result is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise RuntimeError(f"the driver did not finish against {target.system}")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the driver exited against {target.system}: {proc.stderr.read().decode()[-2000:]}")
            message = json.loads(line)
            event = message.get("event")
            if event == "start":
                cpu_start, wait_start = cpu_seconds(target.pid), waited_seconds(target.pid)
            elif event == "stop":
                cpu_stop, wait_stop = cpu_seconds(target.pid), waited_seconds(target.pid)
                rss_stop = rss_bytes(target.pid)
            elif event == "error":
                raise RuntimeError(f"the driver failed against {target.system}: {message['message']}")
            elif event == "result":
                result = message
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    cpu = cpu_stop - cpu_start
    edits = max(1, int(result["edits"]))
    seconds = float(config.get("seconds", 4))
    driver_full = result["driver_cores"] >= DRIVER_FULL or result["driver_loop_p99_ms"] >= DRIVER_LAG_MS
    result.update(
        server_cores=round(cpu / seconds, 3),
        server_waited_for_cpu=round((wait_stop - wait_start) / seconds, 3),
        server_cpu_ms_per_1000_edits=round(1e6 * cpu / edits, 1),
        server_rss_mib=round(rss_stop / 2**20, 1),
        rss_growth_kib_per_connection=round((rss_stop - rss_idle) / 1024 / max(1, result["clients"]), 1),
        delivered=round(result["observed"] / max(1, result["expected"]), 3),
        driver_full=driver_full,
        passed=bool(result["p99_ms"] is not None and result["p99_ms"] < P99_GOAL_MS and not result["closed_early"]),
    )
    for key in ("event", "system"):
        result.pop(key, None)
    return result


def _span(values: list[float | int | None]) -> list[float] | None:
    present = [float(v) for v in values if v is not None]
    return [min(present), max(present)] if present else None


def run(endpoint: str, seconds: float = 3.0, database_pid: int | None = None) -> dict[str, Any]:
    try:
        peers = install.ensure_installed()
    except install.Unavailable as error:
        # the driver itself runs on the installed Node 22 with its yjs and ws
        print(f"peers: skipped: {error}", file=sys.stderr)
        return {"unavailable": str(error)}
    systems = [s for s in SYSTEMS if peers.sqlite or s != "hocuspocus-sqlite"]
    node, env = peers.node, peers.env()
    server_cpus, driver_cpus = _cores()
    window = {"warmup": 1, "seconds": seconds, "settle": 1}
    small_window = {**window, "seconds": max(seconds, SMALL_SECONDS)}
    big: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in systems}
    quiet: dict[str, list[dict[str, Any]]] = {s: [] for s in systems if s != "canvas-deflate"}
    small: dict[str, list[dict[str, Any]]] = {s: [] for s in systems if s != "canvas-deflate"}
    started = time.monotonic()
    with pinned(database_pid, driver_cpus):  # off the server's core
        for repeat in range(REPEATS):
            for system in systems:
                rows: list[dict[str, Any]] = []
                with serve(system, endpoint, peers, server_cpus) as target:
                    for clients in BIG_STEPS:
                        row = drive(
                            target, node, env, driver_cpus, clients=clients, observers=OBSERVERS, rate=RATE, **window
                        )
                        rows.append(row)
                        _progress(started, f"big {system} r{repeat}", row)
                        if clients >= CPU_AT and not row["passed"]:
                            break
                        time.sleep(0.5)
                big[system].append(rows)
            for system in quiet:
                with serve(system, endpoint, peers, server_cpus) as target:
                    row = drive(
                        target, node, env, driver_cpus, clients=QUIET_CLIENTS, observers=QUIET_CLIENTS, **window
                    )
                quiet[system].append(row)
                _progress(started, f"quiet {system} r{repeat}", row)
            for system in small:
                with serve(system, endpoint, peers, server_cpus) as target:
                    time.sleep(0.5)  # settled after start
                    row = drive(
                        target,
                        node,
                        env,
                        driver_cpus,
                        projects=SMALL_BOARDS,
                        clients=SMALL_CLIENTS,
                        observers=1,
                        rate=SMALL_RATE,
                        **small_window,
                    )
                small[system].append(row)
                _progress(started, f"small {system} r{repeat}", row)
    summary = {}
    for system in systems:
        passed = [max((r["clients"] for r in rows if r["passed"]), default=0) for rows in big[system]]
        at = [r for rows in big[system] for r in rows if r["clients"] == CPU_AT]
        summary[system] = {
            "clients_per_core": _span(list(passed)),
            "big_cpu_ms_per_1000_edits": _span([r["server_cpu_ms_per_1000_edits"] for r in at]),
            "big_p99_ms_at_cpu_step": _span([r["p99_ms"] for r in at]),
            "big_cpu_behind": any(not r["passed"] for r in at),
            "driver_full": any(r["driver_full"] for rows in big[system] for r in rows),
            "server_waited_for_cpu_max": max(
                r["server_waited_for_cpu"]
                for r in [*(r for rows in big[system] for r in rows), *quiet.get(system, []), *small.get(system, [])]
            ),
        }
        if system in quiet:
            summary[system].update(
                quiet_p50_ms=_span([r["p50_ms"] for r in quiet[system]]),
                quiet_p99_ms=_span([r["p99_ms"] for r in quiet[system]]),
                small_cpu_ms_per_1000_edits=_span([r["server_cpu_ms_per_1000_edits"] for r in small[system]]),
                small_rss_kib_per_connection=_span([r["rss_growth_kib_per_connection"] for r in small[system]]),
                small_p99_ms=_span([r["p99_ms"] for r in small[system]]),
            )
    return {
        "systems": {s: SYSTEMS[s] for s in systems},
        "summary": summary,
        "big": big,
        "quiet": quiet,
        "small": small,
        "settings": {
            "steps": list(BIG_STEPS),
            "cpu_at": CPU_AT,
            "rate": RATE,
            "observers": OBSERVERS,
            "quiet_clients": QUIET_CLIENTS,
            "small": [SMALL_BOARDS, SMALL_CLIENTS, SMALL_RATE],
            "repeats": REPEATS,
            **window,
            "small_seconds": small_window["seconds"],
            "server_cpus": sorted(server_cpus or []),
            "driver_cpus": sorted(driver_cpus or []),
            "database_on_driver_cpus": database_pid is not None and bool(driver_cpus),
        },
        "versions": {"node": install.NODE_VERSION, **install.PACKAGES},
        "sqlite": peers.sqlite,
        "sqlite_error": peers.sqlite_error,
    }


def _progress(started: float, what: str, row: dict[str, Any]) -> None:
    print(
        f"[peers {time.monotonic() - started:4.0f}s] {what}: {row['clients']} clients, p50 {row['p50_ms']} "
        f"p99 {row['p99_ms']} ms, server {row['server_cores']} cores, "
        f"{row['server_cpu_ms_per_1000_edits']} ms/1000 edits, waited {row['server_waited_for_cpu']}, "
        f"driver {row['driver_cores']} cores" + (f", {row['closed_early']} closed" if row["closed_early"] else ""),
        file=sys.stderr,
        flush=True,
    )


# --- the report -------------------------------------------------------------------------------

METRICS = (
    # key, heading, higher is better
    ("clients_per_core", f"big board: most clients with p99 < {P99_GOAL_MS:g} ms", True),
    ("big_cpu_ms_per_1000_edits", f"big board: server CPU ms / 1,000 edits at {CPU_AT} clients", False),
    ("big_p99_ms_at_cpu_step", f"big board: p99 ms at {CPU_AT} clients", False),
    ("quiet_p50_ms", f"quiet board ({QUIET_CLIENTS} clients): p50 ms", False),
    ("quiet_p99_ms", f"quiet board ({QUIET_CLIENTS} clients): p99 ms", False),
    ("small_cpu_ms_per_1000_edits", f"{SMALL_BOARDS} small boards: server CPU ms / 1,000 edits", False),
    ("small_rss_kib_per_connection", f"{SMALL_BOARDS} small boards: RSS growth KiB / connection", False),
)


def _fmt(span: list[float] | None) -> str:
    if span is None:
        return "-"
    low, high = (f"{v:g}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}" for v in span)
    return low if low == high else f"{low} to {high}"


def _cell(summary: dict[str, Any], key: str) -> str:
    text = _fmt(summary.get(key))
    if key == "big_cpu_ms_per_1000_edits" and summary.get("big_cpu_behind"):
        text += " (behind: p99 over the goal, so not every edit sent was handled in the window)"
    return text


def verdicts(r: dict[str, Any]) -> list[str]:
    """Per figure: who wins outright (ranges apart) between canvas-sync and each peer."""
    out = []
    ours = r["summary"]["canvas"]
    for key, heading, higher in METRICS:
        mine = ours.get(key)
        if mine is None:
            continue
        won, lost = [], []
        for peer in PEERS:
            theirs = r["summary"].get(peer, {}).get(key)
            if theirs is None:
                continue
            better, worse = (
                (theirs[0] > mine[1], theirs[1] < mine[0]) if higher else (theirs[1] < mine[0], theirs[0] > mine[1])
            )
            if better:
                won.append(f"{r['systems'][peer]} ({_fmt(theirs)})")
            elif worse:
                lost.append(r["systems"][peer])
        if won:
            out.append(f"- **A peer wins** on {heading}: {', '.join(won)} against canvas-sync's {_fmt(mine)}.")
        elif lost and len(lost) == sum(1 for p in PEERS if p in r["summary"]):
            out.append(f"- canvas-sync wins on {heading} ({_fmt(mine)}) against every peer.")
        else:
            beaten = f" (it beats {', '.join(lost)})" if lost else ""
            out.append(f"- {heading}: canvas-sync's {_fmt(mine)} overlaps a peer's range{beaten}.")
    return out


def markdown(r: dict[str, Any]) -> str:
    if "unavailable" in r:
        return f"### peers: not run\n\n{r['unavailable']}\n"
    s = r["settings"]
    systems = list(r["systems"])
    pinning = (
        f"the server under test pinned to core {s['server_cpus']}, the driver to {s['driver_cpus']}"
        + (" with DynamoDB Local's JVM (canvas-sync saves to it)" if s["database_on_driver_cpus"] else "")
        if s["server_cpus"]
        else "nothing pinned (one core)"
    )
    small = f", {s['small_seconds']:g} s for the small boards" if "small_seconds" in s else ""
    summary = table(
        f"peers: canvas-sync beside Hocuspocus and y-websocket's server ({s['rate']:g} edits/s per client, "
        f"open loop; {s['seconds']:g} s windows{small}; {pinning}; min to max over {s['repeats']} interleaved repeats)",
        ["figure", *(r["systems"][x] for x in systems)],
        [[heading, *(_cell(r["summary"][x], key) for x in systems)] for key, heading, _ in METRICS],
    )
    steps = table(
        "peers: the big board step by step (propagation p99 ms in each repeat; * the driver was full or lagged, "
        f"~ the server waited for its core over {CONTENDED:.0%} of the window, x the server closed sockets)",
        ["clients", *systems],
        [
            [
                n,
                *(
                    " / ".join(
                        f"{row['p99_ms']}{'*' if row['driver_full'] else ''}"
                        f"{'~' if row['server_waited_for_cpu'] > CONTENDED else ''}{'x' if row['closed_early'] else ''}"
                        for rows in r["big"][x]
                        for row in rows
                        if row["clients"] == n
                    )
                    or "-"
                    for x in systems
                ),
            ]
            for n in s["steps"]
        ],
    )
    waited = ", ".join(f"{x} {r['summary'][x]['server_waited_for_cpu_max']:.0%}" for x in systems)
    notes = [
        f"The most any run's server waited for its core (runnable, other processes on it; its threads summed), as a "
        f"share of the window: {waited}.",
        "",
        "Where a peer wins (ranges apart), and where not:",
        "",
        *verdicts(r),
    ]
    if not r["sqlite"]:
        notes.append(f"- Hocuspocus ran in memory only: {r['sqlite_error']}")
    return summary + "\n" + "\n".join(notes) + "\n\n" + steps


def plot(plt: Any, results: dict[str, Any], out: Path) -> str:
    """peers.png: the big board's p99 against clients; CPU per 1,000 edits on both boards."""
    r = results["peers"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    systems = list(r.get("systems", {}))
    for x in systems:
        by_clients: dict[int, list[float]] = {}
        for rows in r["big"][x]:
            for row in rows:
                if row["p99_ms"] is not None:
                    by_clients.setdefault(row["clients"], []).append(row["p99_ms"])
        xs = sorted(by_clients)
        left.plot(xs, [max(by_clients[n]) for n in xs], marker="o", label=r["systems"][x])
    left.axhline(P99_GOAL_MS, color="grey", linestyle="--", linewidth=1)
    left.set_yscale("log")
    left.set(xlabel="clients on one board (20 edits/s each)", ylabel="propagation p99 ms (worst repeat)")
    left.set_title("Big board, server on one core")
    left.legend(fontsize=7)
    width = 0.38
    for k, (key, label) in enumerate(
        (("big_cpu_ms_per_1000_edits", f"big board, {CPU_AT} clients"), ("small_cpu_ms_per_1000_edits", "small boards"))
    ):
        heights = [(r["summary"][x].get(key) or [0, 0])[1] for x in systems]
        right.bar([i + k * width for i in range(len(systems))], heights, width, label=label)
    right.set_xticks(
        [i + width / 2 for i in range(len(systems))], [r["systems"][x].split(" (")[0] for x in systems], fontsize=7
    )
    plt.setp(right.get_xticklabels(), rotation=20, ha="right")
    right.set(ylabel="server CPU ms per 1,000 edits (worst repeat)", title="CPU per edit")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "peers.png", dpi=100)
    return "peers.png"


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("peers"))
