"""``make bench``: every benchmark, each beside a baseline measured in the same run.

Writes ``docs/bench/results.json``, ``docs/bench/RESULTS.md`` (the tables) and PNG plots.
Takes about 20 minutes on a 2-core machine. On such a machine the load generator shares
the CPUs with the servers, so absolute figures flatten early (scaling most of all);
the scripts run unchanged on a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capacity
import fanout
import hot
import memory
import relay
import robustness
import roundtrip
import security
import sizing
import storage
import writes
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client
from common import ROOT, TABLE, table


def plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
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
    made.append("roundtrip.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    hot = results["hot"]["rows"]
    for v2, label in ((False, "v1: one message a frame"), (True, "v2: what waited, one frame")):
        rows = [r for r in hot if r["v2"] is v2]
        xs = [r["clients"] for r in rows]
        left.plot(xs, [r["edits_per_s"] for r in rows], marker="o", label=label)
        right.plot(xs, [r["ack_p99_ms"] for r in rows], marker="o", label=label)
    right.axhline(100, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="clients on one board", ylabel="edits per second", title="A hot board: edits/s")
    right.set(xlabel="clients on one board", ylabel="ms", title="ack p99 (goal: under 100 ms)")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hot.png", dpi=100)
    made.append("hot.png")

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
    made.append("cold_load.png")

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
    made.append("write_reduction.png")
    plt.close("all")
    return made


def replot(out: Path) -> list[str]:
    """The plots again from ``out/results.json`` (after a change to them, without a new run)."""
    return plots(json.loads((out / "results.json").read_text()), out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each round-trip and fan-out run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    started = time.monotonic()
    with DynamoDBLocal() as ddb:
        DynamoStore(make_client(ddb.endpoint), TABLE).create_table()
        DynamoStore(make_client(ddb.endpoint), capacity.TABLE).create_table()
        pid = ddb.process.pid if ddb.process else None
        steps = [
            ("roundtrip", lambda: roundtrip.run(ddb.endpoint, args.seconds)),
            ("fanout", lambda: fanout.run(ddb.endpoint, args.seconds + 2)),
            ("hot", lambda: hot.run(ddb.endpoint)),
            ("write_reduction", lambda: writes.run(ddb.endpoint)),
            ("save", lambda: storage.save(ddb.endpoint)),
            ("cold_load", lambda: storage.cold_load(ddb.endpoint)),
            ("memory", lambda: memory.run(ddb.endpoint)),
            ("scaling", lambda: roundtrip.scaling(ddb.endpoint, args.seconds)),
            ("robustness", lambda: robustness.run(ddb.endpoint)),
            ("relay", lambda: relay.run(ddb.endpoint)),
            ("security", lambda: security.run(ddb.endpoint)),
            ("capacity", lambda: capacity.run(ddb.endpoint, Path(tempfile.mkdtemp(prefix="capacity-")), 15, 800, pid)),
        ]
        for name, step in steps:
            t = time.monotonic()
            results[name] = step()
            print(f"[{time.monotonic() - started:5.0f}s] {name} done in {time.monotonic() - t:.0f}s", flush=True)
    convergence_json = args.out / "convergence.json"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("convergence.py")),
            "--rounds",
            "5",
            "--idle-seconds",
            "30",
            "--out",
            str(convergence_json),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results["convergence"] = json.loads(convergence_json.read_text())
    print(f"[{time.monotonic() - started:5.0f}s] convergence done", flush=True)

    c = results["convergence"]
    md = "\n".join(
        [
            "# canvas-sync benchmarks",
            "",
            f"Run `make bench` ({results['machine']}, {results['date']}). Every figure sits beside a baseline measured "
            "in the same run; clients and servers share the machine's cores.",
            "",
            roundtrip.markdown(results["roundtrip"], results["scaling"]),
            fanout.markdown(results["fanout"]),
            hot.markdown(results["hot"]),
            writes.markdown(results["write_reduction"]),
            storage.markdown(results["save"], results["cold_load"]),
            memory.markdown(results["memory"]),
            table(
                "7. Convergence across 3 replicas (autosave 5 s, sync 1 s; contended random edits)",
                ["convergence p50", "convergence p99", "bound", "sync lag p50", "sync lag p99", "items per edit"],
                [
                    [
                        f"{c['convergence_s']['p50']} s",
                        f"{c['convergence_s']['p99']} s",
                        f"{c['bound_s']} s",
                        f"{c['sync_lag_s']['p50']} s",
                        f"{c['sync_lag_s']['p99']} s",
                        c["items_per_edit"],
                    ]
                ],
            ),
            robustness.markdown(results["robustness"]),
            relay.markdown(results["relay"]),
            security.markdown(results["security"]),
            capacity.markdown(results["capacity"]),
            sizing.markdown(sizing.table_from(results)),
        ]
    )
    made = plots(results, args.out)
    md += "\n" + "\n".join(f"![{m}]({m})" for m in made) + "\n"
    (args.out / "RESULTS.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(md)
    print(f"written to {args.out} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
