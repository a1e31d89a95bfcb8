"""A project's gathering: broadcasts kept once for the sockets that gather, each of which
still gets exactly what it would have had from its own outbox, in the same order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from canvas_sync.connection import CROWDED, SLOW_CLIENT, Connection, Flush
from canvas_sync.gathering import KEPT
from canvas_sync.projects import Broadcast, Project
from hypothesis import given, settings
from hypothesis import strategies as st

INTERVAL = 0.004


class Socket:
    """Takes frames at once (``write``) unless ``refusing``: then only through ``send``."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.refusing = False

    def write(self, text: str) -> bool:
        if self.refusing:
            return False
        self.frames.append(text)
        return True

    async def send(self, text: str) -> None:
        await asyncio.sleep(0)
        self.frames.append(text)

    async def close(self, code: int, reason: str) -> None:
        pass

    def messages(self) -> list[Any]:
        out: list[Any] = []
        for frame in self.frames:
            decoded = json.loads(frame)
            out += decoded if isinstance(decoded, list) else [decoded]
        return out


def _board(clients: int, queue_size: int = 4096) -> tuple[Project, list[Connection], list[Socket], Flush]:
    project, flush = Project("p"), Flush()
    conns, sockets = [], []
    for _ in range(clients):
        conn = Connection(queue_size, batched=True, send_interval=INTERVAL, busy=lambda: False, flush=flush)
        conn.gathering = project.gathering
        project.subscribe(conn)
        conns.append(conn)
        sockets.append(Socket())
    return project, conns, sockets, flush


def _crowd(project: Project, start: int = 0) -> None:
    """One crowded turn: CROWDED broadcasts numbered from ``start``, so every frame gathers."""
    for n in range(start, start + CROWDED):
        project.broadcast(Broadcast(json.dumps({"n": n})))


async def _settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_crowded_board_reads_from_the_gathering_and_each_socket_skips_its_own() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(6)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)  # one crowded turn: every socket's frame gathers
        await _settle()
        assert set(project.gathering.members) == set(conns) and not project.direct
        sent = []
        for n in range(CROWDED, 3 * CROWDED):
            sender = n % len(conns)
            project.broadcast(Broadcast(json.dumps({"n": n, "from": sender})), exclude=conns[sender])
            sent.append((n, sender))
        frames_before = [len(s.frames) for s in sockets]
        await _settle(2 * INTERVAL)
        for i, socket in enumerate(sockets):
            assert len(socket.frames) == frames_before[i] + 1  # all of it in one frame
            assert [m["n"] for m in socket.messages()] == [*range(CROWDED), *(n for n, s in sent if s != i)]
        unshared = {id(s.frames[-1]) for i, s in enumerate(sockets)}
        assert len(unshared) == len(sockets)  # each had one of its own to skip
        for w in writers:
            w.cancel()

    asyncio.run(main())


def test_members_with_nothing_of_their_own_share_one_text() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(5)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)
        await _settle()
        _crowd(project, 10)
        await _settle(2 * INTERVAL)
        assert len({id(s.frames[-1]) for s in sockets}) == 1
        assert project.gathering.members and not project.gathering._texts  # read by all: forgotten
        for w in writers:
            w.cancel()

    asyncio.run(main())


def test_a_message_to_one_member_goes_in_its_place_and_an_answer_does_not_wait_for_the_interval() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(3)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)
        await _settle()
        before = [f"b{n}" for n in range(CROWDED)]
        for n in before:
            project.broadcast(Broadcast(json.dumps({"n": n})))
        assert conns[0].answer(sockets[0], json.dumps({"n": "ack"}))  # behind them, not ahead
        project.broadcast(Broadcast(json.dumps({"n": "after"})))
        await _settle()  # the end of the turn, well before the interval is over
        assert [m["n"] for m in sockets[0].messages()][CROWDED:] == [*before, "ack", "after"]
        assert [m["n"] for m in sockets[1].messages()][CROWDED:] == []  # the others wait for the interval
        assert conns[0] in project.gathering.members and not project.direct  # a crowded frame: it gathers on
        await _settle(2 * INTERVAL)
        assert [m["n"] for m in sockets[1].messages()][CROWDED:] == [*before, "after"]
        for w in writers:
            w.cancel()

    asyncio.run(main())


