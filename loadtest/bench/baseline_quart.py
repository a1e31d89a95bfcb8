"""Baseline for the round-trip benchmark: Quart on hypercorn (uvloop) that only parses and acks.

Whatever canvas-sync costs beyond this is our pipeline (validation, state, fan-out,
dirty tracking); whatever this costs is the framework's.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, websocket

app = Quart(__name__)


@app.websocket("/ws/<project>")
async def ws(project: str) -> None:
    await websocket.send(json.dumps({"op": "snapshot", "project": project, "objects": []}, separators=(",", ":")))
    while True:
        message = json.loads(await websocket.receive())
        await websocket.send(json.dumps({"op": "ack", "req": message.get("req")}, separators=(",", ":")))


if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{int(sys.argv[1])}"]
    config.accesslog = None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app, config))
