"""The benchmarks by name, and the one command that runs them: ``python -m loadtest.bench``.

With no names (``make bench``): every benchmark, each beside a baseline measured in the
same run; writes ``docs/bench/results.json``, ``docs/bench/RESULTS.md`` (the tables),
``docs/bench/convergence.json`` and PNG plots. Takes about 20 minutes on a 2-core machine.
On such a machine the load generator shares the CPUs with the servers, so absolute
figures flatten early (scaling most of all); the scripts run unchanged on a bigger machine.

With names (``python -m loadtest.bench security relay``): only those, and what they need
(sizing is computed from capacity, memory and relay); prints the results and their
tables, and writes files only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client

from . import (
    capacity,
    convergence,
    fanout,
    hot,
    memory,
    peers,
    quiet,
    relay,
    robustness,
    roundtrip,
    saved,
    security,
    sizing,
    stall,
    storage,
    versions,
    writes,
)
from .common import ROOT, TABLE

DEFAULT_OUT = ROOT / "docs" / "bench"


@dataclass
class Context:
    """What a benchmark gets: the shared DynamoDB Local, the run's options, the results so far."""

    endpoint: str
    seconds: float
    database_pid: int | None
    results: dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    name: str
    measures: str
    """One line: what it measures (``--help`` lists it)."""
    run: Callable[[Context], dict[str, Any]]
    markdown: Callable[[dict[str, Any]], str]
    key: str = ""
    """Its entry in results.json, where that is not its name."""
    needs: tuple[str, ...] = ()
    """Benchmarks whose results it is computed from; they run first."""
    database: bool = True
    """Runs against the suite's DynamoDB Local (False: it starts its own, or needs none)."""

    @property
    def result_key(self) -> str:
        return self.key or self.name


