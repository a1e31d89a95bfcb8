"""``canvas-sync probe URL``: open a WebSocket, read the snapshot, ping, expect a pong.

Used by the Helm test pod, which has only the service's own image: it goes through the
package's own client (``canvas_sync.client``, over ``websockets``, a runtime dependency),
so the probe sees the service exactly as every Python client does, refusals included.
It does not reconnect: the first refusal or lost socket is the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

from .client import CanvasClient, ClientError


class ProbeError(Exception):
    pass


def split(url: str) -> tuple[str, str]:
    """``ws://host[:port]/ws/<project>`` -> (the base URL, the project)."""
    parts = urlsplit(url)
    base, sep, project = url.partition("/ws/")
    if parts.scheme not in ("ws", "wss") or not parts.hostname or not sep or not project or "/" in project:
        raise ProbeError(f"expected ws://host[:port]/ws/<project>, got {url!r}")
    return base, project


async def _probe(url: str, timeout: float, token: str | None) -> dict[str, object]:
    base, project = split(url)
    async with CanvasClient(base, project, token=token, reconnect=False, open_timeout=timeout) as client:
        try:
            await asyncio.wait_for(client.ready, timeout)
            return await client.ping(timeout)
        except ClientError as error:
            raise ProbeError(error.message if error.message.startswith("HTTP") else str(error)) from None
        except TimeoutError:
            raise ProbeError(f"no snapshot and pong within {timeout:g}s") from None


def probe(url: str, timeout: float = 10.0, token: str | None = None) -> dict[str, object]:
    """Returns the pong; raises :class:`ProbeError` with what went wrong (``HTTP 403: ...``
    for a refused upgrade)."""
    return asyncio.run(_probe(url, timeout, token))


def main(url: str) -> int:
    """The token, when authentication is on, comes from ``CANVAS_PROBE_TOKEN`` (never argv)."""
    try:
        reply = probe(url, token=os.environ.get("CANVAS_PROBE_TOKEN") or None)
    except (OSError, ProbeError, ValueError) as error:
        print(f"canvas-sync probe: {url}: {error}", file=sys.stderr)
        return 1
    print(f"ok: {url} answered {json.dumps(reply)}")
    return 0
