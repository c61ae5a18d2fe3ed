"""One log line per event on stderr; stdout is kept for command output and JSON."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once: `time level logger message` lines on stderr."""
    root = logging.getLogger()
    if getattr(root, "_wahero_configured", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root._wahero_configured = True  # type: ignore[attr-defined]
    # Chatty libraries stay at WARNING unless asked for with DEBUG.
    if level.upper() != "DEBUG":
        for name in ("urllib3", "kombu", "celery.redirected", "amqp"):
            logging.getLogger(name).setLevel(logging.WARNING)
