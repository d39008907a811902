"""Stage ③ scale-out seam: choose the job broker named in the settings.

``memory`` keeps everything in this process. ``redis`` is the scale-out broker of a later issue; choosing
it now fails at startup with a clear message instead of silently running in memory.
"""

from __future__ import annotations

from server.engine.interfaces import JobBroker
from server.scaleout.memory_broker import MemoryBroker
from server.settings import ServerSettings


class BrokerUnavailableError(RuntimeError):
    """The configured broker cannot be used in this build."""


def create_broker(settings: ServerSettings) -> JobBroker:
    """The broker the settings ask for.

    Args:
        settings: Server settings (``scaleout`` and ``jobs`` groups).

    Returns:
        A ready broker.

    Raises:
        BrokerUnavailableError: ``scaleout.broker`` names a broker that is not implemented yet.
    """
    if settings.scaleout.broker == "memory":
        return MemoryBroker(
            ttl_s=settings.jobs.ttl_s,
            max_retained=settings.jobs.max_retained,
            event_buffer=settings.jobs.event_buffer,
            idempotency_ttl_s=settings.jobs.idempotency_ttl_s,
        )
    raise BrokerUnavailableError(
        "DREAMLITE_SCALEOUT__BROKER=redis is not implemented yet (scale-out is a later issue); use memory"
    )
