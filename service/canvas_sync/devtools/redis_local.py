"""A local redis-server for the live relay, when the machine has one (Debian: redis-server).

``canvas-sync dev``, the tests, ``loadtest/run-local --redis`` and the benchmarks start it
here: loopback only, nothing saved to disk, on a free port. Tests also kill, restart and
pause it (SIGSTOP) to show what the relay does when Redis misbehaves.
"""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

from .process import LocalProcess, StartError, free_port


class Unavailable(StartError):
    """No redis-server on this machine, or it would not start."""


class RedisServer(LocalProcess):
    name = "redis-server"

    def __init__(self, port: int | None = None, log_path: Path | None = None, password: str | None = None) -> None:
        super().__init__(log_path)
        self.port = port or free_port()
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not installed (Debian package redis-server)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self.launch(command)
        self.wait_until(lambda: _answers(self.port, self.password), timeout, Unavailable)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.resume()  # a paused server cannot act on SIGTERM
        super().stop(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, like a half-open peer."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)


def _answers(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(16).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
