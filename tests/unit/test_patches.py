"""The patches of third-party internals (patches.py) still fit the installed libraries.

This fails first, and loudly, when an upgrade of Quart, hypercorn or wsproto moves
something the patches rely on: read patches.py's notes before changing the pins.
"""

from __future__ import annotations

import zlib

import pytest
from canvas_sync import patches
from hypercorn.protocol import ws_stream


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
    ],
)
def test_the_answer_names_our_window(offer: str, answer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patches.BoundedDeflate, "window_bits", 11)
    deflate = patches.BoundedDeflate()
    assert deflate.accept(offer) == answer


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
