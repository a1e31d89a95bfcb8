"""The Python client of canvas-sync: ``from canvas_sync.client import CanvasClient``.

``session.py`` holds every rule without I/O (the local copy, the unsaved changes, the
replay after a reconnect); ``aio.py`` is the asyncio client over it (``websockets``);
``blocking.py`` a blocking one for Locust and scripts (``websocket-client``, imported
only from there). The guide: docs/python-client.md.
"""

from .aio import CanvasClient, ws_url
from .session import OFFERED, V1, V2, V3, Backoff, ClientError, Session, token_expiry, version_of

__all__ = [
    "OFFERED",
    "V1",
    "V2",
    "V3",
    "Backoff",
    "CanvasClient",
    "ClientError",
    "Session",
    "token_expiry",
    "version_of",
    "ws_url",
]
