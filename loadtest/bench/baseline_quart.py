"""Baselines on Quart + hypercorn (uvloop): `/ws/<p>` parses and acks; `/relay/<room>`
also relays each message to the room's other sockets (the fan-out baseline)."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, websocket

app = Quart(__name__)
rooms: dict[str, set] = {}


@app.get("/")
async def index() -> str:
    return "baseline"


@app.websocket("/ws/<project>")
async def ws(project: str) -> None:
    await websocket.send(json.dumps({"op": "snapshot", "project": project, "objects": []}, separators=(",", ":")))
    while True:
        message = json.loads(await websocket.receive())
        await websocket.send(json.dumps({"op": "ack", "req": message.get("req")}, separators=(",", ":")))


@app.websocket("/relay/<room>")
async def relay(room: str) -> None:
    me = websocket._get_current_object()
    peers = rooms.setdefault(room, set())
    peers.add(me)
    try:
        await me.send(json.dumps({"op": "snapshot", "objects": []}, separators=(",", ":")))
        while True:
            text = await me.receive()
            message = json.loads(text)
            for peer in list(peers):
                if peer is not me:
                    await peer.send(text)
            await me.send(json.dumps({"op": "ack", "req": message.get("req")}, separators=(",", ":")))
    finally:
        peers.discard(me)


if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{int(sys.argv[1])}"]
    config.accesslog = None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app, config))
