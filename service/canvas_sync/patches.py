"""Every patch of a third-party internal, in one place, each with why and what it was
checked against.

The next upgrade of Quart, hypercorn or wsproto starts here: :func:`missing_internals`
lists what these patches rely on that the installed versions no longer have, and
``tests/unit/test_patches.py`` fails loudly when anything is missing or a version moved
past the ones in :data:`CHECKED` (pyproject.toml pins the same ranges).

- :class:`DirectSocket` (Quart 0.22): the WebSocket handler reads and writes hypercorn's
  ASGI channel itself, without Quart's receiving task, queue and per-send yield; and
  (hypercorn 0.17-0.18 over HTTP/1.1, wsproto 1.2-1.3) :meth:`DirectSocket.write` puts a
  frame straight on the connection's transport, past hypercorn's per-frame path; and
  :class:`ReadTap` (asyncio's ``StreamReaderProtocol``, wsproto 1.2-1.3's frame decoder)
  hands whole text frames from the transport to the handler as they arrive
  (:meth:`DirectSocket.listen`), past hypercorn's read task, wsproto and the app queue.
- :class:`BoundedDeflate` and :class:`DeclineDeflate` (wsproto 1.2-1.3, put in place of
  hypercorn's ``ws_stream.PerMessageDeflate``, hypercorn 0.17-0.18): permessage-deflate
  with inflation bounded by the message limit and a small window, small messages sent
  uncompressed, or declined.
- :func:`stop_pings_on_close` (hypercorn 0.17-0.18, ``ws_stream.WSStream``): a closed
  socket's ping task is cancelled at once instead of sleeping out its interval, and a
  socket the client dropped without a close frame logs one INFO line (``socket_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from importlib import metadata
from types import SimpleNamespace
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from quart.asgi import ASGIWebsocketConnection
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, MessageDecoder, Opcode, RsvBits

log = logging.getLogger(__name__)

CHECKED = {"quart": ("0.22",), "hypercorn": ("0.17", "0.18"), "wsproto": ("1.2", "1.3")}
"""Major.minor versions of each library whose internals these patches were read against."""

SOCKET = "canvas_sync.socket"
"""Where a WebSocket's scope holds its :class:`DirectSocket` (``websocket.scope[SOCKET]``)."""
_PLAIN = RsvBits(False, False, False)
CLOSE_TIMEOUT = 10.0
"""Seconds a closed socket's client has to answer the close before we stop listening."""
WRITE_BUFFER_LIMIT = 64 * 1024
"""Bytes the transport may hold unsent and still take a frame from :meth:`DirectSocket.write`
(asyncio's high-water mark): past it frames go hypercorn's way, which waits for the client."""


