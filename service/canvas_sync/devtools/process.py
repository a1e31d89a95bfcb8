"""One local server process: started, polled until it answers, stopped.

The launchers of DynamoDB Local, redis-server and replicas share this: a free loopback
port, a log file (or none), a start that fails with the log's tail when the process
exits or does not answer in time, and a stop that sends SIGTERM and, after a while,
SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Self


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cache_dir() -> Path:
    """Where fetched tools and development keys live (``CANVAS_CACHE_DIR``, else ~/.cache/canvas-sync)."""
    base = os.environ.get("CANVAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "canvas-sync"
    )
    return Path(base)


class StartError(RuntimeError):
    """The process exited at start or did not answer in time; the message ends with its log."""


class LocalProcess:
    """A server process on this machine. Subclasses say how to start it and when it answers."""

    name = "process"

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        """Where its output goes (None: discarded, or this process's own streams: see ``launch``)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def launch(self, command: Sequence[str], *, inherit_output: bool = False, **popen: Any) -> None:
        """Start ``command``; its output goes to the log file, else nowhere (or, with
        ``inherit_output``, to this process's own stdout and stderr)."""
        out: IO[bytes] | int | None = None if inherit_output else subprocess.DEVNULL
        if self.log_path is not None:
            out = self._log = open(self.log_path, "ab")  # closed when the process is stopped
        self.process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT if out is not None else None, **popen
        )

    def wait_until(self, answers: Callable[[], bool], timeout: float, error: type[Exception] = StartError) -> None:
        """Poll ``answers`` until it is true; ``error`` when the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise error(f"{self.name} exited with code {code} at start{self._log_tail()}")
            if answers():
                return
            time.sleep(0.05)
        self.stop()
        raise error(f"{self.name} did not answer within {timeout:.0f}s{self._log_tail()}")

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (``subprocess.TimeoutExpired`` after ``timeout``); the exit code."""
        assert self.process is not None, "not started"
        self.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close_log()
        return code

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.running:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to its clients."""
        if self.running:
            assert self.process is not None
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

    def start(self) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def staged(target: Path, done: Callable[[Path], bool]) -> Iterator[Path]:
    """An empty folder beside ``target`` to install into, renamed to ``target`` when the
    block ends: atomic, so a concurrent install either wins or finds it ``done``. Nothing is
    left behind when the block raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folder = Path(tmp) / "prefix"
        folder.mkdir()
        yield folder
        try:
            folder.rename(target)
        except OSError:
            if not done(target):
                raise
