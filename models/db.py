"""Engine and session factory from DATABASE_URL, safe across Celery's prefork."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_engine_url: str | None = None


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine whose pooled connections are checked before use and recycled."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"application_name": "wahero-bulk", "connect_timeout": 10},
    )


def get_engine(url: str | None = None) -> Engine:
    """The process's engine; a forked child gets a fresh pool, never its parent's sockets."""
    global _engine, _engine_pid, _engine_url
    if url is None:
        from worker.settings import get_settings

        url = get_settings().database_url
    with _lock:
        if _engine is not None and (_engine_pid != os.getpid() or _engine_url != url):
            # close=False: the parent still owns those sockets; the child must not close them.
            _engine.dispose(close=False)
            _engine = None
        if _engine is None:
            _engine = make_engine(url)
            _engine_pid = os.getpid()
            _engine_url = url
        return _engine


def reset_engine() -> None:
    """Drop the process's engine (after fork, or when settings change in tests)."""
    global _engine
    with _lock:
        if _engine is not None:
            _engine.dispose(close=_engine_pid == os.getpid())
            _engine = None


def session_factory() -> sessionmaker[Session]:
    """A sessionmaker bound to the process's engine."""
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error."""
    with session_factory().begin() as session:
        yield session