def _convergence(ctx: Context) -> dict[str, Any]:
    """In a subprocess with a fresh DynamoDB Local of its own (its CLI: ``python -m loadtest.bench.convergence``)."""
    with tempfile.TemporaryDirectory(prefix="convergence-") as folder:
        report = Path(folder) / "convergence.json"
        command = [sys.executable, "-m", "loadtest.bench.convergence", "--rounds", "5", "--idle-seconds", "30"]
        subprocess.run([*command, "--out", str(report)], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        return dict(json.loads(report.read_text()))


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "roundtrip",
        "edit round trips (update -> ack): rate, latency, server CPU, beside bare Quart and bare websockets",
        lambda ctx: roundtrip.run(ctx.endpoint, ctx.seconds),
        roundtrip.markdown,
    ),
    Benchmark(
        "scaling",
        "the same round trips from 32 clients spread over 1, 2 and 4 replicas",
        lambda ctx: roundtrip.scaling(ctx.endpoint, ctx.seconds),
        roundtrip.scaling_markdown,
    ),
    Benchmark(
        "fanout",
        "one writer, 50 readers on one project: deliveries per second and their latency, beside a bare Quart relay",
        lambda ctx: fanout.run(ctx.endpoint, ctx.seconds + 2),
        fanout.markdown,
    ),
    Benchmark(
        "hot",
        "a saturated board (32 and 128 clients dragging at once): ack p99 and how soon the others see each edit",
        lambda ctx: hot.run(ctx.endpoint),
        hot.markdown,
    ),
    Benchmark(
        "quiet",
        "a quiet board (16 clients, 20 moves/s each): send-to-arrival p50/p99, adaptive gathering beside always",
        lambda ctx: quiet.run(ctx.endpoint),
        quiet.markdown,
    ),
    Benchmark(
        "saved",
        "what saved acknowledgements cost: v2 beside v3 clients, solo (beside bare Quart) and 64 on one board",
        lambda ctx: saved.run(ctx.endpoint, ctx.seconds),
        saved.markdown,
    ),
    Benchmark(
        "writes",
        "write reduction: DynamoDB items and #head updates written per accepted edit (drag, burst, mixed)",
        lambda ctx: writes.run(ctx.endpoint),
        writes.markdown,
        key="write_reduction",
    ),
    Benchmark(
        "save",
        "one auto-save pass over 10,000 dirty objects, beside plain boto3 BatchWriteItem calls",
        lambda ctx: storage.save(ctx.endpoint),
        storage.save_markdown,
    ),
    Benchmark(
        "stall",
        "event-loop lag while auto-save passes write 10,000 objects, beside 128 clients on one board",
        lambda ctx: stall.run(ctx.endpoint, ctx.database_pid),
        stall.markdown,
    ),
    Benchmark(
        "cold-load",
        "loading a project not in memory (1,000 to 50,000 objects), beside a bare paginated Query",
        lambda ctx: storage.cold_load(ctx.endpoint),
        storage.cold_load_markdown,
        key="cold_load",
    ),
    Benchmark(
        "memory",
        "resident memory per stored object, and per idle WebSocket connection with and without compression",
        lambda ctx: memory.run(ctx.endpoint),
        memory.markdown,
    ),
    Benchmark(
        "convergence",
        "seconds until 3 replicas agree after contended edits, the sync lag, and idle reads per project",
        _convergence,
        convergence.markdown,
        database=False,
    ),
    Benchmark(
        "robustness",
        "hostile clients (property poisoning, id churn), a throttling DynamoDB, loop stalls in big reconciles",
        lambda ctx: robustness.run(ctx.endpoint),
        robustness.markdown,
    ),
    Benchmark(
        "relay",
        "the Redis relay: cross-replica latency, injected drops detected, a Redis restart, reads saved, its cost",
        lambda ctx: relay.run(ctx.endpoint),
        relay.markdown,
    ),
    Benchmark(
        "security",
        "what authentication costs: round trips with tokens on and off, and one ES256 verification",
        lambda ctx: security.run(ctx.endpoint),
        security.markdown,
    ),
    Benchmark(
        "capacity",
        "one replica on one core under Locust's canvas mix, stepped up until the ack p99 passes 100 ms",
        lambda ctx: capacity.run(ctx.endpoint, Path(tempfile.mkdtemp(prefix="capacity-")), 15, 800, ctx.database_pid),
        capacity.markdown,
    ),
    Benchmark(
        "versions",
        "a version (snapshot) of 10,000 objects and its restore: time, items and bytes, beside export and import",
        lambda ctx: versions.run(ctx.endpoint),
        versions.markdown,
    ),
    Benchmark(
        "peers",
        "canvas-sync beside Hocuspocus (SQLite, memory) and y-websocket's server: big, quiet and small boards",
        lambda ctx: peers.run(ctx.endpoint, ctx.seconds, ctx.database_pid),
        peers.markdown,
    ),
    Benchmark(
        "sizing",
        "the sizing and DynamoDB cost table per pod and per 1,000 editors (computed from capacity, memory, relay)",
        lambda ctx: sizing.table_from(ctx.results),
        sizing.markdown,
        needs=("capacity", "memory", "relay"),
        database=False,
    ),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


def chosen(names: list[str]) -> list[Benchmark]:
    """The named benchmarks and what they need, in the suite's order (all when none are named)."""
    if not names:
        return list(BENCHMARKS)
    wanted = set(names)
    for name in names:
        wanted.update(BY_NAME[name].needs)
    return [b for b in BENCHMARKS if b.name in wanted]


