"""The Celery application: `celery -A worker.app worker` or `wahero-bulk worker`."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

app = Celery("wahero_bulk")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@worker_process_init.connect
def _fresh_connections_in_child(**_: Any) -> None:
    # A prefork child must never reuse its parent's database sockets.
    from models.db import reset_engine

    reset_engine()
