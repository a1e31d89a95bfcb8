"""A TCP proxy in front of DynamoDB Local that a test can cut (one replica partitioned
from the table while the others are not) or make hold requests (a save in flight)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from canvas_sync.devtools.process import free_port


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_port``.

    ``cut()`` closes every connection and refuses new ones until ``heal()``; ``hold()``
    keeps what clients send from reaching DynamoDB until ``release()``, and sets
    ``holding`` once a request naming ``watch`` (e.g. ``BatchWriteItem``) is held.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.holding = threading.Event()
        self.watch = b""
        self._lock = threading.Lock()  # guards _cut, _held, _released and _conns
        self._cut = False
        self._held = False
        self._released = threading.Condition(self._lock)
        self._conns: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def hold(self, watch: bytes = b"") -> None:
        with self._lock:
            self._held, self.watch = True, watch
            self.holding.clear()

    def release(self) -> None:
        with self._lock:
            self._held = False
            self._released.notify_all()

    def close(self) -> None:
        self.release()
        self.cut()
        _close(self._server)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outbound: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if outbound:
                    with self._lock:
                        if self._held and self.watch and self.watch in data:
                            self.holding.set()
                        while self._held and not self._cut:
                            self._released.wait(0.1)
                        if self._cut:
                            break
                target.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
