"""Starting a replica process and waiting until it serves.

The one launcher for ``canvas-sync dev``, the tests, ``loadtest/run-local`` and the
benchmarks: ``canvas-sync serve`` in a subprocess, configured through ``CANVAS_*``
variables, ready once ``/readyz`` answers 200.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self


class ReplicaError(RuntimeError):
    """The replica exited or did not become ready; the message ends with its log."""


@dataclass
class ReplicaProcess:
    """One ``canvas-sync serve`` process."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path | None = None
    """Where its output goes (None: this process's own stdout and stderr)."""
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    cpus: set[int] | None = None
    """Pin the process to these CPUs (as ``taskset`` does; Linux), e.g. one core for sizing."""
    _log: IO[bytes] | None = field(default=None, repr=False)

    @classmethod
    def configure(
        cls,
        name: str,
        port: int,
        endpoint: str | None = None,
        table: str | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        **settings: object,
    ) -> Self:
        """A replica of the given DynamoDB endpoint and table; ``settings`` become ``CANVAS_*``."""
        env = dict(os.environ, CANVAS_REPLICA_ID=name, PYTHONUNBUFFERED="1")
        if endpoint:
            env["CANVAS_DYNAMODB_ENDPOINT"] = endpoint
        if table:
            env["CANVAS_TABLE"] = table
        env.update({f"CANVAS_{key.upper()}": str(value) for key, value in settings.items()})
        return cls(name, port, env, log_path, host)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def ws_url(self, project: str) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/ws/{project}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, wait: bool = True, timeout: float = 30.0) -> Self:
        out: IO[bytes] | None = None
        if self.log_path is not None:
            out = self._log = open(self.log_path, "ab")  # closed with the process
        command = [sys.executable, "-m", "canvas_sync", "serve", "--host", self.host, "--port", str(self.port)]
        cpus = self.cpus
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ReplicaError(f"{self.name} exited before it was ready{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        raise ReplicaError(f"{self.name} not ready in {timeout:.0f}s{self._log_tail()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean shutdown: final flush) and wait; the exit code."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.exit_code = self.process.wait(timeout)
        self._close_log()
        return self.exit_code

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def _log_tail(self) -> str:
        text = self.logs()
        return f":\n{text[-4000:]}" if text else ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines with this ``event``."""
        out = []
        for line in self.logs().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out
