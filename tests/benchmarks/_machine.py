"""What a benchmark ran on: CPU model and the fastest instruction set PyTorch uses on it.

Numbers from two CPUs differ by up to 1.8× here (the nano recipe: 77 min on 2 cores of an AMX Xeon, an
estimated 98–143 min on 2 cores of an AVX2-only AMD EPYC), so every benchmark report names its CPU.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """CPU model, PyTorch's CPU capability (e.g. ``AVX2``, ``AVX512``), native bf16, core count."""
    import torch

    from model_runtime.train.vae_fit import native_bf16

    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "cpu_count": os.cpu_count(),
    }
