"""Parity ⑧ calibration: measure the declared tolerances of a bundle from benign pairs and negative controls.

Tolerances are not copied from elsewhere; they are measured per bundle (parity.md §6.1):

* **benign pair** — the same request on two executors that run the same QDQ graphs with different
  arithmetic: the HTP emulator (``qnn:<target>``) and the CPU EP (``onnx:w8a16``). Their per-stage errors
  are what a correct device on a different compute unit may show.
* **negative control** — the same executor on a request whose seed differs by one: two genuinely
  different results. A tolerance must stay well below these distances, or it would accept a wrong result.

Per stage class the declared tolerance is ``benign max × margin``; the record also keeps the negative
controls' minimum and says whether the two are separated (``tolerance < negative min``). Executors run in
worker processes (:mod:`model_runtime.parity.worker`), one per executor, as the server does.
"""

from __future__ import annotations

import io
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.parity import worker
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.compare import IMAGE_STAGES, Tolerances, compare_traces
from model_runtime.parity.trace import load_tensors, parse_trace

PROMPTS = (
    "a red circle on the left",
    "a small blue boat on a calm lake at sunrise",
    "two green stars above a yellow square",
    "a purple triangle in the centre of a white background",
)
EDITS = ("make the sky purple", "remove the tree", "change the square to blue")


def _edit_source(seed: int) -> NDArray[np.uint8]:
    """A deterministic synthetic edit source: a gradient with two coloured blocks."""
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], axis=2).astype(np.uint8)
    for _ in range(2):
        y0, x0 = int(rng.integers(0, h - 30)), int(rng.integers(0, w - 30))
        image[y0 : y0 + 30, x0 : x0 + 30] = rng.integers(0, 256, 3)
    return image


