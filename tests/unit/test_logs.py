"""The JSON logs: one object a line with the replica id, and ERROR left for what is one (a
cancelled connection task at shutdown is not)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from canvas_sync.logs import setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """What the handler writes, with the root logger put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def setup(out: io.StringIO, level: str, replica: str) -> None:
    setup_logging(level, replica)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)  # pytest puts its own sys.stderr back for the test's call


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def cancelled_callback_error() -> None:
    """What Python 3.11's asyncio does when hypercorn cancels a connection at shutdown:
    ``StreamReaderProtocol``'s done-callback asks the cancelled task for its exception."""

    async def main() -> None:
        task = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        asyncio.get_running_loop().call_soon(task.exception)  # raises CancelledError in a callback
        await asyncio.sleep(0.01)

    asyncio.run(main())


def test_a_cancelled_task_logged_by_asyncio_is_one_info_line(stream: io.StringIO) -> None:
    setup(stream, "info", "pod-a")
    cancelled_callback_error()
    (record,) = [r for r in lines(stream) if r["logger"] == "asyncio"]
    assert record["level"] == "INFO" and record["event"] == "task_cancelled"
    assert "exc_info" not in record and "Traceback" not in json.dumps(record)
    assert str(record["detail"]).startswith("Exception in callback") and record["replica"] == "pod-a"


def test_it_is_left_out_below_info(stream: io.StringIO) -> None:
    setup(stream, "warning", "pod-a")
    cancelled_callback_error()
    assert [r for r in lines(stream) if r["logger"] == "asyncio"] == []


def test_real_errors_stay_errors_with_their_traceback(stream: io.StringIO) -> None:
    setup(stream, "info", "pod-a")

    async def main() -> None:
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    try:
        raise asyncio.CancelledError
    except asyncio.CancelledError:
        logging.getLogger("canvas_sync.service").exception("cancelled where it should not be")
    asyncio_error, ours = lines(stream)
    assert asyncio_error["level"] == "ERROR" and "ZeroDivisionError" in str(asyncio_error["exc_info"])
    assert ours["level"] == "ERROR" and "CancelledError" in str(ours["exc_info"])  # only asyncio's own is eased


def test_every_line_is_json_with_the_replica(stream: io.StringIO) -> None:
    setup(stream, "info", "pod-b")
    logging.getLogger("canvas_sync.x").info("hello", extra={"event": "hello", "n": 1})
    (record,) = lines(stream)
    assert record == {
        "time": record["time"],
        "level": "INFO",
        "logger": "canvas_sync.x",
        "message": "hello",
        "replica": "pod-b",
        "event": "hello",
        "n": 1,
    }
