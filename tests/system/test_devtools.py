"""The development tools' own processes: ``python -m canvas_sync.devtools.dynamodb_local run``
stops its JVM whenever it is stopped, so no DynamoDB Local is left holding the port."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from canvas_sync.devtools.dynamodb_local import _answers, emulator_dir
from canvas_sync.devtools.process import free_port, staged

from tests.helpers import missing, wait_until

pytestmark = pytest.mark.dynamodb_local


def runner(port: int) -> subprocess.Popen[str]:
    if not (emulator_dir() / "DynamoDBLocal.jar").is_file():
        missing("DynamoDB Local is not fetched (python -m canvas_sync.devtools.dynamodb_local fetch)")
    return subprocess.Popen(
        [sys.executable, "-m", "canvas_sync.devtools.dynamodb_local", "run", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_stops_the_jvm_and_frees_the_port() -> None:
    port = free_port()
    process = runner(port)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=60, what="DynamoDB Local answering")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert not _answers(f"http://127.0.0.1:{port}"), "the JVM outlived its runner"
    finally:
        process.kill()


def test_sigterm_during_the_start_stops_the_jvm_too() -> None:
    port = free_port()
    process = runner(port)
    try:
        time.sleep(0.5)  # the JVM is starting, not answering yet
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        time.sleep(2)  # a JVM left behind would be answering by now
        assert not _answers(f"http://127.0.0.1:{port}"), "the JVM outlived its runner"
    finally:
        process.kill()


def test_a_staged_install_lands_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "pkg"
    with pytest.raises(RuntimeError), staged(target, Path.exists) as folder:
        (folder / "half").write_text("x")
        raise RuntimeError("npm failed")
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing left behind
    with staged(target, Path.exists) as folder:
        (folder / "done").write_text("x")
    with staged(target, Path.exists) as folder:  # another fetch finishing second finds it done
        (folder / "other").write_text("x")
    assert [p.name for p in target.iterdir()] == ["done"]
