"""Stand-ins for a boto3 DynamoDB client that misbehave on purpose: partial answers,
failures, and calls held until released (a save slowed by throttling)."""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import ClientError


class FlakyClient:
    """Wraps a real client: some BatchWriteItem calls fail, some leave items unprocessed."""

    def __init__(self, client: Any, script: list[str]) -> None:
        self.client = client
        self.script = list(script)
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
        ((table, requests),) = RequestItems.items()
        self.sizes.append(len(requests))
        action = self.script.pop(0) if self.script else "ok"
        if action == "error":
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "BatchWriteItem")
        if action == "half":
            keep, left = requests[: len(requests) // 2], requests[len(requests) // 2 :]
            self.client.batch_write_item(RequestItems={table: keep})
            return {"UnprocessedItems": {table: left}}
        return self.client.batch_write_item(RequestItems=RequestItems)


class BlockingClient:
    """Holds every BatchWriteItem call until released: a save slowed by throttling and retries."""

    def __init__(self, client: Any, timeout: float = 10.0) -> None:
        self.client = client
        self.timeout = timeout
        self.inside, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def batch_write_item(self, **kwargs: Any) -> Any:
        self.inside.set()
        assert self.release.wait(self.timeout)
        return self.client.batch_write_item(**kwargs)
