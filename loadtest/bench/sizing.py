"""``sizing``: the sizing and cost table, computed from one ``make bench`` run's own measurements.

Per pod (one core, the chart's memory limit) and per 1,000 active editors (teams of 10, so
100 boards held): edits/s, connections, boards, pods, and the DynamoDB request units and
their on-demand price. Every input is a figure measured in the same run, except the
prices, the chart's settings and the board size, which are stated with the result. It
measures nothing itself: it needs the capacity, memory and relay benchmarks' results.

    python -m loadtest.bench.sizing        # runs capacity, memory and relay first
"""

from __future__ import annotations

import math
import sys
from typing import Any

from .common import table

PRICE_PER_MILLION_WRU = 0.625
PRICE_PER_MILLION_RRU = 0.125
PRICE_SOURCE = (
    "DynamoDB on-demand, standard table class, us-east-1: $0.625 per million write request units and "
    "$0.125 per million read request units, AWS's list price since its on-demand price cut of "
    "1 November 2024, as read on 2026-11-29 (check aws.amazon.com/dynamodb/pricing/on-demand/ for your region)"
)
HPA_TARGET = 0.6
"""The chart's autoscaling.targetCPUUtilizationPercentage, as a share of the one core a pod uses."""
MEMORY_LIMIT_MIB = 1024
"""The chart's resources.limits.memory."""
EDITORS = 1000
TEAM = 10
BOARD_OBJECTS = 1000
OBJECT_BYTES = 300
"""A stored object of the canvas mix (a shape with position, size and colour) in DynamoDB."""
WRITES_PER_ITEM = 2
"""Every item write also writes the change-feed index (projection ALL): 2 WRU for an item under 1 KB."""
RECONCILE_S = {"relay": 600, "table": 60}
"""CANVAS_RELAY_RECONCILE_INTERVAL and CANVAS_RECONCILE_INTERVAL: full consistent re-reads of a held board."""


def table_from(results: dict[str, Any]) -> dict[str, Any]:
    capacity, memory, reads = results["capacity"], results["memory"], results["relay"]["reads"]
    best = capacity["best"]
    per_user = best["edits_per_s"] / best["users"]
    edits_per_pod = capacity["edits_per_core"] * HPA_TARGET
    connection = memory["connections"]["rss_bytes_per_connection"]
    room = (MEMORY_LIMIT_MIB - memory["connections"]["rss_idle_mib"]) * 2**20
    board_bytes = BOARD_OBJECTS * memory["objects"]["rss_bytes_per_object"]
    items_per_edit = best["dynamodb_per_s"]["items_written"] / best["dynamodb_per_s"]["edits"]
    heads_per_edit = best["dynamodb_per_s"]["heads_written"] / best["dynamodb_per_s"]["edits"]
    edits = EDITORS * per_user
    boards = EDITORS // TEAM
    wru = edits * (items_per_edit + heads_per_edit) * WRITES_PER_ITEM

    def rru(mode: str) -> float:
        """Per second for all boards: #head items (1 each, consistent), other read requests
        at their 0.5 minimum (feed queries), and full re-reads (consistent, per 4 KB)."""
        heads = reads["heads_read_with_relay" if mode == "relay" else "heads_read_without"]
        requests = reads["with_relay" if mode == "relay" else "without_relay"]
        reconcile = math.ceil(BOARD_OBJECTS * OBJECT_BYTES / 4096) * 60 / RECONCILE_S[mode]
        return boards * (heads + 0.5 * requests + reconcile) / 60

    def dollars_per_month(wru_s: float, rru_s: float) -> float:
        hours = 730
        return 3600 * hours * (wru_s * PRICE_PER_MILLION_WRU + rru_s * PRICE_PER_MILLION_RRU) / 1e6

    return {
        "per_user_edits_per_s": round(per_user, 2),
        "edits_per_core": capacity["edits_per_core"],
        "edits_per_pod": round(edits_per_pod),
        "editors_per_pod": math.floor(edits_per_pod / per_user),
        "connections_per_pod_memory": math.floor(room / connection),
        "boards_per_pod_memory": math.floor(room / board_bytes),
        "items_per_edit": round(items_per_edit, 4),
        "heads_per_edit": round(heads_per_edit, 4),
        "per_1000": {
            "edits_per_s": round(edits),
            "pods": math.ceil(edits / edits_per_pod),
            "boards": boards,
            "wru_per_s": round(wru, 1),
            "rru_per_s_relay": round(rru("relay"), 1),
            "rru_per_s_table": round(rru("table"), 1),
            "dollars_per_month_relay": round(dollars_per_month(wru, rru("relay")), 2),
            "dollars_per_month_table": round(dollars_per_month(wru, rru("table")), 2),
        },
    }


def markdown(s: dict[str, Any]) -> str:
    k = s["per_1000"]
    out = table(
        f"sizing: one pod (1 core, HPA target {int(100 * HPA_TARGET)}% of it, {MEMORY_LIMIT_MIB} MiB limit), "
        f"and {EDITORS:,} active editors of the canvas mix ({s['per_user_edits_per_s']} edits/s each, "
        f"teams of {TEAM}, boards of {BOARD_OBJECTS:,} objects)",
        ["what", "figure", "from"],
        [
            ["edits/s one core answers", f"{s['edits_per_core']:,}", "capacity: server CPU per acked edit"],
            ["edits/s per pod at the HPA target", f"{s['edits_per_pod']:,}", "the row above x the target"],
            ["editors of this mix per pod", f"{s['editors_per_pod']:,}", "the row above / edits per editor"],
            [
                "idle connections one pod's memory holds",
                f"{s['connections_per_pod_memory']:,}",
                "memory: RSS per connection (compression on)",
            ],
            [
                f"boards of {BOARD_OBJECTS:,} objects one pod's memory holds",
                f"{s['boards_per_pod_memory']:,}",
                "memory: RSS per object",
            ],
            [
                "DynamoDB items and #head markers written per edit",
                f"{s['items_per_edit']} + {s['heads_per_edit']}",
                "capacity: the auto-save's coalescing",
            ],
            [f"edits/s of {EDITORS:,} editors", f"{k['edits_per_s']:,}", ""],
            [f"pods for {EDITORS:,} editors at the HPA target", k["pods"], ""],
            [
                "write request units/s",
                k["wru_per_s"],
                f"items and markers per edit x {WRITES_PER_ITEM} (table and change-feed index)",
            ],
            [
                "read request units/s, relay on / off",
                f"{k['rru_per_s_relay']} / {k['rru_per_s_table']}",
                f"relay: reads per held board; full re-reads every {RECONCILE_S['relay']} / {RECONCILE_S['table']} s",
            ],
            [
                "DynamoDB on-demand per month, relay on / off",
                f"${k['dollars_per_month_relay']:,} / ${k['dollars_per_month_table']:,}",
                "730 hours at the prices below",
            ],
        ],
    )
    return out + f"\nPrices: {PRICE_SOURCE}.\n"


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("sizing"))