def calibration_requests(
    bundle_id: str, size: tuple[int, int], steps: int, count: int
) -> list[tuple[CanonicalRequest, bytes | None]]:
    """``count`` requests (generate and edit alternating), each with its encoded edit source."""
    from PIL import Image

    out: list[tuple[CanonicalRequest, bytes | None]] = []
    for i in range(count):
        if i % 2 == 0:
            req = CanonicalRequest.create(
                task="generate",
                prompt=PROMPTS[(i // 2) % len(PROMPTS)],
                seed=1000 + i,
                width=size[0],
                height=size[1],
                steps=steps,
                bundle_id=bundle_id,
            )
            out.append((req, None))
        else:
            image = _edit_source(i)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            req = CanonicalRequest.create(
                task="edit",
                prompt=EDITS[(i // 2) % len(EDITS)],
                seed=1000 + i,
                width=image.shape[1],
                height=image.shape[0],
                steps=steps,
                image=image,
                working_size=size,
                bundle_id=bundle_id,
            )
            out.append((req, buffer.getvalue()))
    return out


def _stage_class(name: str) -> str:
    if name.startswith("step"):
        return name.split(".", 1)[1]
    return name


def _pool(bundle: Path, executor: str) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=worker.init_worker,
        initargs=(str(bundle), executor, 4),
    )


def _traces(
    bundle: Path, executor: str, jobs: list[tuple[CanonicalRequest, bytes | None]]
) -> list[tuple[Any, dict[str, Any]]]:
    with _pool(bundle, executor) as pool:
        results = [pool.submit(worker.reference, req.canonical_json().decode(), image) for req, image in jobs]
        out = []
        for future in results:
            data = future.result()
            out.append((parse_trace(data["trace"]), load_tensors(data["tensors_npz"])))
    return out


def calibrate(
    bundle: Path,
    *,
    target: str,
    size: tuple[int, int],
    steps: int,
    count: int = 4,
    margin: float = 1.25,
) -> dict[str, Any]:
    """Measure benign pairs and negative controls; return the tolerances and the evidence.

    Returns:
        ``{"tolerances": Tolerances dict, "benign": {...}, "negative": {...}, "separated": {...}}``.
    """
    from model_runtime.bundle import open_bundle

    opened = open_bundle(bundle)
    jobs = calibration_requests(opened.bundle_id, size, steps, count)
    shifted = [(req.model_copy(update={"seed": str(int(req.seed) + 1)}), image) for req, image in jobs]
    emulator = _traces(bundle, f"qnn:{target}", jobs + shifted)
    cpu = _traces(bundle, "onnx:w8a16", jobs)
    loose = Tolerances(
        text_features_pct=1e9,
        condition_latent_pct=1e9,
        unet_out_pct=1e9,
        latents_pct=1e9,
        decoded_pct=1e9,
        image_psnr_db=0.0,
        image_ssim=-1.0,
    )
    benign: dict[str, dict[str, float]] = {}
    negative: dict[str, dict[str, float]] = {}
    for i in range(len(jobs)):
        (ref, ref_t), (dev, dev_t) = emulator[i], cpu[i]
        _accumulate(
            benign,
            compare_traces(ref, dev, reference_tensors=ref_t, device_tensors=dev_t, tolerances=loose),
            worst=True,
        )
        (other, other_t) = emulator[len(jobs) + i]
        # A different seed's trace, presented as the same request: every stage after the noise differs.
        claimed = parse_trace(
            {
                **other.model_dump(mode="json"),
                "request": ref.request.model_dump(mode="json"),
                "request_id": ref.request_id,
            }
        )
        _accumulate(
            negative,
            compare_traces(ref, claimed, reference_tensors=ref_t, device_tensors=other_t, tolerances=loose),
            worst=False,
        )
    defaults = Tolerances()
    values: dict[str, Any] = {}
    separated: dict[str, bool] = {}
    for cls, field in (
        ("text_features", "text_features_pct"),
        ("condition_latent", "condition_latent_pct"),
        ("unet_out", "unet_out_pct"),
        ("latents", "latents_pct"),
        ("decoded", "decoded_pct"),
    ):
        measured = benign.get(cls, {}).get("pct_of_range")
        tol = getattr(defaults, field) if measured is None else max(measured * margin, 1e-4)
        values[field] = float(tol)
        neg = negative.get(cls, {}).get("pct_of_range")
        separated[cls] = neg is None or tol < neg
    psnr_benign = benign.get("image", {}).get("psnr_db")
    ssim_benign = benign.get("image", {}).get("ssim")
    values["image_psnr_db"] = float(psnr_benign - 3.0) if psnr_benign is not None else defaults.image_psnr_db
    values["image_ssim"] = float(ssim_benign - 0.05) if ssim_benign is not None else defaults.image_ssim
    neg_psnr = negative.get("image", {}).get("psnr_db")
    separated["image"] = neg_psnr is None or values["image_psnr_db"] > neg_psnr
    values["calibration"] = (
        f"benign pair qnn:{target} vs onnx:w8a16 (CPU EP) on {len(jobs)} requests at {size[0]}x{size[1]}, "
        f"{steps} steps: tolerance = worst benign error x {margin}; images: worst PSNR - 3 dB, "
        "worst SSIM - 0.05; negative control: same executor, seed + 1"
    )
    tolerances = Tolerances.model_validate(values)
    return {
        "tolerances": tolerances.model_dump(mode="json"),
        "benign_worst": benign,
        "negative_best": negative,
        "separated": separated,
        "requests": len(jobs),
        "target": target,
        "size": list(size),
        "steps": steps,
    }


def _accumulate(into: dict[str, dict[str, float]], report: Any, *, worst: bool) -> None:
    """Keep, per stage class, the worst (benign) or the best (negative) error seen."""
    for stage in report.stages:
        cls = _stage_class(stage.name)
        slot = into.setdefault(cls, {})
        for key in ("pct_of_range", "psnr_db", "ssim"):
            value = getattr(stage, key)
            if value is None or (key == "psnr_db" and not np.isfinite(value)):
                continue
            bigger_is_worse = key == "pct_of_range"
            take_max = bigger_is_worse == worst
            if key not in slot:
                slot[key] = float(value)
            else:
                slot[key] = float(max(slot[key], value) if take_max else min(slot[key], value))
        if cls in IMAGE_STAGES and "pct_of_range" in slot:
            slot.pop("pct_of_range")


def write_tolerances(bundle: Path, record: dict[str, Any]) -> str:
    """Store the calibration in the manifest (``parity.tolerances`` and ``.calibration``); new bundle id."""
    from model_runtime.bundle import MANIFEST_NAME, write_manifest

    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data.pop("files", None)
    parity = dict(data.get("parity") or {})
    parity["tolerances"] = record["tolerances"]
    parity["calibration"] = {k: v for k, v in record.items() if k != "tolerances"}
    data["parity"] = parity
    return write_manifest(bundle, data)
