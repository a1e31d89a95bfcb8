"""The JavaScript client (``clients/js``) against real replicas.

Node's test runner runs the scripts in ``clients/js/integration/`` with the replicas' URLs
in the environment and ``ws`` on ``NODE_PATH`` (``canvas_sync.devtools.node`` installs it
into the cache). Their output goes to ``test-output/js-client/``. The unit tests of the
client (a fake server, no replicas) are ``npm test`` in ``clients/js``; one test here runs
them too, so that the suite covers them.

THE SIGKILL TEST: clients edit through replica A (auto-save every 2 s); A is killed with
SIGKILL at a random moment (``tests.killtest.KillScenario``); the clients' url function
sends them to B; once they are saved, the table must hold each client's final intended
state: nothing lost, nothing duplicated, no later change overwritten; with the relay and
through the table alone. Summaries: ``test-output/sigkill-js-relay.json`` and
``test-output/sigkill-js-table.json``.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools import node as nodetools
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal

from tests.helpers import OUTPUT, ROOT, Replica, missing, wait_until
from tests.killtest import KillScenario

pytestmark = pytest.mark.dynamodb_local

JS = ROOT / "clients" / "js"
LOGS = OUTPUT / "js-client"
SECRET = "js-client-tests-secret-of-at-least-32-bytes"


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    try:
        nodetools.node()
        return nodetools.env()
    except nodetools.Unavailable as error:
        missing(str(error))
        raise  # unreachable: missing() skips or fails


def ws(replica: Replica) -> str:
    return replica.url.replace("http", "ws", 1)


def run_node(script: str, env: dict[str, str], extra: dict[str, str], timeout: float = 100) -> str:
    """``node --test integration/<script>``; its output, written as it comes to
    test-output/js-client/<script>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{Path(script).stem}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [nodetools.node(), "--test", "--test-reporter=spec", f"integration/{script}"],
            cwd=JS,
            env={**env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"node --test integration/{script} still running after {timeout}s:\n{log_path.read_text()[-6000:]}"
            ) from None
    output = log_path.read_text()
    assert code == 0, f"node --test integration/{script} failed:\n{output[-6000:]}"
    return output


def test_the_unit_tests_pass(node_env: dict[str, str]) -> None:
    """``npm test`` in clients/js: the fake-server tests (reconnects, replay, undo, ...)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [nodetools.node(), "--test"], cwd=JS, env=node_env, capture_output=True, text=True, timeout=300
    )
    (LOGS / "unit.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def test_two_clients_on_two_replicas_with_the_relay_converge(
    replicas: Any, redis_server: Any, node_env: dict[str, str]
) -> None:
    fast = {"autosave_interval": 0.5, "sync_interval": 0.5, "redis_url": redis_server.url, "relay_heartbeat": 0.2}
    a, b = replicas("replica-a", **fast), replicas("replica-b", **fast)
    project = f"js-{uuid.uuid4().hex[:8]}"
    run_node("converge.mjs", node_env, {"CANVAS_URL_A": ws(a), "CANVAS_URL_B": ws(b), "CANVAS_PROJECT": project})
    wait_until(lambda: a.objects(project) == b.objects(project), what="both replicas equal")
    assert len(a.objects(project)) == 9


def test_tokens_against_a_replica_with_authentication(replicas: Any, node_env: dict[str, str]) -> None:
    secured = replicas("secured", auth="jwt", auth_secret=SECRET, auth_leeway=0)
    run_node(
        "auth.mjs",
        node_env,
        {"CANVAS_URL": ws(secured), "CANVAS_PROJECT": "js-auth", "CANVAS_SECRET": SECRET},
    )


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "table"])
def test_sigkill_loses_nothing(
    relay: bool,
    dynamodb_local: DynamoDBLocal,
    table: str,
    tmp_path: Path,
    node_env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    redis_url = request.getfixturevalue("redis_server").url if relay else None
    name = f"sigkill-js-{'relay' if relay else 'table'}"
    project = f"kill-{uuid.uuid4().hex[:8]}"
    mark, result_path = tmp_path / "editing", tmp_path / "result.json"
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    with KillScenario(
        dynamodb_local.endpoint, table, tmp_path / "replicas", redis_url=redis_url, autosave_interval=2.0
    ) as scenario:
        env = {
            **node_env,
            "CANVAS_URL_FILE": str(scenario.url_file),
            "CANVAS_PROJECT": project,
            "CANVAS_MARK": str(mark),
            "CANVAS_RESULT": str(result_path),
            "CANVAS_CLIENTS": "3",
            # edits go on for 3 s after the kill: some made while disconnected, some through B
            "CANVAS_EDIT_SECONDS": str(math.ceil(scenario.kill_delay) + 3),
            "CANVAS_SEED": str(scenario.seed),
        }
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [nodetools.node(), "--test", "--test-reporter=spec", "integration/sigkill.mjs"],
                cwd=JS,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until(lambda: mark.exists() or proc.poll() is not None, timeout=30, what="editing to start")
                assert proc.poll() is None, log_path.read_text()[-4000:]
                time.sleep(scenario.kill_delay)  # a random moment (2 to 5 s, seeded) into the editing
                scenario.kill_a()
                code = proc.wait(timeout=150)
            finally:
                if proc.poll() is None:
                    proc.kill()
        output = log_path.read_text()
        assert result_path.exists(), f"the node script wrote no result:\n{output[-6000:]}"
        result = json.loads(result_path.read_text())
        summary = scenario.check(
            project,
            result["expected"],
            client="javascript",
            clients=len(result["clients"]),
            changes=result["changes"],
            acked_unsaved_at_kill=result["acked_unsaved_at_kill"],
            pending_at_kill=result["pending_at_kill"],
            client_errors=result["errors"][:10],
        )
        scenario.write_summary(name, summary)
    assert code == 0, f"the node script failed:\n{output[-6000:]}"
    assert summary["ok"], json.dumps(summary, indent=2)
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    # the kill came mid-way: acked changes not yet saved were only in A's memory
    assert summary["acked_unsaved_at_kill"] > 0, summary
    assert summary["changes"] > 100, summary
