"""Parity ⑧ verify: stage-by-stage comparison of two traces, verdicts, and the first divergent stage.

Per stage the verdict is

* ``bit_exact`` — equal canonical SHA-256 (same dtype, shape and bits);
* ``within_tolerance`` — not equal, but the error is inside the declared tolerance for that stage class;
* ``mismatch`` — outside it, a shape/dtype difference, or any difference on an exact-only stage (tokens,
  noise, resized source images, VLM pixels: these are specified bit for bit).

With both tensors available the error is measured (max |Δ|, % of the reference range, PSNR, and SSIM for
images); with only the device's trace document it is *estimated* from the projection fingerprints. The
overall verdict is the weakest stage's; the first divergent stage is the first that is not bit-exact, and
the first mismatch stage the first that fails its tolerance.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from model_runtime.parity.tensors import estimated_l2
from model_runtime.parity.trace import ParityTrace, StageRecord

Verdict = Literal["bit_exact", "within_tolerance", "mismatch"]
VERDICT_ORDER: dict[str, int] = {"bit_exact": 0, "within_tolerance": 1, "mismatch": 2}
EXACT_STAGES = {"tokens", "noise", "source_vlm", "source_vae", "vlm_pixels"}
IMAGE_STAGES = {"image", "output"}


class Tolerances(BaseModel):
    """Declared tolerances (bundle manifest ``parity.tolerances``); see docs/parity.md for calibration."""

    model_config = ConfigDict(extra="forbid")

    text_features_pct: float = Field(default=2.0, description="max |Δ| as % of the reference range")
    condition_latent_pct: float = 2.0
    unet_out_pct: float = 5.0
    latents_pct: float = 5.0
    decoded_pct: float = 8.0
    image_psnr_db: float = Field(default=28.0, description="minimum PSNR (peak 255) of RGB8 images")
    image_ssim: float = Field(default=0.90, description="minimum SSIM of RGB8 images")
    estimated_rel_rmse: float = Field(
        0.05, description="fingerprint-estimated RMSE / reference std, no tensors"
    )
    calibration: str = "defaults; see docs/parity.md"

    def pct_for(self, stage: str) -> float:
        """The % of range tolerance of a float stage."""
        if stage == "text_features":
            return self.text_features_pct
        if stage == "condition_latent":
            return self.condition_latent_pct
        if stage.endswith(".unet_out"):
            return self.unet_out_pct
        if stage.endswith(".latents"):
            return self.latents_pct
        return self.decoded_pct


class StageResult(BaseModel):
    """The comparison of one stage."""

    name: str
    verdict: Verdict
    sha256_match: bool
    reference_sha256: str | None
    device_sha256: str | None
    shape_match: bool = True
    max_abs: float | None = None
    pct_of_range: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    equal_fraction: float | None = None
    estimated: bool = False
    note: str = ""


class ParityReport(BaseModel):
    """The answer to "did the device compute what the server computes, and where did it start to differ"."""

    format: Literal["dreamlite-parity-report/1"] = "dreamlite-parity-report/1"
    request_id: str
    verdict: Verdict
    first_divergent_stage: str | None
    first_mismatch_stage: str | None
    stages: list[StageResult]
    environment_diff: list[dict[str, Any]]
    reference_executor: dict[str, Any]
    device_executor: dict[str, Any]
    tolerances: Tolerances
    replay: dict[str, Any] | None = None


def psnr(reference: NDArray[Any], other: NDArray[Any], peak: float) -> float:
    """PSNR in dB, ``20·log10(peak / RMSE)``; +inf when equal."""
    d = reference.astype(np.float64) - other.astype(np.float64)
    rmse = math.sqrt(float(np.mean(d * d)))
    return math.inf if rmse == 0 else 20.0 * math.log10(max(peak, 1e-12) / rmse)


def _gaussian_filter(x: NDArray[np.float64], sigma: float = 1.5, radius: int = 5) -> NDArray[np.float64]:
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    n = 2 * radius
    rows = sum(taps[k] * x[k : x.shape[0] - n + k] for k in range(n + 1))  # valid filtering along H
    rows = np.asarray(rows, dtype=np.float64)
    cols = sum(taps[k] * rows[:, k : rows.shape[1] - n + k] for k in range(n + 1))  # and along W
    return np.asarray(cols, dtype=np.float64)


def ssim(reference: NDArray[np.uint8], other: NDArray[np.uint8]) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian σ 1.5, 11×11, K1 0.01, K2 0.03, peak 255) over RGB channels."""
    if min(reference.shape[:2]) < 11:
        return (
            1.0
            if np.array_equal(reference, other)
            else float(1.0 - np.abs(reference.astype(np.float64) - other.astype(np.float64)).mean() / 255.0)
        )
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(reference.shape[2]):
        x = reference[..., c].astype(np.float64)
        y = other[..., c].astype(np.float64)
        mx, my = _gaussian_filter(x), _gaussian_filter(y)
        sxx = _gaussian_filter(x * x) - mx * mx
        syy = _gaussian_filter(y * y) - my * my
        sxy = _gaussian_filter(x * y) - mx * my
        num = (2 * mx * my + c1) * (2 * sxy + c2)
        den = (mx * mx + my * my + c1) * (sxx + syy + c2)
        values.append(float((num / den).mean()))
    return float(np.mean(values))


