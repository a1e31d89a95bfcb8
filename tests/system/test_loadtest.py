"""Load-test tooling: replica discovery against a fake Kubernetes API, and a short real run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from loadtest.bench import sizing, suite
from loadtest.bench.common import pinned
from loadtest.discovery import discovery_api, pod_urls
from tests.helpers import ROOT

SLICES = {
    "items": [
        {
            "metadata": {"name": "canvas-a", "labels": {"kubernetes.io/service-name": "canvas"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": True}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": False}},  # not ready: skipped
                {"addresses": ["10.1.0.7"]},  # no conditions: counted as ready
            ],
        },
        {
            "metadata": {"name": "canvas-b", "labels": {"kubernetes.io/service-name": "canvas"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["fd00::9"], "conditions": {"ready": True}}],
        },
        {
            "metadata": {"name": "canvas-metrics", "labels": {"kubernetes.io/service-name": "canvas"}},
            "addressType": "IPv4",
            "ports": [{"name": "other", "port": 9000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.0.8"], "conditions": {"ready": True}}],
        },
    ]
}


class FakeApi(BaseHTTPRequestHandler):
    """Answers the one call discovery makes, and records what was asked."""

    requests: ClassVar[list[tuple[str, dict[str, list[str]]]]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        FakeApi.requests.append((parts.path, parse_qs(parts.query)))
        if parts.path == "/apis/discovery.k8s.io/v1/namespaces/canvas-ns/endpointslices":
            body = json.dumps(
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {}, **SLICES}
            ).encode()
            self.send_response(200)
        else:
            body = json.dumps({"kind": "Status", "code": 404}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeApi.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pod_urls_from_endpoint_slices(fake_api: str) -> None:
    urls = pod_urls(discovery_api(host=fake_api), "canvas-ns", "canvas")
    assert urls == ["http://10.1.0.5:8080", "http://10.1.0.7:8080", "http://[fd00::9]:8080"]
    ((_path, query),) = FakeApi.requests
    assert query["labelSelector"] == ["kubernetes.io/service-name=canvas"]


def test_locustfile_checks_the_discovered_pods(fake_api: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": fake_api}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                "users": [{"name": "nobody", "user": {}}],
            }
        )
    )
    # importing locust patches the process with gevent: keep it out of pytest's process
    code = (
        "import types; from loadtest.locustfile import check_urls; "
        "o = types.SimpleNamespace(discover_service='canvas', discover_namespace='canvas-ns', check_urls='', "
        "replica_urls=''); "
        "print(' '.join(check_urls(types.SimpleNamespace(parsed_options=o, host='http://canvas:80'))))"
    )
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["http://10.1.0.5:8080", "http://10.1.0.7:8080", "http://[fd00::9]:8080"]


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    """``loadtest/run-local`` as a user runs it; fails the test with its output when it fails."""
    result = subprocess.run(
        [str(ROOT / "loadtest" / "run-local"), *args],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.dynamodb_local
@pytest.mark.timeout(300)
@pytest.mark.parametrize("batched", [False, True], ids=["v1", "v2"])
def test_short_local_run_converges(tmp_path: Path, batched: bool) -> None:
    run_local(
        *("--replicas", "2", "--users", "10", "--spawn-rate", "10", "--time", "15s", "--autosave", "1"),
        *("--out", str(tmp_path)),
        *(["--batched"] if batched else []),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["converged"] is True and summary["edits_accepted"] > 100
    assert summary["items_written"] < summary["edits_accepted"]
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "locust_stats.csv").exists()
    stats = (tmp_path / "locust_stats.csv").read_text()
    assert "update (drag)" in stats and "create" in stats


@pytest.mark.dynamodb_local
@pytest.mark.timeout(300)
def test_capacity_pins_one_replica_and_reports_each_step(tmp_path: Path) -> None:
    result = run_local("--capacity", "--step-time", "10", "--max-users", "25", "--out", str(tmp_path))
    capacity = json.loads((tmp_path / "capacity.json").read_text())
    (step,) = capacity["rows"]  # 25 users: the only step up to --max-users
    assert step["users"] == 25 and step["converged"] and step["edits_per_s"] > 50
    assert 0 < step["server_cores"] <= 1.05  # one core at most: pinned
    assert step["dynamodb_per_s"]["items_written"] > 0 and capacity["edits_per_core"] > step["edits_per_s"]
    assert "### capacity: one replica pinned to 1 core" in result.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to move a process between")
def test_pinned_moves_every_thread_of_a_process_and_puts_them_back() -> None:
    """What the benchmarks do to DynamoDB Local's JVM: its threads, not only its main one."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "print('up', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        tasks = [int(t.name) for t in Path(f"/proc/{child.pid}/task").iterdir()]
        before = {tid: os.sched_getaffinity(tid) for tid in tasks}
        one = {min(os.sched_getaffinity(0))}
        assert len(tasks) >= 4 and all(cpus != one for cpus in before.values())
        with pinned(child.pid, one):
            assert all(os.sched_getaffinity(tid) == one for tid in tasks)
        assert {tid: os.sched_getaffinity(tid) for tid in tasks} == before
    finally:
        child.kill()
        child.wait()


