"""Stage ⑧ observability: every Prometheus metric of the server, on a per-app registry.

Names follow peers.md §4.12: the ``dreamlite_`` prefix, base units (``_seconds``, ``_bytes``), ``_total``
on counters, and labels from closed sets only (``route``, ``method``, ``code``, ``task``, ``mode``,
``backend``, ``stage``, ``outcome``, ``reason``, ``error_type``, ``result``, ``type``) — never a job id or a
prompt. Each app builds its own :class:`Metrics`, so tests and several apps in one process never collide.
"""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
SIZE_BUCKETS = (1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7)
PARITY_ERROR_BUCKETS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 255.0)
STAGES = ("queue", "text_encode", "vae_encode", "denoise", "decode", "image_encode")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's metrics.

    Args:
        registry: Registry to register on (a fresh one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # HTTP
        self.http_requests = Counter(
            "dreamlite_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_duration = Histogram(
            "dreamlite_http_request_duration_seconds",
            "HTTP request duration (until the response starts).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "dreamlite_request_failures_total",
            "Failed requests and jobs by stable error type.",
            ["error_type"],
            registry=r,
        )
        # jobs
        self.jobs_submitted = Counter(
            "dreamlite_jobs_submitted_total", "Jobs accepted into the queue.", ["task", "mode"], registry=r
        )
        self.jobs_completed = Counter(
            "dreamlite_jobs_completed_total",
            "Jobs that reached a terminal status.",
            ["task", "backend", "outcome"],
            registry=r,
        )
        self.jobs_rejected = Counter(
            "dreamlite_jobs_rejected_total", "Jobs refused before or while queued.", ["reason"], registry=r
        )
        self.images_generated = Counter(
            "dreamlite_images_generated_total", "Images produced.", ["task", "backend"], registry=r
        )
        self.batches = Counter(
            "dreamlite_batches_total",
            "Batches run (task is generate, edit or mixed).",
            ["backend", "task"],
            registry=r,
        )
        self.request_duration = Histogram(
            "dreamlite_request_duration_seconds",
            "Job end-to-end time, from admission to terminal status.",
            ["task", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dreamlite_queue_wait_seconds",
            "Time from admission to the start of a job's first batch.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_image = Histogram(
            "dreamlite_time_to_first_image_seconds",
            "Time from admission to a job's first finished image.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "dreamlite_stage_duration_seconds",
            "Duration of a pipeline stage per batch (image_encode per image).",
            ["stage", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "dreamlite_denoise_step_duration_seconds",
            "Duration of one denoising step (one UNet call).",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dreamlite_batch_size",
            "Images per UNet batch.",
            ["backend", "task"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.response_size = Histogram(
            "dreamlite_response_size_bytes",
            "Encoded image size.",
            ["output_format"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.prompt_cache = Counter(
            "dreamlite_prompt_cache_lookups_total", "Prompt-feature cache lookups.", ["result"], registry=r
        )
        # parity
        self.parity_checks = Counter(
            "dreamlite_parity_checks_total",
            "Parity verifications by overall verdict.",
            ["verdict"],
            registry=r,
        )
        self.parity_stage_error = Histogram(
            "dreamlite_parity_max_abs_error",
            "Max |Δ| of a verified stage vs the reference (unitless; 0 when bit-exact).",
            ["stage"],
            buckets=PARITY_ERROR_BUCKETS,
            registry=r,
        )
        # state
        self.queue_depth = Gauge("dreamlite_queue_depth", "Jobs waiting to start.", registry=r)
        self.queue_estimated_wait = Gauge(
            "dreamlite_queue_estimated_wait_seconds", "Estimated wait of a newly queued job.", registry=r
        )
        self.jobs_running = Gauge(
            "dreamlite_jobs_running", "Jobs with samples in the running batch.", ["backend"], registry=r
        )
        self.ws_connections = Gauge("dreamlite_ws_connections", "Open WebSocket connections.", registry=r)
        self.ws_events = Counter(
            "dreamlite_ws_events_sent_total", "Events sent over WebSockets.", ["type"], registry=r
        )
        self.worker_ready = Gauge(
            "dreamlite_worker_ready", "1 when the model is loaded and warmed.", registry=r
        )
        self.model_loaded = Gauge(
            "dreamlite_model_loaded", "1 for the loaded model.", ["model", "backend"], registry=r
        )
        self.build_info = Gauge(
            "dreamlite_build_info", "Build facts (value 1).", ["version", "python_version"], registry=r
        )
        from server import __version__

        self.build_info.labels(version=__version__, python_version=platform.python_version()).set(1)
        for result in ("hit", "miss"):
            self.prompt_cache.labels(result=result)
        for reason in ("queue_full", "not_ready", "deadline_exceeded", "invalid", "unauthorized"):
            self.jobs_rejected.labels(reason=reason)
        self.worker_ready.set(0)
        for verdict in ("bit_exact", "within_tolerance", "mismatch"):
            self.parity_checks.labels(verdict=verdict)

    def observe_parity(self, report: dict[str, Any]) -> None:
        """Count one verification report and its per-stage errors (stage class labels, bounded)."""
        self.parity_checks.labels(verdict=str(report["verdict"])).inc()
        for stage in report["stages"]:
            value = stage.get("max_abs")
            if value is None:
                continue
            name = str(stage["name"])
            kind = name.split(".", 1)[1] if name.startswith("step") else name
            self.parity_stage_error.labels(stage=kind).observe(float(value))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