def _measure(name: str, ref: NDArray[Any], dev: NDArray[Any], tol: Tolerances) -> StageResult:
    result = StageResult(
        name=name, verdict="mismatch", sha256_match=False, reference_sha256=None, device_sha256=None
    )
    if ref.shape != dev.shape or ref.dtype != dev.dtype:
        result.shape_match = False
        result.note = f"shape/dtype {dev.shape}/{dev.dtype} vs reference {ref.shape}/{ref.dtype}"
        return result
    d = np.abs(ref.astype(np.float64) - dev.astype(np.float64))
    result.max_abs = float(d.max()) if d.size else 0.0
    result.equal_fraction = float((d == 0).mean()) if d.size else 1.0
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    result.pct_of_range = (
        100.0 * result.max_abs / span if span > 0 else (0.0 if result.max_abs == 0 else math.inf)
    )
    if name in EXACT_STAGES:
        result.note = "exact-only stage: any difference is a mismatch"
        return result
    if name in IMAGE_STAGES:
        result.psnr_db = psnr(ref, dev, 255.0)
        result.ssim = ssim(ref, dev)
        ok = result.psnr_db >= tol.image_psnr_db and result.ssim >= tol.image_ssim
    else:
        result.psnr_db = psnr(ref, dev, span)
        ok = result.pct_of_range <= tol.pct_for(name)
    result.verdict = "within_tolerance" if ok else "mismatch"
    return result


def _estimate(name: str, ref: StageRecord, dev: StageRecord, tol: Tolerances) -> StageResult:
    result = StageResult(
        name=name,
        verdict="mismatch",
        sha256_match=False,
        reference_sha256=None,
        device_sha256=None,
        estimated=True,
    )
    if ref.shape != dev.shape or ref.dtype != dev.dtype:
        result.shape_match = False
        result.note = f"shape/dtype {dev.shape}/{dev.dtype} vs reference {ref.shape}/{ref.dtype}"
        return result
    if name in EXACT_STAGES:
        result.note = "exact-only stage: any difference is a mismatch"
        return result
    count = max(ref.stats.get("count", 1.0), 1.0)
    rmse = estimated_l2(ref.fingerprint, dev.fingerprint) / math.sqrt(count)
    scale = ref.stats.get("std", 0.0) or 1.0
    rel = rmse / scale
    result.note = f"no tensors: estimated RMSE {rmse:.4g} = {rel:.3%} of the reference std (fingerprints)"
    if name in IMAGE_STAGES and rmse > 0:
        result.psnr_db = 20.0 * math.log10(255.0 / rmse)
    result.verdict = "within_tolerance" if rel <= tol.estimated_rel_rmse else "mismatch"
    return result


def environment_diff(reference: ParityTrace, device: ParityTrace) -> list[dict[str, Any]]:
    """Fields of executor/environment/request that differ (listed first in reports: they explain most)."""
    out: list[dict[str, Any]] = []
    for section in ("executor", "environment"):
        a: dict[str, Any] = getattr(reference, section)
        b: dict[str, Any] = getattr(device, section)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append({"field": f"{section}.{key}", "reference": a.get(key), "device": b.get(key)})
    ra, rb = reference.request.model_dump(mode="json"), device.request.model_dump(mode="json")
    for key in sorted(set(ra) | set(rb)):
        if ra.get(key) != rb.get(key):
            out.append({"field": f"request.{key}", "reference": ra.get(key), "device": rb.get(key)})
    return out


def compare_traces(
    reference: ParityTrace,
    device: ParityTrace,
    *,
    reference_tensors: dict[str, NDArray[Any]] | None = None,
    device_tensors: dict[str, NDArray[Any]] | None = None,
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Compare a device trace with the reference trace of the same request.

    Args:
        reference: The server's trace (the reference executor).
        device: The device's trace.
        reference_tensors: The reference's stage tensors, when available.
        device_tensors: The device's stage tensors, when uploaded (enables measured errors).
        tolerances: Declared tolerances (default: :class:`Tolerances` defaults).

    Returns:
        The report; stages follow the reference's order, stages the device lacks are mismatches.
    """
    tol = tolerances or Tolerances()
    results: list[StageResult] = []
    for ref in reference.stages:
        dev = device.stage(ref.name)
        if dev is None:
            results.append(
                StageResult(
                    name=ref.name,
                    verdict="mismatch",
                    sha256_match=False,
                    reference_sha256=ref.sha256,
                    device_sha256=None,
                    note="stage missing from the device trace",
                )
            )
            continue
        if ref.sha256 == dev.sha256:
            results.append(
                StageResult(
                    name=ref.name,
                    verdict="bit_exact",
                    sha256_match=True,
                    reference_sha256=ref.sha256,
                    device_sha256=dev.sha256,
                    max_abs=0.0,
                    equal_fraction=1.0,
                )
            )
            continue
        if reference_tensors is not None and device_tensors is not None and ref.name in device_tensors:
            result = _measure(ref.name, reference_tensors[ref.name], device_tensors[ref.name], tol)
        else:
            result = _estimate(ref.name, ref, dev, tol)
        result.reference_sha256, result.device_sha256 = ref.sha256, dev.sha256
        results.append(result)
    overall: Verdict = max((r.verdict for r in results), key=lambda v: VERDICT_ORDER[v], default="bit_exact")
    first_div = next((r.name for r in results if r.verdict != "bit_exact"), None)
    first_mis = next((r.name for r in results if r.verdict == "mismatch"), None)
    return ParityReport(
        request_id=reference.request_id,
        verdict=overall,
        first_divergent_stage=first_div,
        first_mismatch_stage=first_mis,
        stages=results,
        environment_diff=environment_diff(reference, device),
        reference_executor=reference.executor,
        device_executor=device.executor,
        tolerances=tol,
    )