def text_frame(payload: bytes, compressed: bool = False) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2): what a server sends; ``compressed``:
    the payload is deflated (RSV1, RFC 7692)."""
    n, first = len(payload), 0xC1 if compressed else 0x81
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def text_frames(
    data: bytes, limit: int, inflate: Callable[[bytes], str | None] | None = None
) -> Iterator[tuple[int, str]]:
    """The whole text frames at the start of ``data`` as a client sends them (final,
    masked, valid UTF-8, at most ``limit`` bytes), each as the offset just past it and its
    text; it stops before anything else (a control frame, a fragment, an unmasked or
    oversized frame, bad UTF-8, a frame not all there yet), which is wsproto's to read,
    from that offset on. ``inflate``: the text of a compressed frame's payload (RSV1,
    permessage-deflate), or None to stop there; without it, compressed frames stop it. A
    compressed frame moves the window as it is read: ask for a frame only to take it."""
    at, size = 0, len(data)
    while size - at >= 6:
        first = data[at]
        if first != 0x81 and (first != 0xC1 or inflate is None):  # FIN, text; RSV1: compressed
            return
        length = data[at + 1] ^ 0x80  # the mask bit must be set: clear it
        if length > 127:  # it was not set
            return
        head = at + 2
        if length == 126:
            length, head = int.from_bytes(data[head : head + 2]), head + 2
        elif length == 127:
            length, head = int.from_bytes(data[head : head + 8]), head + 8
        end = head + 4 + length
        if length > limit or end > size:
            return
        key = (data[head : head + 4] * (length // 4 + 1))[:length]
        masked = int.from_bytes(data[head + 4 : end], "little")
        payload = (masked ^ int.from_bytes(key, "little")).to_bytes(length, "little")  # one XOR, not per byte
        if first == 0x81:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                return
        else:
            inflated = inflate(payload) if inflate is not None else None
            if inflated is None:
                return
            text = inflated
        at = end
        yield at, text


Take = Callable[[str], "asyncio.Future[Any] | None"]
"""What :meth:`DirectSocket.listen` hands each message to, in the read callback; it returns
None when the message is done, or a future the messages after it wait for."""


class ReadTap(asyncio.Protocol):
    """The transport's protocol in front of hypercorn's ``StreamReaderProtocol``: whole text
    frames go to the socket's handler as they arrive; everything else (and every frame
    that comes while hypercorn's side, or the handler, still holds an earlier one) goes on
    to hypercorn, as it came.

    Every message a client sent went through asyncio's stream reader, hypercorn's read
    task, its HTTP/1.1 and WebSocket layers, wsproto's frame and message decoders, the
    ASGI queue and the reader task: on many small boards, about a third of the server's
    CPU. A frame goes past them only between messages (:meth:`DirectSocket.between_messages`),
    so the order of what the client sent holds; wsproto never sees a frame cut in two.
    """

    def __init__(
        self, inner: asyncio.Protocol, socket: DirectSocket, limit: int, deflate: BoundedDeflate | None = None
    ) -> None:
        self._inner = inner
        self._socket = socket
        self._limit = limit
        self._inflate = deflate.inflate if deflate is not None else None

    def data_received(self, data: bytes) -> None:
        socket, at = self._socket, 0
        take = socket.take
        if take is not None:
            try:
                frames = text_frames(data, self._limit, self._inflate)
                while at < len(data) and socket.between_messages():  # before the next frame: it may inflate
                    found = next(frames, None)
                    if found is None:
                        break
                    at, text = found
                    held = take(text)
                    if held is not None:
                        socket.hold(held)
                        break
            except Exception:  # the reader task would have died of it: the socket goes too
                log.exception("a message failed in the read callback", extra={"event": "socket_error"})
                socket.take = None
                socket.abort()
                return
        if at < len(data):
            self._inner.data_received(data[at:] if at else data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class DirectSocket(ASGIWebsocketConnection):
    """Quart's WebSocket connection without its receiving task, its queue and its yield
    before every send.

    Quart reads hypercorn's channel in a task of its own, hands each message on through a
    queue, and sleeps(0) and fires a signal around every send: about a fifth of the CPU a
    bare parse-and-ack socket costs. Here the handshake, refusals and the accept stay
    Quart's; the handler then reads and writes the ASGI channel itself, through this
    object (``websocket.scope[SOCKET]``). It leans on Quart 0.22's internals (hence the
    pin in pyproject.toml); tests/system/test_app.py goes through every path of it.
    """

    _wire: tuple[Any, Any, asyncio.Lock, PerMessageDeflate | None] | None = None
    """hypercorn's stream, its connection's transport and send lock, and the permessage-deflate
    the client took (None: none); None: every frame goes through :meth:`send`."""
    take: Take | None = None
    """Where whole text frames go as they arrive (:meth:`listen`); None: the reader's way."""
    _reader: Any = None  # hypercorn's asyncio.StreamReader, while a ReadTap is in place
    _sides: tuple[Any, ...] = ()  # what between_messages reads (all made once per connection)
    _held: asyncio.Future[Any] | None = None  # a message taken early, not done yet
    _listening = False  # receive() waits for hypercorn's queue
    _last: tuple[str, bytes] = ("", b"")
    """The text framed last and its frame: a broadcast frames once for all the sockets it
    goes to. A tuple replaced whole, so any thread reads a matching pair."""
    _last_deflated: tuple[str, bytes] = ("", b"")
    """The same for sockets that took permessage-deflate, for messages that may be
    compressed (:attr:`BoundedDeflate.min_bytes` and more)."""

    async def __call__(self, receive: Any, send: Any) -> None:
        self._channel_receive, self._channel_send = receive, send
        self._gone = False
        self.queue = SimpleNamespace(get=self.receive)  # type: ignore[assignment]  # what Quart's websocket reads
        self.scope[SOCKET] = self  # type: ignore[literal-required]
        await self.handle_websocket(self._create_websocket_from_scope(send), send)
        if self._accepted and not self._gone:
            # hypercorn hands messages over through a queue of 10 and waits while it is
            # full: keep taking them until the client is gone, or the close handshake of
            # a socket we closed never completes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), CLOSE_TIMEOUT)

    async def _drain(self) -> None:
        while await self.receive() is not None:
            pass

    async def receive(self) -> str | bytes | None:
        """The next message; None once the client is gone."""
        while True:
            self._listening = True
            try:
                event = await self._channel_receive()
            finally:
                self._listening = False
            held = self._held
            if held is not None:  # taken before this one, in the read callback
                with contextlib.suppress(Exception):
                    await held
                self._held = None
            if event["type"] == "websocket.receive":
                return event.get("bytes") or event["text"]
            if event["type"] == "websocket.disconnect":
                self._closed = self._gone = True  # nothing left to close
                return None

    async def send(self, text: str) -> None:
        await self._channel_send({"type": "websocket.send", "text": text})

    def write(self, text: str) -> bool:
        """Put ``text`` on the wire now, as one frame, without awaiting; False when it must
        go through :meth:`send` instead (then nothing was written).

        hypercorn hands every frame through the ASGI send, the stream, wsproto, the HTTP/1.1
        protocol and a lock before it reaches the transport: on a small board that path
        was about a fifth of the server's CPU. The frame is the same bytes wsproto would
        make, and it goes only where nothing else can be in its way: an open HTTP/1.1
        WebSocket, no frame of hypercorn's being sent, the transport not backed up (past
        that, :meth:`send` waits for the client, and the outbox fills: 1013), and, when
        the client took permessage-deflate, a message that goes uncompressed anyway (small,
        or past the compression budget: :meth:`BoundedDeflate.frame_outbound`).
        """
        wire = self._wire
        if wire is None:
            wire = self._wire = self._find_wire()
            if wire is None:
                return False
        if not self._writable(wire):
            return False
        stream, transport, _, deflate = wire
        if deflate is not None and len(text) >= BoundedDeflate.min_bytes:
            last, frame = DirectSocket._last_deflated
            if text is not last:  # no context takeover: the same bytes for every deflate socket
                proto = stream.connection._proto
                rsv, payload = deflate.frame_outbound(proto, Opcode.TEXT, _PLAIN, text.encode(), True)
                frame = text_frame(payload, compressed=rsv.rsv1)  # as it is where it did not pay
                DirectSocket._last_deflated = (text, frame)
            transport.write(frame)
            return True
        last, frame = DirectSocket._last
        if text is not last:
            frame = text_frame(text.encode())
            DirectSocket._last = (text, frame)
        transport.write(frame)
        return True

    @staticmethod
    def _writable(wire: tuple[Any, Any, asyncio.Lock, PerMessageDeflate | None]) -> bool:
        """Open on both sides, no frame of hypercorn's being sent, the transport not backed up."""
        stream, transport, lock, _ = wire
        return not (
            stream.closed
            or stream.state is not ws_stream.ASGIWebsocketState.CONNECTED
            or stream.connection.state is not ConnectionState.OPEN
            or lock.locked()
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT
        )

    def listen(self, take: Take | None) -> bool:
        """Hand whole text frames to ``take`` as they arrive, in the transport's read
        callback (:class:`ReadTap`), where that keeps their order; None: every message goes
        to :meth:`receive` again. False where hypercorn's objects are not the ones this was
        read against (HTTP/2, another worker, a read timeout): then :meth:`receive` has all."""
        self.take = take
        if take is None or self._reader is not None:
            return self._reader is not None
        found = self._find_reader()
        if found is None:
            self.take = None
            return False
        self._reader, inner, transport, limit = found
        stream = self._wire[0] if self._wire else None
        assert stream is not None
        proto = stream.connection._proto
        queue = self._channel_receive.__self__
        self._sides = (self._reader, queue, stream.buffer, stream.connection._events, proto._frame_decoder)
        self._sides += (proto._frame_decoder.buffer, proto._message_decoder)
        deflate = self._wire[3] if self._wire else None
        transport.set_protocol(ReadTap(inner, self, limit, deflate if isinstance(deflate, BoundedDeflate) else None))
        return True

    def _find_reader(self) -> tuple[asyncio.StreamReader, asyncio.StreamReaderProtocol, Any, int] | None:
        """hypercorn's stream reader behind this socket, the transport's protocol that feeds
        it, the transport and the message limit; None where they are not the ones
        :class:`ReadTap` was read against."""
        wire = self._wire = self._wire or self._find_wire()
        if wire is None:
            return None
        http = getattr(wire[0].send, "__self__", None)
        server = getattr(getattr(http, "send", None), "__self__", None)
        reader, config, transport = getattr(server, "reader", None), getattr(server, "config", None), wire[1]
        inner = transport.get_protocol() if callable(getattr(transport, "set_protocol", None)) else None
        if (
            not isinstance(reader, asyncio.StreamReader)
            or not isinstance(inner, asyncio.StreamReaderProtocol)
            or not isinstance(getattr(http, "connection", None), H11WSConnection)
            or not isinstance(getattr(self._channel_receive, "__self__", None), asyncio.Queue)
            or getattr(config, "read_timeout", 0) is not None  # hypercorn's read would time out
        ):
            return None
        return reader, inner, transport, int(getattr(config, "websocket_max_message_size", 0))

    def between_messages(self) -> bool:
        """Nothing the client sent is on its way through hypercorn, wsproto or the queue,
        or being handled, and an answer can be written at once: a frame that arrives now
        may be handled now without passing one sent before it."""
        if not self._listening or not self._sides:
            return False
        reader, queue, buffered, events, frames, framed, message = self._sides
        held, waiter = self._held, reader._waiter
        return (
            (held is None or held.done())
            and waiter is not None  # hypercorn's read task waits for data, all before it handled
            and not waiter.done()
            and not reader._buffer
            and queue.empty()  # the reader task has had every message hypercorn handed on
            and buffered.value is None  # no fragmented message half read
            and not events
            and not framed.buffer  # wsproto at a frame boundary, in no message
            and frames.header is None
            and frames.effective_opcode is None
            and message.opcode is None
            and self._writable(self._wire)  # type: ignore[arg-type]
        )

    def hold(self, future: asyncio.Future[Any]) -> None:
        """A message was taken with ``future`` still to finish: the next waits for it."""
        self._held = future

    def abort(self) -> None:
        if self._wire is not None:
            self._wire[1].abort()

    def _find_wire(self) -> tuple[Any, Any, asyncio.Lock, PerMessageDeflate | None] | None:
        """hypercorn's objects behind this socket, or None where they are not the ones
        :meth:`write` was read against (HTTP/2, another worker class, not yet accepted)."""
        stream = getattr(self._channel_send, "__self__", None)
        if not isinstance(stream, ws_stream.WSStream) or stream.state is not ws_stream.ASGIWebsocketState.CONNECTED:
            return None
        http = getattr(stream.send, "__self__", None)
        server = getattr(getattr(http, "send", None), "__self__", None)
        writer = getattr(server, "writer", None)
        lock = getattr(server, "send_lock", None)
        transport = getattr(writer, "transport", None)
        frames = getattr(getattr(stream, "connection", None), "_proto", None)
        if not isinstance(lock, asyncio.Lock) or frames is None:
            return None
        needed = ("write", "is_closing", "get_write_buffer_size")  # uvloop's are no asyncio.WriteTransport
        if not all(callable(getattr(transport, name, None)) for name in needed):
            return None
        deflate = next((e for e in frames.extensions if isinstance(e, PerMessageDeflate) and e.enabled()), None)
        return stream, transport, lock, deflate

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            await self.close_connection(self._channel_send, code, reason)


