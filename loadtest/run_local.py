"""One command for a local load test: DynamoDB Local, N replicas, Locust headless, a summary.

    loadtest/run-local --replicas 3 --users 60 --time 60s
    python -m loadtest.run_local --replicas 3    # the same, from the repository root

Writes Locust's HTML and CSV reports and the convergence report to ``--out`` (default
``loadtest/reports/<timestamp>``), prints ops/s, acked-edit latency p50/p95/p99, the
convergence time and DynamoDB items written per edit, and exits 0 only if the replicas
converged (and the failure ratio stayed under Locust's ``--max-error-ratio``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from canvas_sync.devtools.dynamodb_local import DynamoDBLocal, Unavailable
from canvas_sync.devtools.process import free_port
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.devtools.redis_local import Unavailable as RedisUnavailable
from canvas_sync.devtools.replicas import ReplicaError, ReplicaProcess
from canvas_sync.store import DynamoStore, make_client
from canvas_sync.tokens import generate_keys

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLE = "loadtest"


def configure_replicas(n: int, endpoint: str, log_dir: Path, autosave: float, sync: float) -> list[ReplicaProcess]:
    return [
        ReplicaProcess.configure(
            f"replica-{i + 1}",
            free_port(),
            endpoint,
            TABLE,
            log_path=log_dir / f"replica-{i + 1}.log",
            autosave_interval=autosave,
            sync_interval=sync,
            log_level="warning",
        )
        for i in range(n)
    ]


def _seconds(duration: str) -> float:
    """Locust's run-time syntax (90, 90s, 2m, 1h30m) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms]?)", duration)
    return float(sum(int(n) * units[u or "s"] for n, u in parts))


