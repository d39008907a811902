"""Export stage ⑥ (parity): how far each shipped graph is from the torch float32 model, measured at export.

Two levels, both written to the manifest:

* **per graph** — the graph's output vs the torch module's output on held-out inputs recorded from the
  torch pipeline (a generate and an edit prompt not used for calibration, every step): max/mean absolute
  error, and the PSNR of a *decoded image*, so every component is judged on pixels:
  UNet → the clean-latent estimate ``x₀ = x_t − σ·v`` (target half) decoded by the torch VAE; VAE decoder →
  its image; VAE encoder → its latent decoded by the torch VAE decoder.
* **end to end** — a full generate and edit through the backend vs the torch pipeline (same seed, ``dln1``
  noise): max abs error of the final latent and PSNR of the RGB8 image.

PSNR is ``10·log10(255² / MSE)`` on RGB8 pixels (capped at 100 dB for identical images); the worst sample
is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.postprocess import to_uint8

PSNR_CAP_DB = 100.0
Decode = Callable[[NDArray[np.float32]], NDArray[np.float32]]
"""Torch float32 VAE decoder: (B, 4, h, w) → (B, 3, H, W) in about [−1, 1]."""


def psnr_rgb8(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """PSNR in dB between two RGB8 images (peak 255), capped at :data:`PSNR_CAP_DB`."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse)))


def clean_latent(feeds: dict[str, NDArray[np.float32]], velocity: NDArray[np.float32]) -> NDArray[np.float32]:
    """``x₀ = x_t − σ·v`` on the target half (rectified flow, ``σ = t/1000``)."""
    sample = feeds["sample"]  # (1, 4, h, 2w)
    w = sample.shape[3] // 2
    sigma = np.float32(feeds["timestep"][0] / np.float32(1000.0))
    return (sample[..., :w] - sigma * velocity[..., :w]).astype(np.float32)  # (1, 4, h, w)


def _images(
    component: str, feeds: dict[str, NDArray[np.float32]], out: NDArray[np.float32], decode: Decode
) -> NDArray[np.uint8]:
    if component == "unet":
        return to_uint8(decode(clean_latent(feeds, out)))  # (1, H, W, 3)
    if component == "vae_encoder":
        return to_uint8(decode(out))
    return to_uint8(out)


def reference_images(
    component: str,
    feeds: Sequence[dict[str, NDArray[np.float32]]],
    references: Sequence[NDArray[np.float32]],
    decode: Decode,
) -> list[NDArray[np.uint8]]:
    """The decoded RGB8 image of each torch reference output (computed once, shared by every graph)."""
    return [_images(component, f, ref, decode) for f, ref in zip(feeds, references, strict=True)]


def graph_parity(
    component: str,
    feeds: Sequence[dict[str, NDArray[np.float32]]],
    outputs: Sequence[NDArray[np.float32]],
    references: Sequence[NDArray[np.float32]],
    decode: Decode,
    ref_images: Sequence[NDArray[np.uint8]] | None = None,
) -> dict[str, Any]:
    """Per-graph parity over held-out samples (see the module docstring)."""
    if ref_images is None:
        ref_images = reference_images(component, feeds, references, decode)
    max_abs = mean_abs = 0.0
    worst = PSNR_CAP_DB
    for f, out, ref, ref_image in zip(feeds, outputs, references, ref_images, strict=True):
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        max_abs = max(max_abs, float(diff.max()))
        mean_abs += float(diff.mean()) / len(outputs)
        worst = min(worst, psnr_rgb8(_images(component, f, out, decode), ref_image))
    return {
        "max_abs": max_abs,
        "mean_abs": mean_abs,
        "psnr_db": worst,
        "samples": len(outputs),
        "output_range": float(max(np.abs(r).max() for r in references)),
    }


def run_graph(session: Any, feeds: Sequence[dict[str, NDArray[np.float32]]]) -> list[NDArray[np.float32]]:
    """Outputs of a session on each feed."""
    return [np.asarray(session.run(None, f)[0], dtype=np.float32) for f in feeds]


PARITY_SEED = 4242


def e2e_specs(size: tuple[int, int], steps: int) -> list[Any]:
    """One held-out generate and one held-out edit at a working size (noise ``dln1``)."""
    from model_runtime.export.calibration import PARITY_PROMPTS, synthetic_image
    from model_runtime.types import SampleSpec

    return [
        SampleSpec(
            task="generate",
            prompt=PARITY_PROMPTS["generate"],
            seed=PARITY_SEED,
            width=size[0],
            height=size[1],
            steps=steps,
            noise="dln1",
        ),
        SampleSpec(
            task="edit",
            prompt=PARITY_PROMPTS["edit"],
            seed=PARITY_SEED + 1,
            image=synthetic_image(99, (288, 224)),
            working_size=size,
            steps=steps,
            noise="dln1",
        ),
    ]


def run_e2e(pipeline: Any, size: tuple[int, int], steps: int) -> dict[str, dict[str, NDArray[Any]]]:
    """Final latent and RGB8 output of the held-out generate and edit runs.

    Runs without tracing so a shared prompt-feature cache can serve every backend after the first.
    """
    out: dict[str, dict[str, NDArray[Any]]] = {}
    for spec in e2e_specs(size, steps):
        last: list[NDArray[np.float32]] = []
        result = pipeline.run([spec], on_step=lambda event, seen=last: seen.append(event.latents))[0]
        out[spec.task] = {"latent": last[-1][:1], "image": result.image}  # (1, 4, h, w), (H, W, 3) uint8
    return out


def e2e_parity(
    candidate: dict[str, dict[str, NDArray[Any]]], reference: dict[str, dict[str, NDArray[Any]]]
) -> dict[str, Any]:
    """Compare two :func:`run_e2e` results per task."""
    report: dict[str, Any] = {}
    for task, ref in reference.items():
        got = candidate[task]
        report[task] = {
            "latent_max_abs": float(np.abs(got["latent"].astype(np.float64) - ref["latent"]).max()),
            "image_psnr_db": psnr_rgb8(got["image"], ref["image"]),
            "image_equal": bool(np.array_equal(got["image"], ref["image"])),
        }
    return report
