"""Admission: not ready → 503, full queue → 503 with an estimated Retry-After, start deadlines."""

from __future__ import annotations

import pytest

from server.engine.admission import Admission
from server.errors import NotReadyError, OverloadedError
from server.scaleout.memory_broker import MemoryBroker
from tests.unit.server.conftest import make_job

pytestmark = pytest.mark.anyio


async def test_not_ready_and_full() -> None:
    broker = MemoryBroker()
    admission = Admission(max_queued_jobs=1, min_retry_after_s=2, max_batch_size=2)
    with pytest.raises(NotReadyError):
        await admission.admit(broker, make_job("a"), ready=False)
    await admission.admit(broker, make_job("a", n=8), ready=True)
    admission.record_batch(3.0)
    with pytest.raises(OverloadedError) as info:
        await admission.admit(broker, make_job("b"), ready=True)
    assert info.value.retry_after_s == 12  # 8 samples / batch 2 × 3 s
    assert info.value.status_code == 503


def test_estimates_and_deadlines() -> None:
    admission = Admission(max_queued_jobs=1, min_retry_after_s=1, max_batch_size=4, clock=lambda: 100.0)
    assert admission.estimated_wait_s(10) == 0.0  # no batch seen yet
    assert admission.retry_after_s(10) == 1
    admission.record_batch(1.0)
    admission.record_batch(2.0)
    assert admission.estimated_wait_s(5) == pytest.approx(2 * 1.3)
    assert admission.deadline(5.0) == 105.0
