"""``security``: what authentication costs (a token is verified once per connection, never per message).

- round trips: 32 clients on their own projects, a replica with authentication on (ES256
  tokens, a JWKS file) and one with it off, measured side by side (half the clients each,
  at the same time), 5 times; the median of the ratios.
- verification: microseconds to verify one ES256 token in process, the cost of a connect.

    python -m loadtest.bench.security
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from canvas_sync.auth import Keys
from canvas_sync.tokens import generate_keys, mint

from . import roundtrip
from .common import replica, table


def solo(endpoint: str, clients: int = 32, seconds: float = 3.0, repeats: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        private, jwks = generate_keys(Path(folder))
        token = mint("bench", {"*": "editor"}, 3600, private_key=private)
        secured = {"auth": "jwt", "auth_jwks_url": jwks.resolve().as_uri(), "max_connections_per_subject": 0}

        async def pair(off: Any, on: Any) -> list[dict[str, float]]:
            return await asyncio.gather(
                roundtrip._measure([f"ws://127.0.0.1:{off.port}"], clients // 2, seconds, False, off.pid),
                roundtrip._measure([f"ws://127.0.0.1:{on.port}"], clients // 2, seconds, False, on.pid, token),
            )

        runs = []
        for _ in range(repeats):
            with replica(endpoint) as off, replica(endpoint, **secured) as on:
                runs.append(uvloop.run(pair(off, on)))
    ratios = [on["ops_per_s"] / off["ops_per_s"] for off, on in runs]
    cpu = [off["server_cpu_us_per_op"] / on["server_cpu_us_per_op"] for off, on in runs]
    return {
        "clients": clients,
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "cpu_ratio": round(statistics.median(cpu), 3),
        "auth_off_ops_per_s": round(statistics.median(off["ops_per_s"] for off, _ in runs), 1),
        "auth_on_ops_per_s": round(statistics.median(on["ops_per_s"] for _, on in runs), 1),
    }


def verify_cost(n: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        private, jwks = generate_keys(Path(folder))
        keys = Keys(jwks_url=jwks.resolve().as_uri())
        token = mint("bench", {"p": "editor"}, 3600, private_key=private)
        keys.verify(token, "canvas-sync", None, 30)  # the JWKS is fetched once
        started = time.perf_counter()
        for _ in range(n):
            keys.verify(token, "canvas-sync", None, 30)
        return {"es256_verify_us": round((time.perf_counter() - started) / n * 1e6, 1)}


def run(endpoint: str) -> dict[str, Any]:
    return {"solo": solo(endpoint), "verify": verify_cost()}


def markdown(r: dict[str, Any]) -> str:
    s, v = r["solo"], r["verify"]
    return table(
        "security: authentication (a token is verified per connection, never per message)",
        ["measure", "figure", "baseline in the same run", "ratio"],
        [
            [
                f"round trips, {s['clients']} clients on their own projects, auth on and off at once (median of 5)",
                f"{s['auth_on_ops_per_s']} ops/s auth on",
                f"{s['auth_off_ops_per_s']} ops/s auth off",
                f"{s['ratio']} (CPU {s['cpu_ratio']}; runs {s['ratios']})",
            ],
            ["verifying one ES256 token, in process (once per connection)", f"{v['es256_verify_us']} µs", "", ""],
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("security"))