class DeclineDeflate(PerMessageDeflate):
    """permessage-deflate that turns every offer down (RFC 7692 lets a server decline)."""

    def accept(self, offer: str) -> None:
        return None


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates a message past ``max_message`` bytes.

    wsproto inflates a compressed frame whole before hypercorn counts its bytes, so a
    100 KiB frame of zeros could make the server allocate 100 MiB. Here each call inflates
    at most one byte more than the message may still hold; hypercorn sees that byte too
    many and closes with 1009, and what was left compressed is dropped, never inflated.
    """

    max_message = 65536
    window_bits = 15
    min_bytes = 16384
    """Messages shorter than this go uncompressed (RFC 7692 lets each message choose): on a
    message of a few hundred bytes zlib saves a hundred bytes for more CPU than the
    message's whole handling, and a big board's frames of a few KB, compressed for every
    socket on its own, cost it a quarter of its clients (``CANVAS_WEBSOCKET_COMPRESS_MIN_BYTES``)."""
    share = 0.1
    """Of one core, the most compressing may take; frames past it go uncompressed. On a big
    board every socket's frame is compressed on its own: 128 clients dragging 20 times a
    second made 30 MB a second to compress, a third of a core, and at 256 more than the core
    had; bytes cost less than being late. Snapshots, one at a time, fit in the burst."""
    burst = 0.005
    """Seconds of compressing that may come at once after a quiet spell: a big snapshot still
    goes whole (the budget runs into debt), but a turn of many sockets' frames cannot stall
    the loop for long."""
    busy: Callable[[], bool] = staticmethod(lambda: False)
    """Whether the event loop runs late (``lag.LoopLag.busy``): then CPU is what the pod is
    short of, and only messages of :attr:`busy_min_bytes` and more are compressed."""
    busy_min_bytes = 65536
    """While :attr:`busy`: big snapshots still shrink tenfold; what is smaller goes as it is,
    since the core is what a late loop is short of."""
    _credit = 0.005  # seconds it may still spend: the process's, kept by the event loop
    _credited_at = 0.0
    _inflated = 0
    _over = False

    def accept(self, offer: str) -> bool | str | None:
        """Accept with our window and no context takeover either way (RFC 7692 7.1.1: a
        server may always answer with both, and with ``server_max_window_bits``;
        ``client_max_window_bits`` only where the client offered it).

        Without context takeover no connection keeps a zlib state between messages: an
        idle deflate connection costs what an uncompressed one does (the compressor was
        most of the 23 KB between them), a message's compressed frame is the same bytes for
        every socket (:meth:`DirectSocket.write` compresses a broadcast once), and Node's
        ``ws`` leaves messages under its 1 KiB threshold uncompressed (with takeover it
        compresses every one, through its thread pool). Browsers still compress every
        message: each is inflated on a fresh window, about a microsecond."""
        client_bits, server_bits = self._parse_params(offer)
        try:
            self.server_max_window_bits = min(server_bits or self.window_bits, self.window_bits)
            if client_bits is not None:
                self.client_max_window_bits = min(client_bits, self.window_bits)
        except ValueError:  # a window smaller than deflate allows: decline compression
            return None
        self.client_no_context_takeover = self.server_no_context_takeover = True
        parameters = ["client_no_context_takeover", "server_no_context_takeover"]
        if client_bits is not None:
            parameters.append(f"client_max_window_bits={self.client_max_window_bits}")
        parameters.append(f"server_max_window_bits={self.server_max_window_bits}")
        self._enabled = True
        return "; ".join(parameters)

    def frame_outbound(self, proto: Any, opcode: Opcode, rsv: RsvBits, data: bytes, fin: bool) -> tuple[RsvBits, bytes]:
        if fin and opcode is not Opcode.CONTINUATION and not self.compresses(len(data)):
            return rsv, data  # a whole message, small or past the budget: RSV1 clear, as it is
        started = time.perf_counter()
        if self._compressor is None and opcode is not Opcode.CONTINUATION:
            # zlib's memory level follows the window (8 for 15 bits, 4 for 11): its hash
            # tables, not the window, are most of a compressor's memory; wsproto would
            # take 8 whatever the window. It lives for one message (no context takeover).
            bits = self.server_max_window_bits
            self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, bits - 7)
        try:
            return super().frame_outbound(proto, opcode, rsv, data, fin)
        finally:
            BoundedDeflate._credit -= time.perf_counter() - started

    @classmethod
    def compresses(cls, size: int) -> bool:
        """Whether a whole message of ``size`` bytes is compressed now."""
        return size >= (cls.busy_min_bytes if cls.busy() else cls.min_bytes) and cls.affords()

    @classmethod
    def affords(cls) -> bool:
        """Whether compressing stays within :attr:`share` of a core (a token bucket of seconds)."""
        now = time.monotonic()
        cls._credit = min(cls.burst, cls._credit + (now - cls._credited_at) * cls.share)
        cls._credited_at = now
        return cls._credit > 0

    def inflate(self, payload: bytes) -> str | None:
        """The text of one whole compressed message a client sent, at most
        :attr:`max_message` bytes of valid UTF-8, inflated on a window of its own (no context
        takeover, :meth:`accept`); None: it is wsproto's to read (``ReadTap``), which closes.
        Browsers compress every message they send."""
        window = zlib.decompressobj(-int(self.client_max_window_bits))
        try:
            out = window.decompress(payload + b"\x00\x00\xff\xff", self.max_message + 1)
            text = out.decode()
        except (zlib.error, UnicodeDecodeError):
            return None
        if len(out) > self.max_message or window.unconsumed_tail:
            return None
        return text

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_complete(proto, fin)
        tail = self._inflate(b"\x00\x00\xff\xff")
        self._decompressor = None  # no context takeover (and a message too big leaves a window nobody may use)
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


def set_websocket_compression(
    enabled: bool,
    max_message_bytes: int = 65536,
    window_bits: int = 15,
    min_bytes: int = 16384,
    share: float = 0.1,
    busy: Callable[[], bool] = lambda: False,
) -> None:
    """hypercorn offers permessage-deflate to every client and has no setting for it, so
    the extension it builds per handshake is swapped here (hypercorn 0.17-0.18, see
    :data:`CHECKED`): declined, or accepted with inflation bounded by the message limit,
    windows of at most ``window_bits``, and messages under ``min_bytes`` (under
    :attr:`BoundedDeflate.busy_min_bytes` while ``busy``), or past ``share`` of a core spent
    compressing, uncompressed."""
    BoundedDeflate.max_message = max_message_bytes  # one replica per process: one limit
    BoundedDeflate.window_bits = window_bits
    BoundedDeflate.min_bytes = min_bytes
    BoundedDeflate.share = share
    BoundedDeflate.busy = staticmethod(busy)
    ws_stream.PerMessageDeflate = BoundedDeflate if enabled else DeclineDeflate  # type: ignore[misc]


_HYPERCORN_HANDLE = ws_stream.WSStream.handle
_HYPERCORN_PINGS = ws_stream.WSStream._send_pings
_PING_TASK = "_canvas_ping_task"


async def _send_pings(stream: ws_stream.WSStream) -> None:
    """hypercorn's ping loop, its task remembered so that the close can cancel it."""
    setattr(stream, _PING_TASK, asyncio.current_task())
    await _HYPERCORN_PINGS(stream)


