"""Parity ⑧ replay: rerun one stage on the server from the device's own input to that stage.

If the server, given exactly the device's input to stage *k*, reproduces the device's output of stage *k*
bit for bit, the stage computes the same function on both sides and the difference was **inherited**
from upstream; if the replay differs within the declared tolerance the stage computes slightly
differently on the two executors (expected across compute units); beyond it, stage *k* itself
**diverges**. The stage functions below are the pipeline's own components (the backend's graphs, the
sampler's Euler arithmetic, the postprocess), not a second implementation.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model_runtime.backends.base import TextEncoderInput
from model_runtime.dtypes import round_to
from model_runtime.errors import InvalidInputError
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.compare import StageResult, Tolerances, _measure
from model_runtime.parity.tensors import tensor_sha256
from model_runtime.pipeline import Pipeline
from model_runtime.postprocess import to_uint8
from model_runtime.sampler import euler_step

ReplayOutcome = Literal["inherited", "stage_differs_within_tolerance", "stage_diverges"]
REPLAYABLE = ("text_features", "condition_latent", "stepN.unet_out", "stepN.latents", "decoded", "image")


def _previous_latents(stage_index: int, tensors: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
    key = "noise" if stage_index == 0 else f"step{stage_index - 1}.latents"
    return tensors[key].astype(np.float32)


def replay_stage(
    pipeline: Pipeline,
    request: CanonicalRequest,
    stage: str,
    device_tensors: dict[str, NDArray[Any]],
) -> NDArray[Any]:
    """Recompute ``stage`` on the server from the device's inputs to it.

    Raises:
        InvalidInputError: The stage cannot be replayed, or a needed device tensor is missing.
    """
    try:
        dt = pipeline.dtype
        width, height = request.working_width, request.working_height
        w = width // pipeline.spec.vae_scale
        if stage == "text_features":
            pixels = grid = None
            if request.task == "edit":
                pixels = device_tensors["vlm_pixels"].astype(np.float32)
                from model_runtime.preprocess import vlm_inputs

                _, grid = vlm_inputs(device_tensors["source_vlm"], pipeline.spec.processor_config)
            ids = device_tensors["tokens"].reshape(-1).astype(np.int64)
            hidden = round_to(pipeline.backend.text_encoder(TextEncoderInput(ids, pixels, grid)), dt)
            drop = (
                pipeline.config.drop_idx_edit if request.task == "edit" else pipeline.config.drop_idx_generate
            )
            return hidden[drop:][None]
        if stage == "condition_latent":
            if request.task == "generate":
                return np.zeros_like(device_tensors["noise"], dtype=np.float32)
            from model_runtime.preprocess import vae_input

            images = round_to(vae_input(device_tensors["source_vae"])[None], dt)
            return round_to(pipeline.backend.vae_encoder(images), dt)
        if stage.startswith("step"):
            index_text, kind = stage[4:].split(".", 1)
            i = int(index_text)
            schedule = pipeline.backend.schedule(width, height, request.steps)
            latents = _previous_latents(i, device_tensors)
            if kind == "unet_out":
                text = device_tensors["text_features"].astype(np.float32)
                sample = np.concatenate(
                    [latents, device_tensors["condition_latent"].astype(np.float32)], axis=3
                )
                time_ids = round_to(np.asarray([[width, height]], dtype=np.float32), dt)
                text_pad, mask = pipeline._pad_text([text[0]])
                return pipeline.backend.denoiser(
                    sample, schedule.unet_timesteps(dt)[i : i + 1], round_to(text_pad, dt), mask, time_ids
                )
            if kind == "latents":
                velocity = device_tensors[f"step{i}.unet_out"].astype(np.float32)[..., :w]
                return euler_step(
                    latents, velocity, float(schedule.sigmas[i]), float(schedule.sigmas[i + 1]), dt
                )
        if stage == "decoded":
            last = f"step{request.steps - 1}.latents"
            decoded: NDArray[np.float32] = pipeline.backend.vae_decoder(
                device_tensors[last].astype(np.float32)
            )
            return round_to(decoded, dt)
        if stage == "image":
            image: NDArray[np.uint8] = to_uint8(device_tensors["decoded"].astype(np.float32), dt)[0]
            return image
    except KeyError as err:
        missing = err.args[0]
        raise InvalidInputError(
            "tensors", f"lacks the device's `{missing}` needed to replay `{stage}`."
        ) from err
    raise InvalidInputError("stage", "cannot be replayed.", allowed=", ".join(REPLAYABLE), given=stage)


def replay_report(
    pipeline: Pipeline,
    request: CanonicalRequest,
    stage: str,
    device_tensors: dict[str, NDArray[Any]],
    tolerances: Tolerances | None = None,
) -> dict[str, Any]:
    """Replay ``stage`` and say whether it diverges by itself or inherited the divergence."""
    tol = tolerances or Tolerances()
    replayed = replay_stage(pipeline, request, stage, device_tensors)
    device_out = device_tensors[stage]
    if replayed.dtype != device_out.dtype:
        replayed = replayed.astype(device_out.dtype)
    if tensor_sha256(replayed) == tensor_sha256(device_out):
        result = StageResult(
            name=stage,
            verdict="bit_exact",
            sha256_match=True,
            reference_sha256=None,
            device_sha256=None,
            max_abs=0.0,
        )
    else:
        result = _measure(stage, replayed, device_out, tol)
    outcome: ReplayOutcome = {
        "bit_exact": "inherited",
        "within_tolerance": "stage_differs_within_tolerance",
        "mismatch": "stage_diverges",
    }[result.verdict]  # type: ignore[assignment]
    explanation = {
        "inherited": f"given the device's own inputs, the server reproduces `{stage}` bit for bit: the "
        "difference was inherited from an earlier stage",
        "stage_differs_within_tolerance": f"given the device's own inputs, the server's `{stage}` differs "
        "within tolerance: this stage computes slightly differently on the two executors",
        "stage_diverges": f"given the device's own inputs, the server's `{stage}` differs beyond tolerance: "
        "this stage itself diverges",
    }[outcome]
    return {
        "stage": stage,
        "outcome": outcome,
        "comparison": result.model_dump(mode="json"),
        "explanation": explanation,
    }
