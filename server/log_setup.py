"""Stage ⓪ logging: configure stdlib logging once (console locally, JSON lines in containers).

Every record carries ``request_id`` and ``job_id`` from contextvars. Prompts and image bytes are never
logged at INFO or above; log ``prompt_chars`` and hashes instead.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

from server.observability.tracing import ContextFilter


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise a record."""
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "job_id": getattr(record, "job_id", "-"),
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "INFO", fmt: Literal["console", "json"] = "console") -> None:
    """Install one handler on the root logger (idempotent).

    Args:
        level: Level name.
        fmt: ``console`` or ``json``.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dreamlite", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._dreamlite = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s %(job_id)s] %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
