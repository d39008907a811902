"""Shared generate/edit cases and metrics for the onnx and qnn backend tests (the tiny bundle's size)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.export.calibration import synthetic_image
from model_runtime.export.parity import psnr_rgb8
from model_runtime.types import SampleSpec
from tests.unit.model_runtime.export.tiny_bundle import SIZE, STEPS

# Negative control (two seeds of one prompt through torch fp32) measured 10.6–12.9 dB on this model; the
# tiny model's images are coloured noise, so unrelated images still share their mean colour.
# Benign pairs measured: fp16 ≥ 47 dB, w8a16 on the CPU EP and on the HTP emulator ≥ 26 dB
# (docs/bundle.md).
PSNR_MIN_FP16_DB = 40.0
PSNR_MIN_W8A16_DB = 20.0


def cases() -> list[SampleSpec]:
    """One generate and one edit at the bundle's working size (``dln1`` noise, phone-like)."""
    return [
        SampleSpec(
            task="generate",
            prompt="a lighthouse on a cliff",
            seed=7,
            width=SIZE[0],
            height=SIZE[1],
            steps=STEPS,
            noise="dln1",
        ),
        SampleSpec(
            task="edit",
            prompt="make it red",
            seed=8,
            image=synthetic_image(3, (96, 80)),
            working_size=SIZE,
            steps=STEPS,
            noise="dln1",
        ),
    ]


def run_cases(pipeline: Any) -> dict[str, dict[str, NDArray[Any]]]:
    """Final latent and working-size RGB8 image of each case."""
    out = {}
    tag = str(SIZE[0]) if SIZE[0] == SIZE[1] else f"{SIZE[0]}x{SIZE[1]}"
    for spec in cases():
        result = pipeline.run([spec], trace=True)[0]
        arrays = result.trace.arrays
        out[spec.task] = {
            "latent": arrays[f"step{STEPS - 1}_latents"],
            "image": arrays.get(f"output_{tag}", arrays["output"]),
            "output": result.image,
        }
    return out


def compare(
    got: dict[str, dict[str, NDArray[Any]]], ref: dict[str, dict[str, NDArray[Any]]]
) -> dict[str, Any]:
    """Max abs latent error and image PSNR per task."""
    return {
        task: {
            "latent_max_abs": float(np.abs(got[task]["latent"] - ref[task]["latent"]).max()),
            "psnr_db": psnr_rgb8(got[task]["image"], ref[task]["image"]),
        }
        for task in ref
    }


def digest(result: dict[str, dict[str, NDArray[Any]]]) -> dict[str, str]:
    """SHA-256 of every array (bit-identity checks across processes)."""
    return {
        f"{task}/{name}": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        for task, values in sorted(result.items())
        for name, value in sorted(values.items())
    }
