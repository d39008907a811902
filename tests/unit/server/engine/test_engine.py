"""The engine with a fake runtime (fixed step time): batching, events, cancellation, failures, deadlines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.api.media import encode_preview
from server.engine.engine import Engine
from server.engine.job import EventType, JobRequest, JobStatus, OutputOptions
from server.engine.runner import Runner
from server.errors import IdempotencyConflictError, InvalidRequestError, JobNotFoundError, OverloadedError
from server.observability.metrics import Metrics
from server.scaleout.memory_broker import MemoryBroker
from server.settings import ServerSettings
from tests.unit.server.conftest import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def _encode(image: object, recipe: object, options: OutputOptions) -> bytes:
    return b"IMG"


async def _engine(fake: FakeRuntime, **settings: object) -> Engine:
    data = {"batching": {"max_batch_size": 4, "max_wait_ms": 30.0}, **settings}
    engine = Engine(
        settings=ServerSettings.model_validate(data),
        broker=MemoryBroker(),
        runner=Runner(lambda cache: fake, warmup_size=False),
        metrics=Metrics(),
        encoder=_encode,
        preview_encoder=encode_preview,
    )
    await engine.start()
    assert await engine.wait_ready(5)
    return engine


@pytest.fixture
async def fake_engine() -> AsyncIterator[tuple[Engine, FakeRuntime]]:
    fake = FakeRuntime(step_s=0.01)
    engine = await _engine(fake)
    yield engine, fake
    await engine.close()


def _req(seed: int = 1, **kw: object) -> JobRequest:
    return JobRequest(task=kw.pop("task", "generate"), prompt="p", seed=seed, **kw)  # type: ignore[arg-type]


async def _types(engine: Engine, job_id: str) -> list[str]:
    return [str(e.type) async for e in engine.events(job_id)]


async def test_jobs_of_one_key_share_a_batch_and_get_ordered_events(
    fake_engine: tuple[Engine, FakeRuntime],
) -> None:
    engine, fake = fake_engine
    engine.pause()
    jobs = [
        (await engine.submit(_req(seed=s, task=t), owner="o", mode="async", fingerprint=str(s)))[0]
        for s, t in ((10, "generate"), (20, "edit"), (30, "generate"))
    ]
    engine.resume()
    done = [await engine.wait(j, 5) for j in jobs]
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 3
    assert fake.batches == [[10, 20, 30]]
    assert fake.threads == {"dreamlite-runtime_0"}  # the model only ever ran on the runtime thread
    assert [j.batch_size for j in done] == [3, 3, 3]
    assert await _types(engine, jobs[0].id) == [
        "job.queued",
        "job.started",
        "job.progress",
        "job.progress",
        "job.progress",
        "job.progress",
        "job.image",
        "job.succeeded",
    ]


async def test_cancel_one_running_sample_leaves_the_rest_of_the_batch(
    fake_engine: tuple[Engine, FakeRuntime],
) -> None:
    engine, fake = fake_engine
    fake.step_s = 0.05
    engine.pause()
    victim, _ = await engine.submit(_req(seed=1, steps=10), owner="o", mode="async", fingerprint="1")
    mate, _ = await engine.submit(_req(seed=2, steps=10), owner="o", mode="async", fingerprint="2")
    engine.resume()
    async for event in engine.events(victim.id):
        if event.type == EventType.PROGRESS:
            break
    await engine.cancel(victim.id, "o")
    victim_done, mate_done = await engine.wait(victim, 5), await engine.wait(mate, 5)
    assert victim_done.status == JobStatus.CANCELED
    assert not victim_done.images
    assert mate_done.status == JobStatus.SUCCEEDED
    assert len(mate_done.images) == 1
    types = await _types(engine, victim.id)
    assert types[-1] == "job.canceled"
    assert sum(t in ("job.succeeded", "job.failed", "job.canceled") for t in types) == 1
    assert await engine.cancel(victim.id, "o") is victim_done  # idempotent


async def test_runtime_failure_fails_the_batch_and_the_engine_lives_on() -> None:
    fake = FakeRuntime(fail=True)
    engine = await _engine(fake)
    try:
        job, _ = await engine.submit(_req(), owner="o", mode="async", fingerprint="x")
        failed = await engine.wait(job, 5)
        assert failed.status == JobStatus.FAILED
        assert failed.error is not None
        assert failed.error.type == "generation_failed"
        fake.fail = False
        ok, _ = await engine.submit(_req(seed=2), owner="o", mode="async", fingerprint="y")
        assert (await engine.wait(ok, 5)).status == JobStatus.SUCCEEDED
    finally:
        await engine.close()


async def test_a_failing_batch_is_split_and_retried_one_sample_at_a_time() -> None:
    fake = FakeRuntime(max_ok_batch=1)
    engine = await _engine(fake)
    try:
        engine.pause()
        jobs = [
            (await engine.submit(_req(seed=s), owner="o", mode="async", fingerprint=str(s)))[0]
            for s in (1, 2)
        ]
        engine.resume()
        done = [await engine.wait(j, 5) for j in jobs]
        assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2
        assert fake.batches == [[1, 2], [1], [2]]
        assert [j.images[0].recipe["batch_size"] for j in done] == [1, 1]
    finally:
        await engine.close()


async def test_admission_rules(fake_engine: tuple[Engine, FakeRuntime]) -> None:
    engine, _ = fake_engine
    with pytest.raises(InvalidRequestError) as info:
        await engine.submit(_req(width=100, height=64), owner="o", mode="sync", fingerprint="a")
    assert info.value.param == "width"
    job, created = await engine.submit(_req(), owner="o", mode="async", fingerprint="f", idempotency_key="k")
    again, created_again = await engine.submit(
        _req(), owner="o", mode="async", fingerprint="f", idempotency_key="k"
    )
    assert created
    assert not created_again
    assert again is job
    with pytest.raises(IdempotencyConflictError):
        await engine.submit(_req(), owner="o", mode="async", fingerprint="other", idempotency_key="k")
    with pytest.raises(JobNotFoundError):
        await engine.get(job.id, "someone-else")


async def test_full_queue_and_start_deadline() -> None:
    engine = await _engine(FakeRuntime(), queue={"max_queued_jobs": 1})
    try:
        engine.pause()
        late, _ = await engine.submit(_req(start_timeout_s=0.05), owner="o", mode="async", fingerprint="1")
        with pytest.raises(OverloadedError) as info:
            await engine.submit(_req(), owner="o", mode="async", fingerprint="2")
        assert info.value.retry_after_s is not None
        failed = await engine.wait(late, 5)
        assert failed.status == JobStatus.FAILED
        assert failed.error is not None
        assert failed.error.type == "deadline_exceeded"
        assert (await _types(engine, late.id)) == ["job.queued", "job.failed"]
    finally:
        await engine.close()


async def test_split_job_finishes_once_after_all_its_batches(fake_engine: tuple[Engine, FakeRuntime]) -> None:
    engine, fake = fake_engine
    job, _ = await engine.submit(_req(seed=100, n=6), owner="o", mode="async", fingerprint="n6")
    done = await engine.wait(job, 5)
    assert done.status == JobStatus.SUCCEEDED
    assert sorted(done.images) == list(range(6))
    assert [len(b) for b in fake.batches] == [4, 2]
    types = await _types(engine, job.id)
    assert types.count("job.started") == 1
    assert types.count("job.image") == 6
    assert types[-1] == "job.succeeded"


async def test_not_ready_until_started() -> None:
    fake = FakeRuntime()
    engine = Engine(
        settings=ServerSettings(),
        broker=MemoryBroker(),
        metrics=Metrics(),
        encoder=_encode,
        preview_encoder=encode_preview,
        runner=Runner(lambda cache: fake, warmup_size=False),
    )
    assert not engine.ready
    with pytest.raises(Exception, match="loading"):
        await engine.submit(_req(), owner="o", mode="async", fingerprint="x")
    await engine.close()
