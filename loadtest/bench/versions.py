"""``versions``: a version (snapshot) of a 10,000-object project and its restore, over HTTP
against a replica on DynamoDB Local: time, items and bytes written.

Each beside its baseline in the same run: taking a version beside exporting the same
objects (``GET /objects``, no table write), reading one back beside the same export, and
a restore beside importing the same objects (``PUT /objects``: one change, no version read
and no undo version). The items a version takes sit beside the items the objects take
as objects (one each). Medians of 3; in process, what compressing and reading back cost.

    python -m loadtest.bench.versions
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

from canvas_sync import protocol
from canvas_sync.store.versions import pack, unpack

from .common import replica, table, wait_clean

REPEATS = 3


def _objects(n: int, generation: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"o{i:05d}",
            "type": "rect",
            "x": i % 1000 + generation,
            "y": round(i / 3, 3),
            "w": 100,
            "h": 60,
            "fill": "#abc",
            "label": f"shape {i}",
        }
        for i in range(n)
    ]


def _call(method: str, url: str, body: Any = None) -> tuple[float, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        text = response.read()
    return time.perf_counter() - started, json.loads(text) if text else None


def run(endpoint: str, n: int = 10_000) -> dict[str, Any]:
    samples: dict[str, list[float]] = {k: [] for k in ("snapshot", "export", "get", "restore", "import", "saved")}
    version: dict[str, Any] = {}
    with replica(endpoint, autosave_interval=0.5, version_retention=100) as server:
        base = f"http://127.0.0.1:{server.port}/projects/bench-versions"
        _call("PUT", f"{base}/objects", {"objects": _objects(n, 0)})
        wait_clean(server.port)
        for k in range(REPEATS):
            seconds, version = _call("POST", f"{base}/versions", {"name": f"run {k}"})
            samples["snapshot"].append(seconds)
            samples["export"].append(_call("GET", f"{base}/objects")[0])
            seconds, got = _call("GET", f"{base}/versions/{version['version']}")
            assert len(got["objects"]) == n
            samples["get"].append(seconds)
            samples["import"].append(_call("PUT", f"{base}/objects", {"objects": _objects(n, k + 1)})[0])
            wait_clean(server.port)
            seconds, restored = _call("POST", f"{base}/versions/{version['version']}/restore")
            assert restored["updated"] == n
            samples["restore"].append(seconds)
            started = time.perf_counter()
            wait_clean(server.port, timeout=120)
            samples["saved"].append(time.perf_counter() - started)
    text = protocol.encode(_objects(n, 0))
    started = time.perf_counter()
    chunks, raw = pack(text)
    pack_s = time.perf_counter() - started
    started = time.perf_counter()
    unpack(chunks)
    unpack_s = time.perf_counter() - started

    def ms(key: str) -> float:
        return round(statistics.median(samples[key]) * 1000, 1)

    return {
        "objects": n,
        "snapshot_ms": ms("snapshot"),
        "export_ms": ms("export"),
        "get_ms": ms("get"),
        "restore_ms": ms("restore"),
        "import_ms": ms("import"),
        "restore_saved_ms": ms("saved"),
        "version_items": 1 + version["chunks"],
        "object_items": n,
        "bytes": version["bytes"],
        "raw_bytes": version["raw_bytes"],
        "ratio": round(version["raw_bytes"] / version["bytes"], 1),
        "pack_ms": round(pack_s * 1000, 1),
        "unpack_ms": round(unpack_s * 1000, 1),
        "pack_chunks": len(chunks),
        "pack_raw_bytes": raw,
    }


def markdown(r: dict[str, Any]) -> str:
    n = f"{r['objects']:,}"
    return table(
        f"versions: a version of {n} objects and its restore (HTTP, one replica on DynamoDB Local, median of 3)",
        ["measure", "figure", "baseline in the same run"],
        [
            [
                "POST /versions (read memory, compress, write)",
                f"{r['snapshot_ms']} ms",
                f"GET /objects: {r['export_ms']} ms",
            ],
            ["GET /versions/{v} (read, decompress, answer)", f"{r['get_ms']} ms", f"GET /objects: {r['export_ms']} ms"],
            [
                "POST /versions/{v}/restore (read the version, an undo version, one change)",
                f"{r['restore_ms']} ms",
                f"PUT /objects of the same objects: {r['import_ms']} ms",
            ],
            ["from the restore's answer until every object is saved", f"{r['restore_saved_ms']} ms", ""],
            ["items one version takes", f"{r['version_items']}", f"{r['object_items']:,} as objects"],
            [
                "bytes one version takes (zlib)",
                f"{r['bytes']:,}",
                f"{r['raw_bytes']:,} as JSON ({r['ratio']}x)",
            ],
            ["compressing / reading back in process", f"{r['pack_ms']} / {r['unpack_ms']} ms", ""],
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    raise SystemExit(standalone("versions"))
