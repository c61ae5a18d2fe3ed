"""Celery configuration for wahero-bulk; every value derives from worker.settings."""

from __future__ import annotations

from kombu import Exchange, Queue

from worker.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
# kombu's Redis transport, made to drop (not die on) a queue entry that is not a job
# (rediss:// keeps kombu's own, which sets up TLS from the scheme).
if broker_url.startswith("redis://"):
    broker_transport = "worker.broker:Transport"
# Results are never read: outcomes live in PostgreSQL.
task_ignore_result = True
result_backend = None

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A job is acknowledged only once its outcomes are written; a worker that dies mid-job gives
# its job back. Redelivery is harmless: a job claims messages atomically in PostgreSQL.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Longer than any job can take, so Redis never hands a running job to a second worker.
broker_transport_options = {"visibility_timeout": 3600, "queue_order_strategy": "priority"}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None

task_default_queue = "wahero"
# Consumed in this order: the beat's tick first, then high-priority campaigns, then the rest.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in ("wahero.control", "wahero.high", "wahero")
)
task_default_exchange = "wahero"
task_default_routing_key = "wahero"
task_routes = {"wahero.tick": {"queue": "wahero.control"}}

# One short periodic tick (worker.sweep); a tick older than two intervals is dropped.
beat_schedule = {
    "wahero-tick": {
        "task": "wahero.tick",
        "schedule": _settings.beat_interval,
        "options": {"expires": _settings.beat_interval * 2},
    },
}
worker_send_task_events = False
task_send_sent_event = False
worker_hijack_root_logger = False
worker_cancel_long_running_tasks_on_connection_loss = False
