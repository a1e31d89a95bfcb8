"""The read tap (``patches.ReadTap``) in front of a real hypercorn: whatever way each
frame goes, wsproto's or the tap's, the handler hears them in the order they were sent."""

from __future__ import annotations

import asyncio
import logging

import pytest
from canvas_sync import patches
from canvas_sync.devtools.process import free_port
from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_tapped_messages_keep_their_order_with_hypercorns_own(deflate: bool) -> None:
    """A real hypercorn: pings, a fragmented message and frames that arrive together go
    wsproto's way or the tap's, and the handler hears them all in the order sent; a
    message taken with a future holds back the next until it is done. With
    permessage-deflate the client compresses every message, as browsers do."""
    original = ws_stream.PerMessageDeflate
    patches.set_websocket_compression(deflate)
    try:
        asyncio.run(_tapped_order(deflate))
    finally:
        ws_stream.PerMessageDeflate = original  # type: ignore[misc]


async def _tapped_order(deflate: bool) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from quart import Quart, websocket

    heard: list[tuple[str, str]] = []
    app = Quart(__name__)
    app.asgi_websocket_class = patches.DirectSocket

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        socket: patches.DirectSocket = websocket.scope[patches.SOCKET]  # type: ignore[literal-required]

        def take(text: str) -> asyncio.Future[None] | None:
            if text != "slow":
                heard.append((text, "tap"))
                return None
            return asyncio.ensure_future(_later(heard, text))

        assert socket.listen(take)
        while (message := await socket.receive()) is not None:
            heard.append((str(message), "reader"))

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog, config.errorlog = None, logging.getLogger("hypercorn.error")
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        reader, writer, extension = await _handshake(port, deflate)
        client = FrameProtocol(client=True, extensions=[extension] if extension else [])

        def _client_frames(*texts: str) -> bytes:
            return b"".join(bytes(client.send_data(text)) for text in texts)

        first = _client_frames("1")
        assert first[0] == (0xC1 if deflate else 0x81)  # compressed, as a browser's
        writer.write(first)
        await asyncio.sleep(0.05)
        together = [client.send_data("2"), client.ping(b"p"), client.send_data("3"), client.send_data("4")]
        writer.write(b"".join(bytes(f) for f in together))
        await asyncio.sleep(0.05)
        writer.write(bytes(client.send_data("5a", fin=False)) + bytes(client.send_data("5b")) + _client_frames("6"))
        await asyncio.sleep(0.05)
        writer.write(_client_frames("slow", "7"))
        await asyncio.sleep(0.3)  # the held one is done (0.1 s), and "7" after it
        writer.write(_client_frames("8"))
        for _ in range(100):
            if len(heard) == 10:
                break
            await asyncio.sleep(0.02)
        pong = await asyncio.wait_for(reader.read(100), 2)
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, 5)
    assert [text for text, _ in heard] == ["1", "2", "3", "4", "5a5b", "6", "slow", "7", "8"][: len(heard)]
    assert len(heard) == 9
    ways = dict(heard)
    assert ways["1"] == ways["2"] == ways["8"] == "tap"  # alone, or first in what came together
    assert ways["3"] == ways["5a5b"] == ways["6"] == "reader"  # behind the ping, the fragments
    assert ways["7"] == "reader"  # behind the held one
    assert pong[:1] == b"\x8a"  # the ping was answered, by wsproto


async def _later(heard: list[tuple[str, str]], text: str) -> None:
    await asyncio.sleep(0.1)
    heard.append((text, "held"))


async def _handshake(
    port: int, deflate: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PerMessageDeflate | None]:
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.02)
    offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + offer + b"\r\n"
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith("HTTP/1.1 101")
    answer = [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-extensions")
    ]
    assert bool(answer) == deflate
    if not answer:
        return reader, writer, None
    extension = PerMessageDeflate()
    extension.finalize(answer[0])
    return reader, writer, extension