def test_the_sizing_table_follows_from_the_measurements() -> None:
    results = {
        "capacity": {
            "edits_per_core": 3000,
            "best": {
                "users": 100,
                "edits_per_s": 1000.0,
                "dynamodb_per_s": {"edits": 1000.0, "items_written": 50.0, "heads_written": 2.0},
            },
        },
        "memory": {
            "connections": {"rss_bytes_per_connection": 65536, "rss_idle_mib": 100},
            "objects": {"rss_bytes_per_object": 1024},
        },
        "relay": {"reads": {"heads_read_with_relay": 4, "heads_read_without": 60, "with_relay": 1, "without_relay": 4}},
    }
    s = sizing.table_from(results)
    assert s["per_user_edits_per_s"] == 10 and s["edits_per_pod"] == 1800 and s["editors_per_pod"] == 180
    assert s["connections_per_pod_memory"] == (1024 - 100) * 16  # 64 KiB each
    assert s["boards_per_pod_memory"] == (1024 - 100) * 1024 // 1000
    k = s["per_1000"]
    assert (k["edits_per_s"], k["pods"], k["boards"]) == (10_000, 6, 100)
    assert k["wru_per_s"] == 10_000 * 0.052 * 2
    # 100 boards: heads (1 RRU each), other requests at 0.5, a 74-page re-read every 600 s or 60 s
    assert k["rru_per_s_relay"] == round(100 * (4 + 0.5 + 74 * 60 / 600) / 60, 1)
    assert k["rru_per_s_table"] == round(100 * (60 + 2 + 74) / 60, 1)
    month = 730 * 3600 * (1040 * 0.625 + k["rru_per_s_relay"] * 0.125) / 1e6
    assert abs(k["dollars_per_month_relay"] - month) < 0.5


def test_benchmarks_run_by_name() -> None:
    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "loadtest.bench", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    listing = bench("--help")
    assert listing.returncode == 0, listing.stderr
    for benchmark in suite.BENCHMARKS:
        assert re.search(rf"^  {re.escape(benchmark.name)} +{re.escape(benchmark.measures[:30])}", listing.stdout, re.M)
    unknown = bench("13")
    assert unknown.returncode == 2 and "no benchmark '13'" in unknown.stderr
    # what sizing is computed from runs first, in the suite's order
    chosen = [b.name for b in suite.chosen(["sizing", "cold-load"])]
    assert chosen == ["cold-load", "memory", "relay", "capacity", "sizing"]
    # each module runs on its own (python -m loadtest.bench.<module>), and between them every benchmark
    standalone: set[str] = set()
    for module in (ROOT / "loadtest" / "bench").glob("*.py"):
        for names in re.findall(r"standalone\(([^)]*)\)", module.read_text()):
            standalone.update(re.findall(r'"([^"]+)"', names))
    assert standalone == set(suite.BY_NAME) - {"convergence"}  # convergence: a CLI of its own
