"""What a benchmark ran on: CPU model and the fastest instruction set PyTorch uses on it.

Numbers from two CPUs differ by up to 1.8× here (the nano recipe: 77 min on 2 cores of an AMX Xeon, an
estimated 98–143 min on 2 cores of an AVX2-only AMD EPYC), so every benchmark report names its CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first CPU's ``name : value`` fields of ``/proc/cpuinfo`` (empty where there is none), read once."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_generation() -> str | None:
    """``family F model M`` of an x86 CPU (``/proc/cpuinfo``), else None.

    Cloud hosts often name only the product line ("AMD EPYC"); the family and model tell its generation
    apart (AMD family 25 model 1: Zen 3, model 17: Zen 4; family 26: Zen 5), and a step's price differs
    between them.
    """
    family, model = _cpuinfo().get("cpu family"), _cpuinfo().get("model")
    return f"family {family} model {model}" if family and model else None


def cpu_info() -> dict[str, Any]:
    """CPU model and generation, PyTorch's CPU capability (e.g. ``AVX2``, ``AVX512``), native bf16, cores."""
    import torch

    from model_runtime.train.vae_fit import native_bf16

    return {
        "cpu": cpu_model(),
        "cpu_generation": cpu_generation(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "cpu_count": os.cpu_count(),
    }