def measure(benchmarks: list[Benchmark], seconds: float) -> dict[str, Any]:
    """Runs them: first those on the suite's DynamoDB Local, then the others (after it has
    stopped, so a benchmark with a database of its own does not share the machine with it)."""
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    started = time.monotonic()

    def step(benchmark: Benchmark, ctx: Context) -> None:
        t = time.monotonic()
        results[benchmark.result_key] = benchmark.run(ctx)
        print(f"[{time.monotonic() - started:5.0f}s] {benchmark.name} done in {time.monotonic() - t:.0f}s", flush=True)

    on_database = [b for b in benchmarks if b.database]
    if on_database:
        with DynamoDBLocal() as ddb:
            for table in (TABLE, capacity.TABLE):
                DynamoStore(make_client(ddb.endpoint), table).create_table()
            pid = ddb.process.pid if ddb.process else None
            ctx = Context(ddb.endpoint, seconds, pid, results)
            for benchmark in on_database:
                step(benchmark, ctx)
    ctx = Context("", seconds, None, results)
    for benchmark in benchmarks:
        if not benchmark.database:
            step(benchmark, ctx)
    return results


def report(results: dict[str, Any], command: str) -> str:
    """RESULTS.md: a table (or two) for every benchmark in ``results``, in the suite's order."""
    return "\n".join(
        [
            "# canvas-sync benchmarks",
            "",
            f"Run `{command}` ({results['machine']}, {results['date']}). Every figure sits beside a baseline "
            "measured in the same run; clients and servers share the machine's cores.",
            "",
            *(b.markdown(results[b.result_key]) for b in BENCHMARKS if b.result_key in results),
        ]
    )


# --- plots ------------------------------------------------------------------------------------


