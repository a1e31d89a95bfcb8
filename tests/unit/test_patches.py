"""The patches of third-party internals (patches.py) still fit the installed libraries.

This fails first, and loudly, when an upgrade of Quart, hypercorn or wsproto moves
something the patches rely on: read patches.py's notes before changing the pins.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from canvas_sync import patches
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import StreamClosed
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import ConnectionState
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits


def test_every_internal_the_patches_use_is_still_there() -> None:
    assert patches.missing_internals() == []


def test_the_check_notices_a_missing_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    from quart.asgi import ASGIWebsocketConnection
    from wsproto.extensions import PerMessageDeflate

    monkeypatch.delattr(ASGIWebsocketConnection, "_create_websocket_from_scope")
    monkeypatch.delattr(PerMessageDeflate, "_parse_params")
    assert patches.missing_internals() == [
        "quart.asgi.ASGIWebsocketConnection._create_websocket_from_scope",
        "wsproto.extensions.PerMessageDeflate._parse_params",
    ]


def test_the_installed_versions_are_the_ones_the_patches_were_checked_against() -> None:
    assert patches.unchecked_versions() == [], "re-read patches.py against the new versions, then update CHECKED"


def test_compression_is_swapped_in_and_out_of_hypercorn() -> None:
    original, bits, limit = (
        ws_stream.PerMessageDeflate,
        patches.BoundedDeflate.window_bits,
        patches.BoundedDeflate.max_message,
    )
    try:
        patches.set_websocket_compression(False)
        assert ws_stream.PerMessageDeflate is patches.DeclineDeflate
        assert patches.DeclineDeflate().accept("permessage-deflate") is None
        patches.set_websocket_compression(True, max_message_bytes=1000, window_bits=11)
        assert ws_stream.PerMessageDeflate is patches.BoundedDeflate
    finally:
        ws_stream.PerMessageDeflate = original  # type: ignore[misc]
        patches.BoundedDeflate.window_bits, patches.BoundedDeflate.max_message = bits, limit


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", "server_max_window_bits=11"),
        ("permessage-deflate; client_max_window_bits", "client_max_window_bits=11; server_max_window_bits=11"),
        ("permessage-deflate; server_max_window_bits=10", "server_max_window_bits=10"),
        ("permessage-deflate; client_no_context_takeover", "server_max_window_bits=11"),
    ],
)
def test_the_answer_names_our_window_and_no_context_takeover(
    offer: str, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches.BoundedDeflate, "window_bits", 11)
    deflate = patches.BoundedDeflate()
    assert deflate.accept(offer) == f"client_no_context_takeover; server_no_context_takeover; {answer}"
    assert deflate._compressor is None and deflate._decompressor is None  # an idle connection keeps no zlib state


def test_a_message_compresses_to_the_same_bytes_on_every_socket() -> None:
    """No context takeover: a broadcast is compressed once (``DirectSocket.write``), and no
    compressor outlives its message."""
    plain, big = RsvBits(False, False, False), ("{" + '"id":"o","x":1,' * 2000 + "}").encode()
    frames = []
    for _ in range(3):
        deflate = patches.BoundedDeflate()
        deflate.accept("permessage-deflate")
        proto = FrameProtocol(client=False, extensions=[deflate])
        frames.append(deflate.frame_outbound(proto, Opcode.TEXT, plain, big, True))
        frames.append(deflate.frame_outbound(proto, Opcode.TEXT, plain, big, True))  # after a message: the same
        assert deflate._compressor is None
    assert all(f == frames[0] for f in frames) and frames[0][0].rsv1 and len(frames[0][1]) < len(big) / 20


def test_inflation_stops_one_byte_past_the_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patches.BoundedDeflate, "max_message", 1000)
    monkeypatch.setattr(patches.BoundedDeflate, "window_bits", 15)
    deflate = patches.BoundedDeflate()
    deflate.accept("permessage-deflate")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * 1_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    deflate._inbound_compressed, deflate._inbound_is_compressible = True, True
    deflate._decompressor = zlib.decompressobj(-15)
    out = deflate.frame_inbound_payload_data(None, bomb)
    assert isinstance(out, bytes) and len(out) == 1001  # hypercorn sees one byte too many: 1009
    assert deflate.frame_inbound_payload_data(None, bomb) == b""  # the rest is never inflated


@pytest.mark.parametrize("text", ["", "a", "x" * 125, "x" * 126, "x" * 65535, "x" * 65536, "é" * 70])
def test_a_text_frame_is_the_bytes_wsproto_sends(text: str) -> None:
    assert patches.text_frame(text.encode()) == FrameProtocol(client=False, extensions=[]).send_data(text)


def test_small_messages_go_uncompressed_and_a_client_reads_the_mixed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 7692 lets each message choose; the client's inflater only sees the compressed ones,
    so frames written past wsproto (``DirectSocket.write``) can sit between them."""
    monkeypatch.setattr(patches.BoundedDeflate, "min_bytes", 512)
    server_deflate = patches.BoundedDeflate()
    answer = server_deflate.accept("permessage-deflate")
    client_deflate = PerMessageDeflate()
    client_deflate.finalize(f"permessage-deflate; {answer}")  # as the header reads
    server = FrameProtocol(client=False, extensions=[server_deflate])
    reader = FrameProtocol(client=True, extensions=[client_deflate])
    small = '{"op":"upsert","object":{"id":"a","x":1}}'
    big = '{"objects":[' + ",".join(['{"id":"o","x":1}'] * 200) + "]}"
    wire = [server.send_data(big), server.send_data(small), patches.text_frame(small.encode())]
    plain = RsvBits(False, False, False)  # as DirectSocket.write compresses, once for every socket
    _, ours = server_deflate.frame_outbound(server, Opcode.TEXT, plain, big.encode(), True)
    wire += [patches.text_frame(ours, compressed=True), server.send_data(big)]
    assert [frame[0] for frame in wire] == [0xC1, 0x81, 0x81, 0xC1, 0xC1]  # RSV1: compressed or not
    assert len(wire[0]) < len(big) / 5
    for frame in wire:
        reader.receive_bytes(bytes(frame))
    assert [f.payload for f in reader.received_frames()] == [big, small, small, big, big]


