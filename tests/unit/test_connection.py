"""One socket's sending: the end-of-turn flush, the writer for what must wait, order, v2
frames, gathering, closing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from canvas_sync.connection import GOING_AWAY, SLOW_CLIENT, Connection
from canvas_sync.lag import LoopLag


class Socket:
    """What the writer sent: frames, and the close code. ``direct``: it takes frames at once
    (``write``), as the service's socket does while its transport keeps up."""

    def __init__(self, delay: float = 0.0, direct: bool = False) -> None:
        self.frames: list[str] = []
        self.written: list[str] = []
        """The frames that went out through ``write``, not ``send``."""
        self.closed: int | None = None
        self.delay = delay
        self.direct = direct

    async def send(self, text: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.frames.append(text)

    def write(self, text: str) -> bool:
        if self.direct:
            self.frames.append(text)
            self.written.append(text)
        return self.direct

    async def close(self, code: int, reason: str) -> None:
        self.closed = code


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(conn: Connection, socket: Socket, body: Any) -> None:
    async def main() -> None:
        writer = asyncio.create_task(conn.pump(socket))
        await _settle()
        await body()
        await _settle()
        if not writer.done():
            writer.cancel()

    asyncio.run(main())


def test_what_waited_goes_out_in_order_with_a_newer_state_in_an_older_ones_place() -> None:
    conn, socket = Connection(16), Socket()  # a v1 socket that cannot take frames at once: the writer

    async def body() -> None:
        conn.send('{"n":1}', "a", latest=True)
        conn.send('{"n":2}')
        conn.send('{"n":3}', "a", latest=True)  # replaces n=1 where it waits
        await _settle()

    run(conn, socket, body)
    assert socket.frames == ['{"n":3}', '{"n":2}']


def test_a_v2_socket_gets_what_waited_as_one_frame() -> None:
    conn, socket = Connection(16, batched=True), Socket()

    async def body() -> None:
        for n in range(3):
            conn.send(f'{{"n":{n}}}')
        await _settle()
        conn.send('{"n":3}')  # alone: a plain message, not an array
        await _settle()

    run(conn, socket, body)
    assert [json.loads(f) for f in socket.frames] == [[{"n": 0}, {"n": 1}, {"n": 2}], {"n": 3}]


def test_a_busy_socket_gathers_for_the_send_interval() -> None:
    conn, socket = Connection(64, batched=True, send_interval=0.05), Socket()

    async def body() -> None:
        conn.send('{"n":0}')
        conn.send('{"n":1}')  # two at once: the next frame waits for the interval
        await _settle()
        for n in range(2, 6):
            conn.send(f'{{"n":{n}}}')
            await _settle()
        assert len(socket.frames) == 1  # still gathering
        await asyncio.sleep(0.1)

    run(conn, socket, body)
    assert [json.loads(f) for f in socket.frames] == [[{"n": 0}, {"n": 1}], [{"n": n} for n in range(2, 6)]]


def test_the_reply_goes_straight_out_only_when_nothing_waits_ahead_of_it() -> None:
    conn, socket = Connection(16), Socket(delay=0.01)

    async def body() -> None:
        await conn.reply(socket, "ack1")  # nothing queued: sent from the reader's task
        conn.send("upsert")
        await conn.reply(socket, "ack2")  # the writer has the upsert: the ack goes behind it
        await asyncio.sleep(0.05)

    run(conn, socket, body)
    assert socket.frames == ["ack1", "upsert", "ack2"]


def test_on_a_quiet_pod_what_came_in_one_turn_goes_out_at_its_end_without_waking_the_writer() -> None:
    conn, socket = Connection(16, batched=True, busy=lambda: False), Socket(direct=True)
    other = Connection(16, batched=True, busy=lambda: False, flush=conn._flush)
    other_socket = Socket(direct=True)

    async def body() -> None:
        other_writer = asyncio.create_task(other.pump(other_socket))
        await _settle()
        conn.send('{"n":0}')
        conn.send('{"n":1}')
        other.send('{"n":0}')
        assert socket.frames == []
        await asyncio.sleep(0)  # the end of the turn: one frame each, written straight out
        assert socket.written == ['[{"n":0},{"n":1}]'] and other_socket.written == ['{"n":0}']
        await conn.reply(socket, "ack")  # nothing waits: the ack goes straight out too
        assert socket.written[-1] == "ack"
        other_writer.cancel()

    run(conn, socket, body)


def test_on_a_busy_pod_a_socket_that_got_several_gathers_on_the_shared_timer_without_the_writer() -> None:
    conn, socket = Connection(16, batched=True, send_interval=0.05, busy=lambda: True), Socket(direct=True)
    other = Connection(16, batched=True, send_interval=0.05, busy=lambda: True, flush=conn._flush)
    other_socket = Socket(direct=True)

    async def body() -> None:
        other_writer = asyncio.create_task(other.pump(other_socket))
        await _settle()
        conn.send('{"n":0}')
        conn.send('{"n":1}')
        other.send('{"n":0}')
        await asyncio.sleep(0)  # the end of the turn: two at once for conn, so it gathers
        assert socket.written == ['[{"n":0},{"n":1}]'] and other_socket.written == ['{"n":0}']
        conn.send('{"n":2}')
        other.send('{"n":1}')  # one at a time: it does not gather
        conn.send('{"n":3}')
        await _settle()
        assert socket.written == ['[{"n":0},{"n":1}]'] and other_socket.written == ['{"n":0}', '{"n":1}']
        await asyncio.sleep(0.08)
        assert socket.written == ['[{"n":0},{"n":1}]', '[{"n":2},{"n":3}]']
        other_writer.cancel()

    run(conn, socket, body)
    assert socket.frames == socket.written  # nothing went through the writer


def test_a_crowded_turn_gathers_even_on_a_quiet_pod_but_an_answer_cuts_the_gathering_short() -> None:
    conn, socket = Connection(16, batched=True, send_interval=0.05, busy=lambda: False), Socket(direct=True)

    async def body() -> None:
        for n in range(4):  # CROWDED: more than it pays to send a frame each
            conn.send(f'{{"n":{n}}}')
        await asyncio.sleep(0)
        assert len(socket.written) == 1
        conn.send('{"n":4}')  # gathers
        await _settle()
        assert len(socket.written) == 1
        assert conn.answer(socket, "ack")  # queued behind n=4, and both go at the end of this turn
        await asyncio.sleep(0)
        assert socket.written[1:] == ['[{"n":4},ack]']

    run(conn, socket, body)


def test_a_quiet_pod_does_not_gather() -> None:
    conn, socket = Connection(16, batched=True, send_interval=0.05, busy=lambda: False), Socket(direct=True)

    async def body() -> None:
        conn.send('{"n":0}')
        conn.send('{"n":1}')
        await asyncio.sleep(0)
        conn.send('{"n":2}')
        await asyncio.sleep(0)
        assert socket.written == ['[{"n":0},{"n":1}]', '{"n":2}']

    run(conn, socket, body)


def test_a_direct_write_never_passes_a_frame_in_flight_or_one_waiting() -> None:
    conn, socket = Connection(16, busy=lambda: False), Socket(delay=0.02, direct=True)

    async def body() -> None:
        socket.direct = False
        conn.send("a")  # the writer sends it (slowly)
        await _settle()
        socket.direct = True
        conn.send("b")  # "a" is in flight: b waits for the writer
        conn.send("c")
        await conn.reply(socket, "ack")  # behind them too
        assert socket.frames == []
        await asyncio.sleep(0.1)

    run(conn, socket, body)
    assert socket.frames == ["a", "b", "c", "ack"]


def test_messages_that_come_while_the_writer_gathers_wait_for_its_next_frame() -> None:
    """Even when the loop has caught up meanwhile: the gathering writer owns the next frame."""
    busy = [True]
    conn = Connection(64, batched=True, send_interval=0.05, busy=lambda: busy[0])
    socket = Socket()  # it cannot take a frame at once: the writer sends it

    async def body() -> None:
        conn.send('{"n":0}')
        conn.send('{"n":1}')  # two: the writer's frame, then it gathers
        await _settle()
        busy[0], socket.direct = False, True
        conn.send('{"n":2}')
        await conn.reply(socket, '{"n":3}')
        assert len(socket.frames) == 1
        await asyncio.sleep(0.1)

    run(conn, socket, body)
    assert [json.loads(f) for f in socket.frames] == [[{"n": 0}, {"n": 1}], [{"n": 2}, {"n": 3}]]


def test_a_socket_that_stops_taking_frames_fills_the_outbox_and_is_closed_1013() -> None:
    """A backed-up transport refuses direct writes; then the outbox is the limit, as before."""
    conn, socket = Connection(2, busy=lambda: False), Socket(delay=1.0, direct=True)

    async def body() -> None:
        conn.send("0")
        await asyncio.sleep(0)
        assert socket.written == ["0"]
        socket.direct = False  # the client stopped reading: the writer takes over, and waits
        for n in range(1, 7):
            conn.send(str(n))
            await asyncio.sleep(0)
        await _settle()

    run(conn, socket, body)
    assert (socket.frames, conn.close_code) == (["0"], SLOW_CLIENT)  # "1" was still on its way


def test_closing_sends_what_waits_first_but_a_slow_client_gets_nothing_more() -> None:
    polite, socket = Connection(16), Socket()

    async def body() -> None:
        polite.send("a")
        polite.send("b")
        polite.close(GOING_AWAY)
        polite.send("c")  # after the close: dropped
        await _settle()

    run(polite, socket, body)
    assert (socket.frames, socket.closed) == (["a", "b"], GOING_AWAY)

    slow, socket = Connection(2), Socket()
    slowed: list[bool] = []
    slow.on_slow = lambda: slowed.append(True)

    async def overflow() -> None:
        for n in range(3):  # the third does not fit
            slow.send(str(n))
        await _settle()

    run(slow, socket, overflow)
    assert (socket.frames, socket.closed, slowed) == ([], SLOW_CLIENT, [True])


def test_a_quiet_pod_sends_at_once_and_a_busy_one_gathers() -> None:
    """Gathering waits send_interval after a frame of several messages, but only while busy."""

    async def frames(busy: bool) -> list[float]:
        conn = Connection(100, send_interval=0.2, batched=True, busy=lambda: busy)
        sent: list[float] = []

        class Sink:
            async def receive(self) -> None:
                return None

            async def send(self, text: str) -> None:
                sent.append(time.monotonic())

            def write(self, text: str) -> bool:
                return False

            async def close(self, code: int, reason: str) -> None:
                pass

        writer = asyncio.ensure_future(conn.pump(Sink()))
        conn.send("a")
        conn.send("b")  # two waiting: the first frame holds both
        await asyncio.sleep(0.01)
        conn.send("c")
        await asyncio.sleep(0.05)
        conn.close(1000)
        await asyncio.wait_for(writer, 1)
        return sent

    quiet = asyncio.run(frames(busy=False))
    assert len(quiet) >= 2 and quiet[1] - quiet[0] < 0.1  # "c" went out at once
    busy = asyncio.run(frames(busy=True))
    assert busy[1] - busy[0] >= 0.19  # "c" waited for the interval


def test_the_loop_lag_decays_and_a_zero_threshold_always_gathers() -> None:
    lag = LoopLag(0.002)
    assert not lag.busy()
    lag.observe(0.01)
    assert lag.busy()
    for _ in range(20):
        lag.observe(0.0)
    assert not lag.busy()
    assert LoopLag(0.0).busy()
