"""kombu's Redis transport, hardened: an entry on a queue that is not a job is dropped, not fatal.

Stock kombu decodes each popped entry before Celery sees it, so one non-JSON entry pushed onto a
queue (by hand, or by another program sharing the Redis database) stops the worker with an
unrecoverable error. Here it is logged and dropped: it was never a job of ours.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

log = logging.getLogger("wahero_bulk.broker")


def _dropped() -> None:
    log.error("dropped an entry on a job queue that is not a job (not JSON)")


class Channel(kombu_redis.Channel):
    """A Redis channel that survives undecodable queue entries."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        except ValueError:
            _dropped()
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except ValueError:
            _dropped()
            raise Empty() from None


class Transport(kombu_redis.Transport):
    """The Redis transport with the hardened channel (celeryconfig's broker_transport)."""

    Channel = Channel
