"""The table puller against DynamoDB Local: what the in-memory store cannot show."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client

from tests.doubles import BlockingClient
from tests.unit.test_pull import OVERLAP, Node, only_other_replicas_saves_are_queried


@pytest.fixture
def nodes(dynamodb_local: DynamoDBLocal, table: str) -> Iterator[tuple[Node, Node]]:
    stores = [DynamoStore(make_client(dynamodb_local.endpoint), table, replica_id=n, concurrency=2) for n in ("a", "b")]
    yield Node(stores[0], "a"), Node(stores[1], "b")
    for store in stores:
        store.close()


@pytest.mark.dynamodb_local
def test_only_projects_another_replica_saved_are_queried_in_dynamodb(nodes: tuple[Node, Node]) -> None:
    only_other_replicas_saves_are_queried(*nodes)


@pytest.mark.dynamodb_local
def test_a_batch_delayed_past_the_overlap_is_still_pulled(
    nodes: tuple[Node, Node], dynamodb_local: DynamoDBLocal
) -> None:
    a, b = nodes
    a.hold("p")
    a.pass_once()
    b.store.client = delayed = BlockingClient(b.store.client)  # type: ignore[attr-defined]
    saver = threading.Thread(target=b.save, args=("p", "late"), kwargs={"x": 1})
    saver.start()  # b's pass has fixed its saved_at and waits on its batch
    assert delayed.inside.wait(5)
    time.sleep(OVERLAP + 0.2)
    c_store = DynamoStore(b.store.client.client, b.store.table, replica_id="c")  # type: ignore[attr-defined]
    c = Node(c_store, "c")
    c.save("p", "c1", x=2)  # another replica's save moves a's watermark past b's saved_at + overlap
    wait = time.monotonic() + 5
    while "c1" not in a.projects.get("p").views and time.monotonic() < wait:  # type: ignore[union-attr]
        a.pass_once()
    delayed.release.set()
    saver.join(10)
    for _ in range(3):  # the feed window; the reconcile is an hour away
        a.pass_once()
    assert "late" in a.projects.get("p").views  # type: ignore[union-attr]
    c_store.close()
