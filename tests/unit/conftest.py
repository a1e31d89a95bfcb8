"""Unit tests never reach the network: a connection to anything but a Unix socket fails
the test that tried, so a slow or flaky dependency cannot hide in here."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: object) -> None:
        if sock.family != socket.AF_UNIX:
            raise AssertionError(f"a unit test tried to connect to {address!r}: that is a system test")
        real_connect(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
