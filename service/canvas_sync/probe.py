"""``canvas-sync probe URL``: open a WebSocket, read the snapshot, ping, expect a pong.

Used by the Helm test pod, which has only the service's own image. wsproto and h11 come
with hypercorn, so no extra client library is needed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, RejectConnection, Request, TextMessage


class ProbeError(Exception):
    pass


def probe(url: str, timeout: float = 10.0, token: str | None = None) -> dict[str, object]:
    """Returns the pong; raises :class:`ProbeError` with what went wrong. A token travels as
    the ``canvas-sync.bearer.`` subprotocol, as a browser's would."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ProbeError(f"expected ws://host[:port]/ws/<project>, got {url!r}")
    port = parts.port or 80
    conn = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((parts.hostname, port), timeout=timeout) as sock:
        protocols = ["canvas-sync.v1", f"canvas-sync.bearer.{token}"] if token else []
        request = Request(host=f"{parts.hostname}:{port}", target=parts.path or "/", subprotocols=protocols)
        sock.sendall(conn.send(request))
        texts: list[str] = []
        buffer = ""
        pinged = False
        while True:
            data = sock.recv(65536)
            if not data:
                raise ProbeError("connection closed before the pong")
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, RejectConnection):
                    raise ProbeError(f"upgrade refused with HTTP {event.status_code}")
                if isinstance(event, CloseConnection):
                    raise ProbeError(f"closed by the server with code {event.code}")
                if isinstance(event, AcceptConnection):
                    continue
                if isinstance(event, TextMessage):
                    buffer += event.data
                    if not event.message_finished:
                        continue
                    texts.append(buffer)
                    buffer = ""
                elif isinstance(event, Message):
                    continue
            if texts and not pinged:
                snapshot = json.loads(texts[0])
                if snapshot.get("op") != "snapshot":
                    raise ProbeError(f"first message was not a snapshot: {texts[0][:200]}")
                sock.sendall(conn.send(TextMessage(data=json.dumps({"op": "ping", "req": "probe"}))))
                pinged = True
            for text in texts[1:]:
                reply = json.loads(text)
                if reply.get("op") == "pong" and reply.get("req") == "probe":
                    sock.sendall(conn.send(CloseConnection(code=1000)))
                    return reply


def main(url: str) -> int:
    """The token, when authentication is on, comes from ``CANVAS_PROBE_TOKEN`` (never argv)."""
    try:
        reply = probe(url, token=os.environ.get("CANVAS_PROBE_TOKEN") or None)
    except (OSError, ProbeError, ValueError) as error:
        print(f"canvas-sync probe: {url}: {error}", file=sys.stderr)
        return 1
    print(f"ok: {url} answered {json.dumps(reply)}")
    return 0
