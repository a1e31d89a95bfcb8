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

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HyperConfig

from .app import create_app
from .config import Settings
from .patches import set_websocket_compression, stop_pings_on_close
from .wiring import build

log = logging.getLogger(__name__)


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
    service = build(settings)
    app = create_app(service)
    set_websocket_compression(
        settings.websocket_compression,
        settings.max_message_bytes,
        settings.websocket_window_bits,
        settings.websocket_compress_min_bytes,
        settings.websocket_compress_share,
        busy=service.lag.busy,
    )
    stop_pings_on_close()
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