def _deflate_pair(max_message: int = 65536) -> tuple[patches.BoundedDeflate, FrameProtocol, FrameProtocol]:
    """A server's deflate, the server's frame decoder, and a client that compresses everything."""
    server_deflate = patches.BoundedDeflate()
    server_deflate.max_message = max_message
    answer = server_deflate.accept("permessage-deflate")
    client_deflate = PerMessageDeflate()
    client_deflate.finalize(f"permessage-deflate; {answer}")  # as the header reads
    client = FrameProtocol(client=True, extensions=[client_deflate])
    return server_deflate, FrameProtocol(client=False, extensions=[server_deflate]), client


def test_the_tap_inflates_what_a_browser_compresses_and_wsproto_reads_on_from_there() -> None:
    deflate, server, client = _deflate_pair()
    edits = [f'{{"op":"update","id":"o","props":{{"x":{n}}}}}' for n in range(3)]
    data = b"".join(bytes(client.send_data(e)) for e in edits)
    assert data[0] == 0xC1
    assert [t for _, t in patches.text_frames(data, 65536, deflate.inflate)] == edits
    assert list(patches.text_frames(data, 65536)) == []  # without inflate: wsproto's
    server.receive_bytes(bytes(client.send_data("after")))  # the window moved on with the tap
    assert [f.payload for f in server.received_frames()] == ["after"]


@pytest.mark.parametrize("bad", ["corrupt", "too big", "not utf-8"])
def test_a_message_the_tap_cannot_inflate_is_left_to_wsproto_and_the_next_one_inflates(bad: str) -> None:
    deflate, _, client = _deflate_pair(max_message=1000)
    if bad == "too big":
        frame = bytes(client.send_data("x" * 2000))
    elif bad == "not utf-8":
        frame = bytes(client.send_data(b"\xc3\x28"))
        frame = bytes([0xC1]) + frame[1:]  # as if a text frame
    else:
        spoilt = bytearray(client.send_data("spoilt"))
        spoilt[-1] ^= 0xFF
        frame = bytes(spoilt)
    assert list(patches.text_frames(frame, 1000, deflate.inflate)) == []  # wsproto's, which closes
    good = bytes(client.send_data("next"))
    assert [t for _, t in patches.text_frames(good, 1000, deflate.inflate)] == ["next"]


