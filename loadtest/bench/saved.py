"""``saved``: what saved acknowledgements cost. The same clients offering ``canvas-sync.v2``
(acks only) and ``canvas-sync.v3`` (acks, then ``saved`` after each pass), on the solo path
(a project per client, beside bare Quart) and on a hot board (64 clients on one project),
interleaved on fresh replicas so the shared machine's drift falls on both.

    python -m loadtest.bench saved
"""

from __future__ import annotations

import sys
from typing import Any

from . import hot
from .common import baseline, replica, table
from .roundtrip import measure

SOLO_CLIENTS = 32
HOT_CLIENTS = 64
REPEATS = 3
V2 = ["canvas-sync.v2"]
V3 = ["canvas-sync.v3"]


def _median(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return sorted(results, key=lambda r: r[key])[len(results) // 2]


def run(endpoint: str, seconds: float) -> dict[str, Any]:
    solo: dict[str, list[dict[str, Any]]] = {"quart": [], "v2": [], "v3": []}
    board: dict[str, list[dict[str, Any]]] = {"v2": [], "v3": []}
    for _ in range(REPEATS):
        with baseline("baseline_quart.py") as server:
            solo["quart"].append(measure([server.port], SOLO_CLIENTS, seconds, pid=server.pid))
        for name, offered in (("v2", V2), ("v3", V3)):
            with replica(endpoint, autosave_interval=1.0) as server:
                solo[name].append(measure([server.port], SOLO_CLIENTS, seconds, pid=server.pid, offered=offered))
        for name, offered in (("v2", V2), ("v3", V3)):
            board[name].append(hot.board(endpoint, HOT_CLIENTS, offered))
    s = {name: _median(runs, "ops_per_s") for name, runs in solo.items()}
    h = {name: _median(runs, "edits_per_s") for name, runs in board.items()}
    return {
        "seconds": seconds,
        "repeats": REPEATS,
        "solo": s,
        "hot": h,
        "solo_v3_vs_quart": round(s["v3"]["ops_per_s"] / s["quart"]["ops_per_s"], 3),
        "solo_v2_vs_quart": round(s["v2"]["ops_per_s"] / s["quart"]["ops_per_s"], 3),
        "solo_v3_vs_v2": round(s["v3"]["ops_per_s"] / s["v2"]["ops_per_s"], 3),
        "solo_cpu_v3_vs_v2": round(s["v2"]["server_cpu_us_per_op"] / s["v3"]["server_cpu_us_per_op"], 3),
        "hot_v3_vs_v2": round(h["v3"]["edits_per_s"] / h["v2"]["edits_per_s"], 3),
        "runs": {
            "solo": {k: [r["ops_per_s"] for r in v] for k, v in solo.items()},
            "hot": {k: [r["edits_per_s"] for r in v] for k, v in board.items()},
        },
    }


def markdown(r: dict[str, Any]) -> str:
    s, h = r["solo"], r["hot"]
    solo = table(
        f"saved (solo): {SOLO_CLIENTS} clients, a project each, update -> ack; median of {r['repeats']} "
        f"interleaved runs; v3 sockets also get saved after every pass (auto-save 1 s)",
        ["server", "ops/s", "p50 ms", "p99 ms", "server CPU us/op", "ops/s vs bare Quart"],
        [
            [
                label,
                s[k]["ops_per_s"],
                s[k]["p50_ms"],
                s[k]["p99_ms"],
                s[k]["server_cpu_us_per_op"],
                round(s[k]["ops_per_s"] / s["quart"]["ops_per_s"], 3),
            ]
            for k, label in (
                ("quart", "bare Quart"),
                ("v2", "canvas-sync, v2 clients"),
                ("v3", "canvas-sync, v3 clients (saved)"),
            )
        ],
    )
    board = table(
        f"saved (hot): {HOT_CLIENTS} clients on one board, each dragging its own object as fast as acks come",
        ["clients offer", "edits/s", "ack p50 ms", "ack p99 ms", "server CPU ms/edit"],
        [
            [k, h[k]["edits_per_s"], h[k]["ack_p50_ms"], h[k]["ack_p99_ms"], h[k]["server_cpu_ms_per_edit"]]
            for k in ("v2", "v3")
        ],
    )
    ratios = (
        f"v3 vs v2: solo ops/s {r['solo_v3_vs_v2']}, solo CPU efficiency {r['solo_cpu_v3_vs_v2']}, "
        f"hot edits/s {r['hot_v3_vs_v2']}; v3 vs bare Quart solo {r['solo_v3_vs_quart']} (v2 {r['solo_v2_vs_quart']})"
    )
    return f"{solo}\n\n{board}\n\n{ratios}\n"


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("saved"))
