"""JSON logs on stderr: one object per line, with the replica id on every line."""

from __future__ import annotations

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


def setup_logging(level: str, replica_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(replica)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ReplicaFilter(replica_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
