"""The image without a Docker engine: the Dockerfile's own steps, then the rendered pod.

There is no Docker engine here, so this builds the wheel exactly as the Dockerfile's build
stage does, installs it into a clean virtual environment (the runtime stage's
/opt/canvas-sync), and runs the Dockerfile's entry command. Then it takes the chart's
rendered Deployment (command, args, environment, port, probes, grace period) and boots
that, hits the probes, sends SIGTERM and checks the exit lands inside the grace period.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.process import free_port

from tests.helpers import ROOT
from tests.system.test_chart import FULLNAME, app_deployment, by_kind, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form argument list of the last ENTRYPOINT or CMD."""
    found = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", DOCKERFILE, re.M)
    assert found, f"{instruction} must be in exec form"
    return json.loads(found[-1])


def dockerfile_env() -> dict[str, str]:
    block = re.search(r"^ENV\s+((?:.*\\\n)*.*)$", DOCKERFILE, re.M)
    assert block
    return dict(pair.split("=", 1) for pair in shlex.split(block.group(1).replace("\\\n", " ")))


def test_dockerfile_shape() -> None:
    assert len(re.findall(r"^FROM\s", DOCKERFILE, re.M)) == 2, "multi-stage"
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim\s*$", DOCKERFILE, re.M), "slim base"
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)[-1]
    assert user.isdigit() and int(user) != 0, "numeric non-root user (runAsNonRoot can verify it)"
    assert dockerfile_json("ENTRYPOINT") + dockerfile_json("CMD") == ["canvas-sync", "serve"]
    assert dockerfile_env()["CANVAS_EVENT_LOOP"] == "uvloop"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/canvas-sync as the Dockerfile builds it: wheel, then a clean venv."""
    work = tmp_path_factory.mktemp("image")
    build = re.search(r"RUN python -m pip wheel (.*?) \.", DOCKERFILE)
    assert build, "the build stage makes a wheel"
    context = work / "src"  # only what the build stage copies, so a file it forgets fails here too
    build_stage = DOCKERFILE.split("\nFROM ", 2)[1]
    for line in re.findall(r"^COPY\s+(?!--)(.+)$", build_stage, re.M):
        *sources, dest = line.split()
        for source in sources:
            target = context / dest / (Path(source).name if dest.endswith("/") or dest == "." else "")
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(work / "wheels"), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    venv = work / "opt-canvas-sync"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheels = [str(p) for p in (work / "wheels").glob("*.whl")]
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the wheel carries the license"
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", *wheels],
        check=True,
        capture_output=True,
        timeout=600,
    )
    removed = re.search(r"rm -r /opt/canvas-sync/(lib/python\*/site-packages/canvas_sync/devtools)", build_stage)
    assert removed, "the image leaves the development tooling out"
    (devtools,) = venv.glob(removed.group(1))
    shutil.rmtree(devtools)  # as the build stage does: what follows runs without it
    return venv


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_status(url: str, status: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process exited"
        try:
            if get(url) == status:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}")


@pytest.mark.dynamodb_local
def test_the_image_entry_command_serves(
    image_venv: Path, dynamodb_local: DynamoDBLocal, table: str, tmp_path: Path
) -> None:
    port = free_port()
    env = dockerfile_env()  # the image's ENV, with /opt/canvas-sync where this venv is
    env["PATH"] = env["PATH"].replace("/opt/canvas-sync", str(image_venv)).replace("$PATH", "/usr/bin:/bin")
    env.update(
        HOME=str(tmp_path), CANVAS_PORT=str(port), CANVAS_DYNAMODB_ENDPOINT=dynamodb_local.endpoint, CANVAS_TABLE=table
    )
    command = dockerfile_json("ENTRYPOINT") + dockerfile_json("CMD")
    unconfigured = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert unconfigured.returncode == 2 and "CANVAS_AUTH=jwt needs" in unconfigured.stderr  # never open by accident
    env["CANVAS_AUTH_SECRET"] = "a shared secret of at least 32 bytes"
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_status(f"http://127.0.0.1:{port}/readyz", 200, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert b'"loop": "uvloop"' in proc.stderr.read()  # type: ignore[union-attr]
    dev = subprocess.run([*command[:1], "dev"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert dev.returncode == 2 and "development tooling is not installed here" in dev.stderr


@pytest.mark.dynamodb_local
def test_boot_the_rendered_pod(image_venv: Path, dynamodb_local: DynamoDBLocal, table: str, tmp_path: Path) -> None:
    port = free_port()
    objects = render({"containerPort": port, "dynamodb": {"table": table, "endpoint": dynamodb_local.endpoint}})
    pod = app_deployment(objects)["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "canvas-sync")
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == FULLNAME)["data"]
    env: dict[str, Any] = {"PATH": f"{image_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), **config}
    for var in container["env"]:
        env[var["name"]] = var.get("value") or f"{FULLNAME}-7d9f8-abcde"  # fieldRef metadata.name
    assert container["ports"][0]["containerPort"] == port
    proc = subprocess.Popen(
        container["command"] + container["args"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_status(base + container["livenessProbe"]["httpGet"]["path"], 200, proc)
        wait_status(base + container["readinessProbe"]["httpGet"]["path"], 200, proc)
        pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        grace = pod["terminationGracePeriodSeconds"]
        subprocess.run(container["lifecycle"]["preStop"]["exec"]["command"], check=True, timeout=pause + 5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(grace) == 0
        assert time.monotonic() - started + pause < grace
    finally:
        proc.kill()