async def _handle(stream: ws_stream.WSStream, event: Event) -> None:
    """hypercorn's event handling; on the stream's close, a note of a dropped socket and
    the end of its ping task."""
    if isinstance(event, StreamClosed) and not stream.closed and _dropped(stream):
        log.info(
            "client dropped the socket without a close frame",
            extra={"event": "socket_dropped", "path": stream.scope.get("path")},
        )
    await _HYPERCORN_HANDLE(stream, event)
    if stream.closed:
        pings = getattr(stream, _PING_TASK, None)
        if pings is not None and not pings.done() and pings is not asyncio.current_task():
            pings.cancel()


def _dropped(stream: ws_stream.WSStream) -> bool:
    """Open on both sides when the connection ended: no close frame came or went."""
    return bool(
        stream.state == ws_stream.ASGIWebsocketState.CONNECTED and stream.connection.state == ConnectionState.OPEN
    )


def stop_pings_on_close() -> None:
    """hypercorn's ping task (``websocket_ping_interval``) checks ``closed`` only between
    sleeps, so a closed socket's connection task lives on for up to the interval (20 s). A
    shutdown in that window cancels it, and Python 3.11's asyncio logs each cancelled
    connection as an ERROR with a CancelledError traceback: under churn, one per socket a
    client dropped. Cancelling the ping task as the stream closes ends the connection at once
    (hypercorn 0.17-0.18, see :data:`CHECKED`)."""
    ws_stream.WSStream.handle = _handle  # type: ignore[method-assign,assignment]
    ws_stream.WSStream._send_pings = _send_pings  # type: ignore[method-assign,assignment]


