"""Starting a replica process and waiting until it serves.

The one launcher for ``canvas-sync dev``, the tests, ``loadtest/run-local`` and the
benchmarks: ``canvas-sync serve`` in a subprocess, configured through ``CANVAS_*``
variables, ready once ``/readyz`` answers 200.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from .process import LocalProcess, StartError


class ReplicaError(StartError):
    """The replica exited or did not become ready; the message ends with its log."""


class ReplicaProcess(LocalProcess):
    """One ``canvas-sync serve`` process."""

    def __init__(
        self, name: str, port: int, env: dict[str, str], log_path: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(log_path)
        self.name = name
        self.port = port
        self.env = env
        self.host = host
        self.cpus: set[int] | None = None
        """Pin the process to these CPUs (as ``taskset`` does; Linux), e.g. one core for sizing."""
        self.exit_code: int | None = None

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

    def start(self, wait: bool = True, timeout: float = 30.0) -> Self:
        command = [sys.executable, "-m", "canvas_sync", "serve", "--host", self.host, "--port", str(self.port)]
        cpus = self.cpus
        self.launch(
            command,
            inherit_output=True,
            env=self.env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_until(self._ready, timeout, ReplicaError)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean shutdown: final flush) and wait; the exit code."""
        self.exit_code = super().terminate(timeout)
        return self.exit_code

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