def counter(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def run_locust(
    urls: list[str],
    users: int,
    spawn_rate: float,
    run_time: str,
    projects: int,
    out: Path,
    private_key: Path,
    convergence_timeout: float = 30.0,
    cpus: set[int] | None = None,
    batched: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Locust headless on the canvas mix against ``urls`` (optionally pinned to ``cpus``):
    its exit code and the convergence report, with the acked-edit statistics in ``stats``."""
    out = out.resolve()  # Locust runs in another directory
    report = out / "convergence.json"
    report.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        run_time,
        "--stop-timeout",
        "5",
        "--host",
        urls[0],
        "--replica-urls",
        ",".join(urls),
        "--projects",
        str(projects),
        "--project-prefix",
        f"run-{time.time_ns()}",
        "--convergence-timeout",
        str(convergence_timeout),
        "--convergence-report",
        str(report),
        "--token-key",
        str(private_key),
        "--html",
        str(out / "report.html"),
        "--csv",
        str(out / "locust"),
        "--only-summary",
        *(["--batched"] if batched else []),
    ]
    limit = _seconds(run_time) + convergence_timeout + 120
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    # The locustfile imports the loadtest package (and canvas_sync, installed): the
    # repository root on PYTHONPATH, whatever Locust puts on sys.path itself.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=limit, preexec_fn=pin).returncode
    except subprocess.TimeoutExpired:
        print(f"run-local: Locust did not finish within {limit:.0f}s; stopped it", file=sys.stderr)
        code = 1
    result = json.loads(report.read_text()) if report.exists() else {"converged": False, "stats": {}}
    return code, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--time", default="60s", help="Locust run time, e.g. 15s, 2m")
    parser.add_argument("--projects", type=int, default=5)
    parser.add_argument("--autosave", type=float, default=5.0, help="CANVAS_AUTOSAVE_INTERVAL of the replicas")
    parser.add_argument("--sync", type=float, default=1.0, help="CANVAS_SYNC_INTERVAL of the replicas")
    parser.add_argument("--convergence-timeout", type=float, default=30.0)
    parser.add_argument("--redis", action="store_true", help="start a redis-server: replicas relay live")
    parser.add_argument("--batched", action="store_true", help="users offer canvas-sync.v2, as the demo page does")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="one replica pinned to one core; raise users step by step until the ack p99 passes 100 ms",
    )
    parser.add_argument("--step-time", type=int, default=20, help="seconds per --capacity step")
    parser.add_argument("--max-users", type=int, default=1600, help="largest --capacity step")
    args = parser.parse_args(argv)
    out = args.out or HERE / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        database = DynamoDBLocal(log_path=out / "dynamodb-local.log").start()
    except Unavailable as error:
        print(f"run-local: {error}", file=sys.stderr)
        return 2
    if args.capacity:
        return _capacity(database, out, args.step_time, args.max_users)
    replicas: list[ReplicaProcess] = []
    relay: RedisServer | None = None
    try:
        DynamoStore(make_client(database.endpoint), TABLE).create_table()
        replicas = configure_replicas(args.replicas, database.endpoint, out, args.autosave, args.sync)
        private, jwks = generate_keys(out / "keys")  # tokens on, as in production: Locust mints them
        for replica in replicas:
            replica.env.update(CANVAS_AUTH="jwt", CANVAS_AUTH_JWKS_URL=jwks.resolve().as_uri())
        if args.redis:
            relay = RedisServer(log_path=out / "redis.log").start()
            for replica in replicas:
                replica.env["CANVAS_REDIS_URL"] = relay.url
        for replica in replicas:
            replica.start(wait=False)
        for replica in replicas:
            replica.wait_ready()
        urls = [replica.url for replica in replicas]
        print(f"run-local: {args.replicas} replicas {', '.join(urls)}; {args.users} users for {args.time}", flush=True)
        code, result = run_locust(
            urls,
            args.users,
            args.spawn_rate,
            args.time,
            args.projects,
            out,
            private,
            args.convergence_timeout,
            batched=args.batched,
        )
        edits_accepted = sum(counter(u, "canvas_edits_total") for u in urls)
        written = sum(counter(u, "canvas_autosave_objects_written_total") for u in urls)
        stats = result.get("stats", {})
        cross = result.get("cross_replica", {})
        summary = {
            "replicas": args.replicas,
            "users": args.users,
            "time": args.time,
            "ops_per_s": stats.get("ops_per_s"),
            "ack_p50_ms": stats.get("p50_ms"),
            "ack_p95_ms": stats.get("p95_ms"),
            "ack_p99_ms": stats.get("p99_ms"),
            "fail_ratio": stats.get("fail_ratio"),
            "relay": bool(args.redis),
            "cross_replica_p50_ms": cross.get("p50_ms"),
            "cross_replica_p99_ms": cross.get("p99_ms"),
            "converged": result.get("converged"),
            "convergence_s": result.get("seconds"),
            "edits_accepted": int(edits_accepted),
            "items_written": int(written),
            "items_per_edit": round(written / edits_accepted, 4) if edits_accepted else None,
            "reports": str(out),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print("\n".join(["", "run-local summary", *(f"  {k}: {v}" for k, v in summary.items())]))
        return 0 if code == 0 and result.get("converged") else 1
    except (ReplicaError, RedisUnavailable) as error:
        print(f"run-local: {error}", file=sys.stderr)
        return 1
    finally:
        for replica in replicas:
            if replica.process is None:
                continue
            try:
                replica.terminate(30)
            except subprocess.TimeoutExpired:
                replica.kill()
        if relay is not None:
            relay.stop()
        database.stop()


def _capacity(database: DynamoDBLocal, out: Path, step_time: int, max_users: int) -> int:
    from loadtest.bench import capacity  # the benchmark's own steps, so `make bench` and this command agree

    try:
        DynamoStore(make_client(database.endpoint), TABLE).create_table()
        pid = database.process.pid if database.process else None
        result = capacity.run(database.endpoint, out, step_time, max_users, database_pid=pid)
    except ReplicaError as error:
        print(f"run-local: {error}", file=sys.stderr)
        return 1
    finally:
        database.stop()
    (out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(capacity.markdown(result))
    return 0 if result["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
