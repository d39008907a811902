"""Stage ⑧ observability: request and job ids carried in contextvars, and the ``Server-Timing`` header.

Log records get ``request_id`` and ``job_id`` from here (see :mod:`server.log_setup`), so code never
passes them around as arguments.
"""

from __future__ import annotations

import contextvars
import logging
import secrets

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")

SERVER_TIMING_STAGES = ("queue", "text_encode", "vae_encode", "denoise", "decode", "image_encode", "total")


def new_request_id() -> str:
    """A fresh ``req_…`` id."""
    return "req_" + secrets.token_hex(8)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``job_id`` attributes to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the ids; never drops a record."""
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


def server_timing(timings: dict[str, float]) -> str:
    """``queue;dur=12.0, denoise;dur=340.1, …`` (milliseconds) from seconds per stage."""
    parts = [f"{name};dur={timings[name] * 1000.0:.1f}" for name in SERVER_TIMING_STAGES if name in timings]
    return ", ".join(parts)
