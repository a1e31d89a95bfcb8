"""The ``canvas-sync`` command as a user runs it: exit codes, create-table, dev."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.process import free_port
from canvas_sync.store import DynamoStore, make_client

from tests.helpers import ROOT


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvas_sync", *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_configuration_exits_2_with_one_line() -> None:
    result = run("serve", env=dict(os.environ, CANVAS_AUTOSAVE_INTERVAL="often"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CANVAS_AUTOSAVE_INTERVAL" in lines[0]


def test_missing_region_without_endpoint_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CANVAS_"))}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    result = run("create-table", env=env)
    assert result.returncode == 2 and "AWS_REGION" in result.stderr


@pytest.mark.dynamodb_local
def test_create_table_is_idempotent(dynamodb_local: DynamoDBLocal) -> None:
    env = dict(os.environ, CANVAS_DYNAMODB_ENDPOINT=dynamodb_local.endpoint, CANVAS_TABLE="cli_table")
    for _ in range(2):
        result = run("create-table", env=env)
        assert result.returncode == 0, result.stderr
        assert "cli_table is ACTIVE" in result.stdout
    assert DynamoStore(make_client(dynamodb_local.endpoint), "cli_table").table_ready()


DEV_PATIENCE = 150  # seconds for dev to start or stop: a shared 2-core machine took over 60 s in a full suite


def _dev(tmp_path: Path, env: dict[str, str], replicas: int = 2) -> tuple[str, list[str], int]:
    """Start ``canvas-sync dev``, hit every printed URL, stop it with SIGINT."""
    port = free_port()
    out = tmp_path / "dev.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "canvas_sync", "dev", "--replicas", str(replicas), "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            # a suite started in the background (``make test &``) ignores SIGINT, and a child
            # inherits that: Python would then never raise KeyboardInterrupt and dev never stops
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + DEV_PATIENCE
            while "Ctrl-C stops everything" not in out.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, out.read_text()
                time.sleep(0.2)
            urls = re.findall(r"replica-\d+: (http://\S+)", out.read_text())
            for url in urls:
                with pytest.raises(urllib.error.HTTPError) as refused:  # dev runs with authentication on
                    urllib.request.urlopen(f"{url}/projects/demo/objects", timeout=5)
                assert refused.value.code == 401
                with urllib.request.urlopen(f"{url}/dev/token?project=demo&name=test", timeout=5) as response:
                    token = json.loads(response.read())["token"]
                authorized = urllib.request.Request(
                    f"{url}/projects/demo/objects", headers={"Authorization": f"Bearer {token}"}
                )
                with urllib.request.urlopen(authorized, timeout=5) as response:
                    assert response.status == 200
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(DEV_PATIENCE)
    return out.read_text(), urls, code


@pytest.mark.dynamodb_local
def test_dev_starts_dynamodb_local_and_replicas(dynamodb_local: DynamoDBLocal, tmp_path: Path) -> None:
    text, urls, code = _dev(tmp_path, dict(os.environ, CANVAS_TABLE="dev_table"))
    assert len(urls) == 2 and code == 0, text
    assert "DynamoDB Local started" in text


def test_dev_falls_back_to_moto_without_java_or_npm(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with python only
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = dict(os.environ, PATH=str(bin_dir), CANVAS_CACHE_DIR=str(tmp_path / "empty-cache"))
    text, urls, code = _dev(tmp_path, env, replicas=1)
    assert len(urls) == 1 and code == 0, text
    assert "falling back to moto" in text


def test_one_version_everywhere() -> None:
    """pyproject reads the version from the package; the chart's appVersion must follow it."""
    import importlib.metadata

    import canvas_sync
    import yaml

    chart = yaml.safe_load((ROOT / "helm/canvas-sync/Chart.yaml").read_text())
    assert importlib.metadata.version("canvas-sync") == canvas_sync.__version__ == chart["appVersion"]


@pytest.mark.dynamodb_local
def test_projects_commands_over_the_http_api(replicas: Any, tmp_path: Path) -> None:
    """``canvas-sync projects``: JSON out, a token from CANVAS_TOKEN or --token, exit 1 on a refusal."""
    from canvas_sync.tokens import mint

    secret = "a shared secret of at least 32 bytes, for tests"
    replica = replicas("cli", auth="jwt", auth_secret=secret, registry_interval=0.3, autosave_interval=0.3)
    owner = mint("ops", {"*": "owner"}, 600, secret=secret.encode())
    viewer = mint("vi", {"board": "viewer"}, 600, secret=secret.encode())
    env = dict(os.environ, CANVAS_URL=replica.url, CANVAS_TOKEN=owner)

    def projects(*args: str, token: str | None = None) -> tuple[int, Any, str]:
        extra = ["--token", token] if token else []
        result = run("projects", *extra, *args, env=env)
        out = json.loads(result.stdout) if result.returncode == 0 else None
        return result.returncode, out, result.stderr

    source = tmp_path / "board.json"
    source.write_text(json.dumps({"objects": [{"id": "a", "type": "rect", "x": 1}, {"id": "b", "type": "text"}]}))
    code, done, _ = projects("import", "board", str(source))
    assert code == 0 and done["created"] == 2
    code, exported, _ = projects("export", "board")
    assert code == 0 and exported["objects"] == json.loads(source.read_text())["objects"]
    copy = tmp_path / "export.json"
    copy.write_text(json.dumps(exported))
    assert projects("import", "copy", str(copy))[0] == 0  # export | import copies a project
    code, version, _ = projects("snapshot", "board", "--name", "before")
    assert code == 0 and version["name"] == "before" and version["objects"] == 2
    source.write_text(json.dumps([{"id": "c", "type": "rect"}]))  # a bare array works too
    assert projects("import", "board", str(source))[1]["deleted"] == 2
    code, listed, _ = projects("versions", "board")
    assert [v["version"] for v in listed["versions"]] == [version["version"]]
    assert projects("versions", "board", version["version"])[1]["objects"][0]["id"] == "a"
    code, restored, _ = projects("restore", "board", version["version"])
    assert code == 0 and restored["undo"] and projects("export", "board")[1]["objects"][0]["id"] == "a"
    deadline = time.monotonic() + 10
    while projects("list", "--all", "--limit", "1")[1]["projects"] != [
        {"project": "board", "objects": 2, "updated_at": pytest.approx(time.time(), abs=60)},
        {"project": "copy", "objects": 2, "updated_at": pytest.approx(time.time(), abs=60)},
    ]:
        assert time.monotonic() < deadline, projects("list")
        time.sleep(0.2)
    code, _, err = projects("delete", "board", token=viewer)
    assert code == 1 and json.loads(err)["status"] == 403
    code, _, err = projects("restore", "board", "0000000000000-000000")
    assert code == 1 and json.loads(err) == {
        "status": 404,
        "error": "not_found",
        "message": "no version '0000000000000-000000' of this project",
    }
    assert projects("delete", "board") == (0, {"deleted": True, "project": "board"}, "")
    assert projects("export", "board")[1]["objects"] == []
    unreachable = run("projects", "--url", "http://127.0.0.1:9", "list", env=env)
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
