"""Baseline: the `websockets` library's asyncio server on uvloop, parse JSON and ack.
The fastest plain-Python WebSocket stack we know of; a ceiling for round trips."""

from __future__ import annotations

import asyncio
import json
import sys
from http import HTTPStatus

import uvloop
from websockets.asyncio.server import serve


async def handler(ws) -> None:
    await ws.send(json.dumps({"op": "snapshot", "objects": []}, separators=(",", ":")))
    async for text in ws:
        message = json.loads(text)
        await ws.send(json.dumps({"op": "ack", "req": message.get("req")}, separators=(",", ":")))


def health(connection, request):
    if request.path == "/":
        return connection.respond(HTTPStatus.OK, "baseline\n")
    return None


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, process_request=health, max_size=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