_QUART_INTERNALS = ("_create_websocket_from_scope", "handle_websocket", "close_connection", "_accepted", "_closed")
_DEFLATE_INTERNALS = (
    "_parse_params",
    "_compressor",
    "_decompressor",
    "_enabled",
    "_inbound_compressed",
    "_inbound_is_compressible",
    "frame_inbound_payload_data",
    "frame_inbound_complete",
    "server_max_window_bits",
    "client_max_window_bits",
    "client_no_context_takeover",
    "server_no_context_takeover",
)


def missing_internals() -> list[str]:
    """What the patches above rely on that the installed libraries lack (empty: all there)."""
    missing = []
    probe = ASGIWebsocketConnection.__new__(ASGIWebsocketConnection)
    with contextlib.suppress(Exception):
        ASGIWebsocketConnection.__init__(probe, None, {})  # type: ignore[arg-type,typeddict-item]
    for name in _QUART_INTERNALS:
        if not hasattr(probe, name):
            missing.append(f"quart.asgi.ASGIWebsocketConnection.{name}")
    if list(inspect.signature(ASGIWebsocketConnection.close_connection).parameters) != [
        "self",
        "send",
        "code",
        "reason",
    ]:
        missing.append("quart.asgi.ASGIWebsocketConnection.close_connection(send, code, reason)")
    deflate = PerMessageDeflate()
    for name in _DEFLATE_INTERNALS:
        if not hasattr(deflate, name):
            missing.append(f"wsproto.extensions.PerMessageDeflate.{name}")
    if not isinstance(getattr(ws_stream, "PerMessageDeflate", None), type):
        missing.append("hypercorn.protocol.ws_stream.PerMessageDeflate")
    init = inspect.getsource(ws_stream.WSStream.__init__)
    for name in ("closed", "state", "scope", "send"):
        if f"self.{name}" not in init:
            missing.append(f"hypercorn.protocol.ws_stream.WSStream.{name}")
    if "self.connection" not in inspect.getsource(ws_stream.WSStream._accept):
        missing.append("hypercorn.protocol.ws_stream.WSStream.connection")
    wire = (  # what DirectSocket.write reaches: stream -> HTTP/1.1 protocol -> TCP server -> transport
        (H11Protocol.__init__, "self.send", "hypercorn.protocol.h11.H11Protocol.send"),
        (TCPServer.__init__, "self.writer", "hypercorn.asyncio.tcp_server.TCPServer.writer"),
        (TCPServer.__init__, "self.send_lock", "hypercorn.asyncio.tcp_server.TCPServer.send_lock"),
        (WSConnection.__init__, "self._proto", "wsproto.connection.Connection._proto"),
        (FrameProtocol.__init__, "self.extensions", "wsproto.frame_protocol.FrameProtocol.extensions"),
        # what ReadTap and DirectSocket.between_messages read: hypercorn's side holds nothing
        (TCPServer.__init__, "self.reader", "hypercorn.asyncio.tcp_server.TCPServer.reader"),
        (TCPServer.__init__, "self.config", "hypercorn.asyncio.tcp_server.TCPServer.config"),
        (ws_stream.WSStream.__init__, "self.buffer", "hypercorn.protocol.ws_stream.WSStream.buffer"),
        (ws_stream.WebsocketBuffer.__init__, "self.value", "hypercorn.protocol.ws_stream.WebsocketBuffer.value"),
        (H11WSConnection.__init__, "self.buffer", "hypercorn.protocol.h11.H11WSConnection.buffer"),
        (asyncio.StreamReader.__init__, "self._waiter", "asyncio.StreamReader._waiter"),
        (asyncio.StreamReader.__init__, "self._buffer", "asyncio.StreamReader._buffer"),
        (WSConnection.__init__, "self._events", "wsproto.connection.Connection._events"),
        (FrameProtocol.__init__, "self._frame_decoder", "wsproto.frame_protocol.FrameProtocol._frame_decoder"),
        (FrameProtocol.__init__, "self._message_decoder", "wsproto.frame_protocol.FrameProtocol._message_decoder"),
        (FrameDecoder.__init__, "self.buffer", "wsproto.frame_protocol.FrameDecoder.buffer"),
        (FrameDecoder.__init__, "self.header", "wsproto.frame_protocol.FrameDecoder.header"),
        (FrameDecoder.__init__, "self.effective_opcode", "wsproto.frame_protocol.FrameDecoder.effective_opcode"),
        (MessageDecoder.__init__, "self.opcode", "wsproto.frame_protocol.MessageDecoder.opcode"),
    )
    for function, assignment, name in wire:
        if assignment not in inspect.getsource(function):
            missing.append(name)
    for name in ("handle", "_send_pings", "_send_wsproto_event"):
        if not callable(getattr(ws_stream.WSStream, name, None)):
            missing.append(f"hypercorn.protocol.ws_stream.WSStream.{name}")
    if not hasattr(ws_stream, "ASGIWebsocketState") or "CONNECTED" not in ws_stream.ASGIWebsocketState.__members__:
        missing.append("hypercorn.protocol.ws_stream.ASGIWebsocketState.CONNECTED")
    return missing


def unchecked_versions() -> list[str]:
    """Installed versions newer (or older) than the ones :data:`CHECKED` names."""
    out = []
    for package, versions in CHECKED.items():
        installed = metadata.version(package)
        if ".".join(installed.split(".")[:2]) not in versions:
            out.append(f"{package} {installed} (checked: {', '.join(versions)})")
    return out