def test_a_member_with_too_much_of_its_own_waiting_leaves_with_it_in_order() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(2)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)
        await _settle()
        expected = []
        for n in range(KEPT + 2):
            project.broadcast(Broadcast(json.dumps({"n": f"b{n}"})))
            conns[0].send(json.dumps({"n": f"p{n}"}))
            expected += [f"b{n}", f"p{n}"]
        assert conns[0] not in project.gathering.members and conns[0] in project.direct
        await _settle(2 * INTERVAL)
        assert [m["n"] for m in sockets[0].messages()][CROWDED:] == expected
        for w in writers:
            w.cancel()

    asyncio.run(main())


def test_a_member_that_cannot_take_its_frame_gets_it_from_its_writer_and_a_closed_one_is_forgotten() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(3, queue_size=CROWDED + 2)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)
        await _settle()
        sockets[1].refusing = True
        for n in range(CROWDED, 2 * CROWDED):
            project.broadcast(Broadcast(json.dumps({"n": n})))
        await _settle(2 * INTERVAL)
        assert conns[1] not in project.gathering.members
        assert [m["n"] for m in sockets[1].messages()] == list(range(2 * CROWDED))  # through send, in order
        project.unsubscribe(conns[2])
        assert conns[2] not in project.gathering.members and conns[2] not in project.direct
        for w in writers:
            w.cancel()

    asyncio.run(main())


def test_what_a_member_had_not_read_counts_against_its_outbox_limit() -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(2, queue_size=CROWDED + 1)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        _crowd(project)
        await _settle()
        for n in range(CROWDED + 1):
            project.broadcast(Broadcast(json.dumps({"n": n})))
        for n in range(KEPT):  # kept in the gathering, in their places
            conns[0].send(json.dumps({"n": f"mine{n}"}))
        assert conns[0].close_code is None
        conns[0].send(json.dumps({"n": "one more"}))  # too many: it leaves, and its outbox overflows
        assert conns[0].close_code == SLOW_CLIENT
        assert conns[1].close_code is None
        for w in writers:
            w.cancel()

    asyncio.run(main())


# Each step: ("broadcast", sender or None), ("burst", how many from no one in a crowded
# turn, which ends: the sockets gather), ("private", who), ("answer", who),
# ("refuse", who) / ("accept", who), ("wait", milliseconds)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("broadcast"), st.none() | st.integers(0, 3)),
        st.tuples(st.just("burst"), st.integers(CROWDED, 2 * CROWDED)),
        st.tuples(st.just("private"), st.integers(0, 3)),
        st.tuples(st.just("answer"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["refuse", "accept"]), st.integers(0, 3)),
        st.tuples(st.just("wait"), st.sampled_from([0, 1, 5])),
        st.tuples(st.just("wait"), st.just(5)),
    ),
    max_size=80,
)


@settings(max_examples=100, deadline=None)
@given(steps)
def test_every_socket_gets_what_was_meant_for_it_once_and_in_order(plan: list[tuple[str, Any]]) -> None:
    async def main() -> None:
        project, conns, sockets, _ = _board(4)
        writers = [asyncio.create_task(c.pump(s)) for c, s in zip(conns, sockets, strict=True)]
        await _settle()
        expected: list[list[int]] = [[] for _ in conns]
        n = 0
        for op, who in plan:
            if op == "wait":
                await _settle(who / 1000)
                continue
            if op == "burst":
                for _ in range(who):
                    n += 1
                    project.broadcast(Broadcast(json.dumps({"n": n})))
                    for i in range(len(conns)):
                        expected[i].append(n)
                await _settle()  # the turn ends: the sockets' frames gather
                continue
            if op in ("refuse", "accept"):
                sockets[who].refusing = op == "refuse"
                continue
            n += 1
            text = json.dumps({"n": n})
            if op == "broadcast":
                project.broadcast(Broadcast(text), exclude=None if who is None else conns[who])
                for i in range(len(conns)):
                    if who != i:
                        expected[i].append(n)
            elif op == "private":
                conns[who].send(text)
                expected[who].append(n)
            else:  # as the service answers: straight out, or queued where the socket is backed up
                if not conns[who].answer(sockets[who], text):
                    conns[who].send(text)
                expected[who].append(n)
        for s in sockets:
            s.refusing = False
        await _settle(5 * INTERVAL)
        for i, socket in enumerate(sockets):
            assert [m["n"] for m in socket.messages()] == expected[i]
            assert conns[i].close_code is None
        for w in writers:
            w.cancel()

    asyncio.run(main())
