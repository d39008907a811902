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

# Image PSNR floors vs torch fp32, calibrated on this model (docs/bundle.md §7):
# * benign pairs (deterministic, measured): fp16 51.5–52.3 dB; w8a16 on the CPU EP 36.0–37.8 dB; the same
#   QDQ graphs as sm8650 context binaries on the HTP emulator 29.0–29.6 dB;
# * negative control: the same prompt with another seed, 17.6–19.7 dB (three seeds, generate and edit).
# The floors sit between the two: about 6 dB (fp16) and 4 dB (w8a16/HTP) under the worst benign value,
# 5 dB over the best negative control. (A changed *prompt* gives 32–45 dB on this random tiny model, which
# barely listens to text, so PSNR cannot catch a wrong prompt here; the per-stage parity tools can.)
PSNR_MIN_FP16_DB = 45.0
PSNR_MIN_W8A16_DB = 25.0


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
