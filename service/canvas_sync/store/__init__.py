"""Where objects are saved: a small :class:`Store` interface and its two implementations.

``DynamoStore`` (``dynamodb.py``) is the real one. ``MemoryStore`` (``memory.py``) keeps the
same layout and rules in a dictionary, so the auto-save and sync logic is unit-tested in
milliseconds; what only DynamoDB can show is tested against DynamoDB Local.
"""

from .base import BATCH_LIMIT, HEAD, ITEM_LIMIT_BYTES, Head, Loaded, Saved, Store, WriteReport
from .dynamodb import (
    HEAD_WRITER_MAX_AGE_MS,
    INDEX_SAVED_AT,
    STORE_ERRORS,
    TTL_ATTRIBUTE,
    WRITER_PREFIX,
    DynamoStore,
    make_client,
)
from .memory import MemoryStore

__all__ = [
    "BATCH_LIMIT",
    "HEAD",
    "HEAD_WRITER_MAX_AGE_MS",
    "INDEX_SAVED_AT",
    "ITEM_LIMIT_BYTES",
    "STORE_ERRORS",
    "TTL_ATTRIBUTE",
    "WRITER_PREFIX",
    "DynamoStore",
    "Head",
    "Loaded",
    "MemoryStore",
    "Saved",
    "Store",
    "WriteReport",
    "make_client",
]
