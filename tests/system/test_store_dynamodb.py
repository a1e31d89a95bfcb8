"""The DynamoDB repository against AWS DynamoDB Local: every assertion of
tests/unit/test_store.py (which runs them on moto), on the real thing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client

from tests.unit.test_store import *  # noqa: F403  # the same tests, with the fixture below


@pytest.fixture
def store(dynamodb_local: DynamoDBLocal) -> Iterator[DynamoStore]:
    s = DynamoStore(make_client(dynamodb_local.endpoint), f"t_{uuid.uuid4().hex[:10]}", "r1")
    s.create_table()
    yield s
    s.client.delete_table(TableName=s.table)
    s.close()