def _stream(state: object, peer: object) -> SimpleNamespace:
    """What hypercorn's WSStream.handle reads and writes on a StreamClosed."""
    return SimpleNamespace(
        closed=False, app_put=None, state=state, connection=SimpleNamespace(state=peer), scope={"path": "/ws/p"}
    )


@pytest.mark.parametrize(
    ("state", "peer", "dropped"),
    [
        (ws_stream.ASGIWebsocketState.CONNECTED, ConnectionState.OPEN, True),  # gone without a close frame
        (ws_stream.ASGIWebsocketState.CONNECTED, ConnectionState.CLOSED, False),  # the client closed
        (ws_stream.ASGIWebsocketState.CLOSED, ConnectionState.LOCAL_CLOSING, False),  # we closed
    ],
)
def test_a_closed_stream_stops_its_pings_at_once_and_a_drop_is_one_info_line(
    state: object, peer: object, dropped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """hypercorn's ping task sleeps out its interval (20 s) after the close, and a shutdown
    in that window made Python 3.11 log the cancelled connection as an ERROR."""
    stream = _stream(state, peer)

    async def main() -> bool:
        pings = asyncio.create_task(patches._send_pings(stream))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        with caplog.at_level(logging.INFO, logger="canvas_sync.patches"):
            await patches._handle(stream, StreamClosed(stream_id=1))  # type: ignore[arg-type]
        await asyncio.gather(pings, return_exceptions=True)
        return pings.cancelled()

    stream._send_wsproto_event = lambda event: asyncio.sleep(0)
    stream.context = SimpleNamespace(sleep=asyncio.sleep)
    stream.config = SimpleNamespace(websocket_ping_interval=20.0)
    assert asyncio.run(asyncio.wait_for(main(), 2))
    assert stream.closed
    events = [r for r in caplog.records if getattr(r, "event", None) == "socket_dropped"]
    assert [(r.levelno, r.path) for r in events] == ([(logging.INFO, "/ws/p")] if dropped else [])  # type: ignore[attr-defined]


def test_the_ping_patch_is_put_in_place() -> None:
    handle, pings = ws_stream.WSStream.handle, ws_stream.WSStream._send_pings
    try:
        patches.stop_pings_on_close()
        assert ws_stream.WSStream.handle is patches._handle
        assert ws_stream.WSStream._send_pings is patches._send_pings
    finally:
        ws_stream.WSStream.handle, ws_stream.WSStream._send_pings = handle, pings  # type: ignore[method-assign]


def test_past_its_share_of_a_core_compression_waits_and_frames_go_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(patches.BoundedDeflate, "min_bytes", 512)
    monkeypatch.setattr(patches.BoundedDeflate, "share", 0.1)
    deflate = patches.BoundedDeflate()
    deflate.accept("permessage-deflate")
    server = FrameProtocol(client=False, extensions=[deflate])
    big = '{"objects":[' + ",".join(['{"id":"o","x":1}'] * 200) + "]}"
    monkeypatch.setattr(patches.BoundedDeflate, "_credit", -0.01)  # 10 ms spent beyond the budget
    monkeypatch.setattr(patches.BoundedDeflate, "_credited_at", time.monotonic())
    assert server.send_data(big)[0] == 0x81  # uncompressed: the budget is spent
    monkeypatch.setattr(patches.BoundedDeflate, "_credited_at", time.monotonic() - 1.0)  # a second at 10%
    assert server.send_data(big)[0] == 0xC1  # refilled: compressed, and charged
    assert patches.BoundedDeflate._credit < patches.BoundedDeflate.burst


def test_while_the_loop_runs_late_only_snapshots_are_compressed(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = [False]
    monkeypatch.setattr(patches.BoundedDeflate, "min_bytes", 512)
    monkeypatch.setattr(patches.BoundedDeflate, "busy", staticmethod(lambda: busy[0]))
    monkeypatch.setattr(patches.BoundedDeflate, "_credit", 1.0)
    deflate = patches.BoundedDeflate()
    deflate.accept("permessage-deflate")
    server = FrameProtocol(client=False, extensions=[deflate])
    frame = "[" + ",".join(['{"op":"upsert","object":{"id":"o","x":1}}'] * 50) + "]"  # a busy board's frame
    snapshot = '{"objects":[' + ",".join(['{"id":"o","x":1}'] * 5000) + "]}"
    assert server.send_data(frame)[0] == 0xC1  # quiet: compressed
    busy[0] = True
    assert server.send_data(frame)[0] == 0x81  # busy: as it is
    assert server.send_data(snapshot)[0] == 0xC1  # but a snapshot still shrinks
    assert patches.BoundedDeflate.compresses(len(snapshot)) and not patches.BoundedDeflate.compresses(len(frame))


def _client_frames(*texts: str, **kwargs: Any) -> bytes:
    """What a client sends (masked), as wsproto's client side makes it."""
    client = FrameProtocol(client=True, extensions=[])
    return b"".join(bytes(client.send_data(text, **kwargs)) for text in texts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300) | st.sampled_from(["x" * 126, "é" * 70000, "y" * 65536]), max_size=4))
