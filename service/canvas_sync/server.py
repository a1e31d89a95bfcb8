"""``canvas-sync serve``: one replica on hypercorn, with our own SIGTERM handling.

hypercorn would wait for open WebSockets on shutdown (and on Python 3.12+ ignores its own
graceful timeout, pgjones/hypercorn#308), so the signal goes to us: we stop being ready,
close every socket with 1001, flush, and only then let hypercorn stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import zlib
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HyperConfig
from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from .app import create_app
from .config import Settings
from .service import CanvasService

log = logging.getLogger(__name__)


class _DeclineDeflate(PerMessageDeflate):
    """permessage-deflate that turns every offer down (RFC 7692 lets a server decline)."""

    def accept(self, offer: str) -> None:
        return None


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates a message past ``max_message`` bytes.

    wsproto inflates a compressed frame whole before hypercorn counts its bytes, so a
    100 KiB frame of zeros could make the server allocate 100 MiB. Here each call inflates
    at most one byte more than the message may still hold; hypercorn sees that byte too
    many and closes with 1009, and what was left compressed is dropped, never inflated.
    """

    max_message = 65536
    window_bits = 15
    _inflated = 0
    _over = False

    def accept(self, offer: str) -> bool | str | None:
        """Accept with our window (RFC 7692 7.1.2: a server may always name
        ``server_max_window_bits``; ``client_max_window_bits`` only where the client offered it)."""
        client_bits, server_bits = self._parse_params(offer)
        try:
            self.server_max_window_bits = min(server_bits or self.window_bits, self.window_bits)
            if client_bits is not None:
                self.client_max_window_bits = min(client_bits, self.window_bits)
        except ValueError:  # a window smaller than deflate allows: decline compression
            return None
        parameters = [
            name for name in ("client_no_context_takeover", "server_no_context_takeover") if getattr(self, name)
        ]
        if client_bits is not None:
            parameters.append(f"client_max_window_bits={self.client_max_window_bits}")
        parameters.append(f"server_max_window_bits={self.server_max_window_bits}")
        if not self.server_no_context_takeover:  # else wsproto makes one per message (and frees it)
            # zlib's memory level follows the window (8 for 15 bits, 4 for 11): its hash
            # tables, not the window, are most of a compressor's memory. Made here, where
            # the snapshot would make it anyway, so that sending needs no hook of ours.
            bits = self.server_max_window_bits
            self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, bits - 7)
        self._enabled = True
        return "; ".join(parameters)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_complete(proto, fin)
        tail = self._inflate(b"\x00\x00\xff\xff")
        if self._over or self.client_no_context_takeover:
            self._decompressor = None  # a message too big leaves a window nobody may use
        self._inflated, self._over = 0, False
        self._inbound_compressed = None
        return tail

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self._over:
            return b""
        assert self._decompressor is not None
        room = self.max_message - self._inflated
        try:
            out = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message or self._decompressor.unconsumed_tail:
            self._over = True  # the byte too many goes out; the rest is never inflated
        return out


def set_websocket_compression(enabled: bool, max_message_bytes: int = 65536, window_bits: int = 15) -> None:
    """hypercorn offers permessage-deflate to every client and has no setting for it, so
    the extension it builds per handshake is swapped here (hypercorn >=0.17, checked by
    tests/test_app.py): declined, or accepted with inflation bounded by the message limit
    and windows of at most ``window_bits``."""
    _BoundedDeflate.max_message = max_message_bytes  # one replica per process: one limit
    _BoundedDeflate.window_bits = window_bits
    ws_stream.PerMessageDeflate = _BoundedDeflate if enabled else _DeclineDeflate  # type: ignore[misc]


def hypercorn_config(settings: Settings) -> HyperConfig:
    config = HyperConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.websocket_max_message_size = settings.max_message_bytes  # larger frames: close 1009
    config.websocket_ping_interval = 20.0  # find dead peers behind idle proxies
    config.graceful_timeout = 2.0  # our shutdown has already closed the sockets
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 when every dirty object was saved, else 1."""
    service = CanvasService(settings)
    app = create_app(service)
    set_websocket_compression(
        settings.websocket_compression, settings.max_message_bytes, settings.websocket_window_bits
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flushed = True

    async def shutdown_trigger() -> None:
        nonlocal flushed
        await stop.wait()
        log.info("shutdown requested", extra={"event": "shutdown"})
        flushed = await service.shutdown()

    log.info(
        "starting",
        extra={
            "event": "starting",
            "bind": f"{settings.host}:{settings.port}",
            "table": settings.table,
            "endpoint": settings.dynamodb_endpoint,
            "loop": type(loop).__module__,
        },
    )
    gc.collect()
    gc.freeze()  # what start-up built lives as long as the process: full collections skip it
    await hypercorn_serve(app, hypercorn_config(settings), shutdown_trigger=shutdown_trigger)
    log.info("stopped", extra={"event": "stopped", "flushed": flushed})
    return 0 if flushed else 1


def serve(settings: Settings) -> int:
    """Run on uvloop where installed (about 40% more round trips), else asyncio's loop."""
    loop_factory = None
    if settings.event_loop == "uvloop":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's event loop")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run(settings))