def _plot_roundtrip(plt: Any, results: dict[str, Any], out: Path) -> str:
    rt = results["roundtrip"]["rows"]
    names = [
        ("websockets", "bare websockets"),
        ("quart", "bare Quart"),
        ("ours", "canvas-sync"),
        ("ours_asyncio", "canvas-sync (asyncio loop)"),
        ("ours_shared", "canvas-sync, one project"),
        ("quart_plain", "bare Quart, no compression"),
        ("ours_plain", "canvas-sync, no compression"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.12
    for k, (key, label) in enumerate(names):
        ax.bar([i + k * width for i in range(len(rt))], [r[key]["ops_per_s"] for r in rt], width, label=label)
    ax.set_xticks([i + 3 * width for i in range(len(rt))], [f"{r['clients']} clients" for r in rt])
    ax.set_ylabel("round trips per second")
    ax.set_title("Edit round trips (update -> ack)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roundtrip.png", dpi=100)
    return "roundtrip.png"


def _plot_hot(plt: Any, results: dict[str, Any], out: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    rows = results["hot"]["rows"]
    for v2, label in ((False, "v1: one message a frame"), (True, "v2: what waited, one frame")):
        these = [r for r in rows if r["v2"] is v2]
        xs = [r["clients"] for r in these]
        left.plot(xs, [r["edits_per_s"] for r in these], marker="o", label=label)
        right.plot(xs, [r["ack_p99_ms"] for r in these], marker="o", label=label)
    right.axhline(100, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="clients on one board", ylabel="edits per second", title="A hot board: edits/s")
    right.set(xlabel="clients on one board", ylabel="ms", title="ack p99 (goal: under 100 ms)")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hot.png", dpi=100)
    return "hot.png"


def _plot_cold_load(plt: Any, results: dict[str, Any], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    loads = results["cold_load"]["rows"]
    xs = range(len(loads))
    ax.bar([x - 0.2 for x in xs], [r["bare_query_s"] for r in loads], 0.4, label="bare paginated Query")
    ax.bar([x + 0.2 for x in xs], [r["ours_s"] for r in loads], 0.4, label="canvas-sync cache-miss load")
    ax.set_xticks(list(xs), [f"{r['objects']:,}" for r in loads])
    ax.set_xlabel("objects in the project")
    ax.set_ylabel("seconds")
    ax.set_title("Cold load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cold_load.png", dpi=100)
    return "cold_load.png"


def _plot_write_reduction(plt: Any, results: dict[str, Any], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    w = results["write_reduction"]
    ax.bar([0, 1, 2], [w[k]["edits"] for k in ("drag", "burst", "mixed")], 0.4, label="edits accepted")
    ax.bar(
        [0.4, 1.4, 2.4],
        [w[k]["items_written"] + w[k]["head_updates"] for k in ("drag", "burst", "mixed")],
        0.4,
        label="DynamoDB writes (items + #head updates)",
    )
    ax.set_xticks([0.2, 1.2, 2.2], ["drag 10 s", "1,000 creates", "mixed 10 s"])
    ax.set_yscale("log")
    ax.set_title("Write reduction")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "write_reduction.png", dpi=100)
    return "write_reduction.png"


PLOTS = {
    "roundtrip": _plot_roundtrip,
    "hot": _plot_hot,
    "cold_load": _plot_cold_load,
    "write_reduction": _plot_write_reduction,
    "peers": peers.plot,
}
"""Plots by results.json entry, drawn for those present."""


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """The PNG plots of the benchmarks in ``results`` that have one; their file names."""
    present = [draw for key, draw in PLOTS.items() if key in results]
    if not present:
        return []
    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is missing (pip install -e '.[bench]', as make bench does)", file=sys.stderr)
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [draw(plt, results, out) for draw in present]
    plt.close("all")
    return made


def replot(out: Path) -> list[str]:
    """The plots again from ``out/results.json`` (after a change to them, without a new run)."""
    return plots(json.loads((out / "results.json").read_text()), out)


def write(results: dict[str, Any], out: Path, command: str) -> str:
    """results.json, RESULTS.md (with the plots), convergence.json where it ran; the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if "convergence" in results:
        (out / "convergence.json").write_text(json.dumps(results["convergence"], indent=2) + "\n")
    md = report(results, command)
    made = plots(results, out)
    if made:
        md += "\n" + "\n".join(f"![{m}]({m})" for m in made) + "\n"
    (out / "RESULTS.md").write_text(md)
    return md


# --- the command ------------------------------------------------------------------------------


def _name(text: str) -> str:
    name = text.replace("_", "-")
    if name not in BY_NAME:
        raise argparse.ArgumentTypeError(f"no benchmark {text!r}; the names: {', '.join(BY_NAME)}")
    return name


def parser() -> argparse.ArgumentParser:
    width = max(len(b.name) for b in BENCHMARKS)
    listing = "\n".join(f"  {b.name:<{width}}  {b.measures}" for b in BENCHMARKS)
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="The canvas-sync benchmarks, against DynamoDB Local: all of them (`make bench`, about 20\n"
        "minutes; writes docs/bench/RESULTS.md, results.json and PNG plots), or the ones named (prints\n"
        "their results and tables; writes files only with --out).",
        epilog=f"benchmarks (in the order they are reported):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", type=_name, metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each round-trip and fan-out run")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where results.json, RESULTS.md and the plots go (default: {DEFAULT_OUT.relative_to(ROOT)} "
        "for a full run, nowhere for named ones)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = list(dict.fromkeys(args.names))
    benchmarks = chosen(names)
    extra = [b.name for b in benchmarks if b.name not in names]
    if names and extra:
        print(f"also running {', '.join(extra)}: {', '.join(names)} needs them", file=sys.stderr)
    started = time.monotonic()
    results = measure(benchmarks, args.seconds)
    command = f"python -m loadtest.bench {' '.join(names)}" if names else "make bench"
    out = args.out if args.out is not None or names else DEFAULT_OUT
    if names:
        print(json.dumps({b.name: results[b.result_key] for b in benchmarks}, indent=2))
    if out is None:
        print(report(results, command))
    else:
        print(write(results, out, command))
        print(f"written to {out} in {time.monotonic() - started:.0f}s")
    return 0


def standalone(*names: str) -> int:
    """A benchmark module run on its own (``python -m loadtest.bench.relay``): its benchmarks,
    with the suite's options."""
    return main([*names, *sys.argv[1:]])