def test_whole_client_text_frames_come_back_as_sent(texts: list[str]) -> None:
    data = _client_frames(*texts)
    found = list(patches.text_frames(data, 1 << 20))
    assert [text for _, text in found] == texts
    assert (found[-1][0] if found else 0) == (len(data) if texts else 0)


@pytest.mark.parametrize(
    "other",
    [
        bytes(FrameProtocol(client=True, extensions=[]).ping(b"p")),  # a control frame
        _client_frames("half", fin=False),  # a fragment
        patches.text_frame(b"unmasked"),  # what only a server may send
        b"\xc1\x85" + bytes(9),  # RSV1: compressed
        b"\x81\x82\x00\x00\x00\x00\xc3\x28",  # invalid UTF-8
        _client_frames("x" * 2000),  # past the limit
    ],
)
def test_the_frames_stop_before_anything_that_is_wsprotos_to_read(other: bytes) -> None:
    head = _client_frames("a", "b")
    found = list(patches.text_frames(head + other + _client_frames("c"), 1000))
    assert found == [(len(_client_frames("a")), "a"), (len(head), "b")]  # not "c": it comes after


@pytest.mark.parametrize("cut", [1, 3, 7, 300])
def test_a_frame_not_all_there_yet_is_left_for_wsproto(cut: int) -> None:
    head = _client_frames("a")
    assert list(patches.text_frames(head + _client_frames("x" * 300)[:cut], 1000)) == [(len(head), "a")]


class _Between:
    """A socket for ReadTap: between messages as often as ``open`` says, then not."""

    def __init__(self, open: int) -> None:
        self.open, self.taken = open, []  # type: ignore[var-annotated]
        self.take = self._take

    def _take(self, text: str) -> None:
        self.taken.append(text)
        self.open -= 1

    def between_messages(self) -> bool:
        return self.open > 0

    def hold(self, future: object) -> None:
        raise AssertionError("nothing is held here")

    def abort(self) -> None:
        raise AssertionError("nothing fails here")


class _Inner(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


def test_a_frame_the_tap_does_not_take_is_not_inflated_and_wsproto_reads_it_with_the_same_window() -> None:
    deflate, server, client = _deflate_pair()
    edits = [f'{{"op":"update","id":"o1","props":{{"x":{n},"y":{n}}}}}' for n in (1, 22, 333)]
    data = b"".join(bytes(client.send_data(t)) for t in edits)  # each refers back to the one before
    socket, inner = _Between(open=1), _Inner()
    patches.ReadTap(inner, socket, 65536, deflate).data_received(data)  # type: ignore[arg-type]
    assert socket.taken == edits[:1]
    server.receive_bytes(inner.data)  # the rest, as it came, for wsproto
    assert [f.payload for f in server.received_frames()] == edits[1:]
