"""The job transport's channel keeps one redis-py client per connection pool, and still works."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from worker.broker import Channel, Transport


@pytest.fixture()
def channel(redis_client: redis.Redis) -> Iterator[Channel]:
    with Connection(os.environ["REDIS_URL"], transport=Transport) as conn:
        chan = conn.channel()
        assert isinstance(chan, Channel)
        yield chan
        chan.close()


def test_publishing_and_acking_reuse_one_client_until_the_pool_changes(channel: Channel) -> None:
    first = channel._create_client()
    assert channel._create_client() is first
    assert first.connection_pool is channel.pool
    # The event loop's client is kombu's own (it holds a connection of its own for BRPOP).
    assert channel._create_client(asynchronous=True) is not first

    channel._disconnect_pools()  # what a fork or a reconnect does
    second = channel._create_client()
    assert second is not first
    assert second.connection_pool is channel.pool is not first.connection_pool


def test_a_job_published_through_the_shared_client_is_received(
    channel: Channel, redis_client: redis.Redis, unique: str
) -> None:
    queue = f"broker-test-{unique}"
    channel.queue_declare(queue)
    for body in ("one", "two"):
        channel.basic_publish(channel.prepare_message(body), exchange="", routing_key=queue)
    channel._disconnect_pools()
    channel.basic_publish(channel.prepare_message("three"), exchange="", routing_key=queue)
    received = []
    for _ in range(3):
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        received.append(message.body.decode() if isinstance(message.body, bytes) else message.body)
        message.ack()
    assert sorted(received) == ["one", "three", "two"]
    assert channel.basic_get(queue) is None
