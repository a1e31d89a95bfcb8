"""JSON logs on stderr: one object per line, with the replica id on every line, and
ERROR kept for what an operator should look at."""

from __future__ import annotations

import asyncio
import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class _ReplicaFilter(logging.Filter):
    def __init__(self, replica_id: str) -> None:
        super().__init__()
        self.replica_id = replica_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.replica = self.replica_id
        return True


class _CancelledIsNotAnError(logging.Filter):
    """A task cancelled on purpose is no error, yet Python 3.11's asyncio logs one as
    ``Exception in callback`` with a CancelledError traceback (``StreamReaderProtocol``
    asks a cancelled connection task for its exception; 3.12 checks first). hypercorn
    cancels the connections still open when it stops. Such a record becomes one INFO line
    (``event=task_cancelled``), so a real ERROR does not drown among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name != "asyncio" or not isinstance(error, asyncio.CancelledError):
            return True
        record.detail = record.getMessage().splitlines()[0]
        record.msg, record.args = "asyncio task cancelled (not an error)", ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        record.event = "task_cancelled"
        return logging.getLogger().isEnabledFor(logging.INFO)


def setup_logging(level: str, replica_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(replica)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ReplicaFilter(replica_id))
    handler.addFilter(_CancelledIsNotAnError())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
