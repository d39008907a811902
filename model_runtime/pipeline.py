"""Stages ②–⑥: the DreamLite-mobile pipeline — one loop over a backend-neutral component interface.

``Pipeline.run(specs)`` reproduces the official ``DreamLiteMobilePipeline`` (commit d379724 +
``infer_mobile.py``) for a batch of samples that share a :class:`~model_runtime.types.BatchKey`:

1. plan — validate each spec against the model's constants; resolve sizes (edits compute at the working
   size, official 1024², and are LANCZOS-resized back to the source size).
2. encode prompts — official template and task prefix → tokens → pre-final-norm text features → drop the
   first ``drop_idx`` tokens (34 generate / 64 edit); one encoder call per sample, so features never
   depend on the batch (and can be cached).
3. condition latents — all zeros for generate; the VAE latent of the source for edit (unscaled).
4. initial noise — per sample, from its own seeded source.
5. denoise — per step: concatenate [target | condition] along width, **one denoiser call for the whole
   batch** (ragged prompts zero-padded with mask 0), keep the left half, Euler update with the scheduler's
   arithmetic; per-step callback; per-sample cancel flags checked between steps.
6. decode — VAE decode, to uint8, resize back for edits.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_runtime.backends.base import Backend, TextEncoderInput
from model_runtime.cache import FeatureCache, feature_key
from model_runtime.dtypes import round_to
from model_runtime.errors import CanceledError, InvalidInputError
from model_runtime.noise import check_seed, initial_noise
from model_runtime.postprocess import to_uint8
from model_runtime.preprocess import num_image_tokens, resize_lanczos, smart_resize, vae_input, vlm_inputs
from model_runtime.prompts import build_prompt, build_unconditional_prompt
from model_runtime.sampler import Schedule, euler_step
from model_runtime.tokenization import PromptTokenizer
from model_runtime.types import (
    NOISE_SOURCES,
    TASKS,
    BatchKey,
    CancelFlag,
    GuidanceMode,
    Recipe,
    SampleResult,
    SampleSpec,
    StepCallback,
    StepEvent,
    Trace,
)

logger = logging.getLogger(__name__)

MAX_STEPS = 200
MAX_OUTPUT_SIDE = 8192


@dataclass(frozen=True, slots=True)
class _Branch:
    """One denoiser row of a sample: which text and which condition latent it uses."""

    text: str  # "cond" or "uncond"
    source_latent: bool


@dataclass(slots=True, eq=False)
class SamplePlan:
    """A validated spec with every size and default resolved."""

    index: int
    spec: SampleSpec
    steps: int
    work_size: tuple[int, int]
    out_size: tuple[int, int]
    key: BatchKey
    branches: tuple[_Branch, ...]
    guidance_scale: float | None
    image_guidance_scale: float | None
    vlm_image: NDArray[np.uint8] | None = None
    vae_image: NDArray[np.uint8] | None = None
    texts: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _TextFeatures:
    features: NDArray[np.float32]  # (L, D) after the drop
    input_ids: NDArray[np.int64] | None = None
    hidden: NDArray[np.float32] | None = None  # (T, D) before the drop (only when traced)
    pixel_values: NDArray[np.float32] | None = None
    grid: NDArray[np.int64] | None = None


class Pipeline:
    """The DreamLite pipeline over one loaded backend.

    Args:
        backend: A loaded backend (see :func:`model_runtime.backends.create_backend`).
        feature_cache: Optional prompt-feature cache shared across runs.
    """

    def __init__(self, backend: Backend, feature_cache: FeatureCache | None = None) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.config = backend.spec.config
        self.dtype = backend.info.dtype
        self.tokenizer = PromptTokenizer(backend.spec.tokenizer_file)
        self.feature_cache = feature_cache

    # ------------------------------------------------------------------ 1. plan
    def _check_size(self, width: int, height: int) -> None:
        cfg = self.config
        for name, value in (("width", width), ("height", height)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value % cfg.size_multiple
                or not cfg.min_size <= value <= cfg.max_size
            ):
                raise InvalidInputError(
                    name,
                    f"must be a multiple of {cfg.size_multiple} (the UNet halves the 8× latent twice).",
                    allowed=f"multiples of {cfg.size_multiple} from {cfg.min_size} to {cfg.max_size}",
                    given=value,
                )
        sizes = self.backend.supported_sizes()
        if sizes is not None and (width, height) not in sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in sizes)
            raise InvalidInputError(
                "size", "is not compiled into this bundle.", allowed=allowed, given=f"{width}x{height}"
            )

    def plan(self, spec: SampleSpec, index: int = 0) -> SamplePlan:
        """Validate one spec and resolve its sizes, steps and guidance.

        Raises:
            InvalidInputError: A value the model cannot take; the message names the field.
        """
        cfg = self.config
        if spec.task not in TASKS:
            raise InvalidInputError.one_of("task", TASKS, spec.task)
        if not isinstance(spec.prompt, str) or not spec.prompt.strip():
            raise InvalidInputError("prompt", "must be a non-empty string.", given=spec.prompt)
        check_seed(spec.seed)
        if spec.noise not in NOISE_SOURCES:
            raise InvalidInputError.one_of("noise", NOISE_SOURCES, spec.noise)
        steps = cfg.default_steps if spec.steps is None else spec.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise InvalidInputError(
                "steps", "must be an integer in range.", allowed=f"1 … {MAX_STEPS}", given=steps
            )
        if (spec.width is None) != (spec.height is None):
            missing = "height" if spec.height is None else "width"
            raise InvalidInputError(missing, "must be given together with the other side.", given=None)

        guidance: GuidanceMode = "none"
        g = gi = None
        if cfg.variant == "mobile":
            for name, value in (
                ("guidance_scale", spec.guidance_scale),
                ("image_guidance_scale", spec.image_guidance_scale),
            ):
                if value is not None:
                    raise InvalidInputError(
                        name,
                        "is not used by the distilled mobile model (it runs without guidance).",
                        allowed="omit it",
                        given=value,
                    )
        else:
            guidance = "cfg"
            g = cfg.guidance_scale if spec.guidance_scale is None else float(spec.guidance_scale)
            gi = (
                cfg.image_guidance_scale
                if spec.image_guidance_scale is None
                else float(spec.image_guidance_scale)
            )
            if not 0.0 <= g <= 50.0:
                raise InvalidInputError("guidance_scale", "is out of range.", allowed="0 … 50", given=g)
            if not 0.0 <= gi <= 50.0:
                raise InvalidInputError(
                    "image_guidance_scale", "is out of range.", allowed="0 … 50", given=gi
                )

        if spec.task == "generate":
            if spec.image is not None:
                raise InvalidInputError(
                    "image", "is only used by edits.", allowed="no image for generate", given="an image"
                )
            if spec.working_size is not None:
                raise InvalidInputError("working_size", "is only used by edits.", given=spec.working_size)
            width = cfg.default_size[0] if spec.width is None else spec.width
            height = cfg.default_size[1] if spec.height is None else spec.height
            self._check_size(width, height)
            work = out = (width, height)
            branches: tuple[_Branch, ...] = (
                (_Branch("cond", False),)
                if guidance == "none"
                else (_Branch("uncond", False), _Branch("cond", False))
            )
            image_guidance = None
        else:
            image = spec.image
            if (
                not isinstance(image, np.ndarray)
                or image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[2] != 3
                or min(image.shape[:2]) < 1
            ):
                raise InvalidInputError(
                    "image", "must be an RGB image.", allowed="(H, W, 3) uint8", given=None
                )
            work = cfg.edit_working_size if spec.working_size is None else tuple(spec.working_size)  # type: ignore[assignment]
            self._check_size(*work)
            if spec.width is None or spec.height is None:
                out = (int(image.shape[1]), int(image.shape[0]))
            else:
                out = (spec.width, spec.height)
                for name, value in (("width", spec.width), ("height", spec.height)):
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, int)
                        or not 1 <= value <= MAX_OUTPUT_SIDE
                    ):
                        raise InvalidInputError(
                            name, "is out of range.", allowed=f"1 … {MAX_OUTPUT_SIDE}", given=value
                        )
            branches = (
                (_Branch("cond", True),)
                if guidance == "none"
                else (_Branch("uncond", False), _Branch("uncond", True), _Branch("cond", True))
            )
            image_guidance = gi
        plan = SamplePlan(
            index=index,
            spec=spec,
            steps=steps,
            work_size=(int(work[0]), int(work[1])),
            out_size=(int(out[0]), int(out[1])),
            key=BatchKey(width=int(work[0]), height=int(work[1]), steps=steps, guidance=guidance),
            branches=branches,
            guidance_scale=g,
            image_guidance_scale=image_guidance,
        )
        plan.texts = {"cond": build_prompt(spec.task, spec.prompt)}
        if guidance == "cfg":
            plan.texts["uncond"] = build_unconditional_prompt(spec.task)
        if spec.task == "edit":
            assert spec.image is not None
            plan.vlm_image = resize_lanczos(spec.image, cfg.vlm_image_size)  # (h_vlm, w_vlm, 3) uint8
            plan.vae_image = resize_lanczos(spec.image, plan.work_size)  # (H, W, 3) uint8
        if self.backend.text_len is not None:
            self._check_text_length(plan)
        return plan

    def _check_text_length(self, plan: SamplePlan) -> None:
        """Static-shape bundles take at most ``text_len`` text tokens: refuse longer prompts up front."""
        assert self.backend.text_len is not None
        task = plan.spec.task
        drop = self.config.drop_idx_edit if task == "edit" else self.config.drop_idx_generate
        n_image = 0
        if task == "edit":
            proc = self.spec.processor_config
            ps, ms = int(proc.get("patch_size", 14)), int(proc.get("merge_size", 2))
            size = proc.get("size") or {}
            rh, rw = smart_resize(
                self.config.vlm_image_size[1],
                self.config.vlm_image_size[0],
                ps * ms,
                int(proc.get("min_pixels") or size.get("shortest_edge", 56 * 56)),
                int(proc.get("max_pixels") or size.get("longest_edge", 28 * 28 * 1280)),
            )
            n_image = (rh // ps) * (rw // ps) // (ms * ms)
        for template in plan.texts.values():
            length = int(self.tokenizer.encode(template, n_image).shape[0]) - drop
            if length > self.backend.text_len:
                raise InvalidInputError(
                    "prompt",
                    "is too long for this model bundle's static text length.",
                    allowed=f"at most {self.backend.text_len} text tokens after the template",
                    given=f"{length} tokens",
                )

    def batch_key(self, spec: SampleSpec) -> BatchKey:
        """The key a spec batches under (validates the spec)."""
        return self.plan(spec).key

    # ------------------------------------------------------------------ 2. text
    def _encode_text(self, plan: SamplePlan, which: str, traced: bool) -> _TextFeatures:
        task = plan.spec.task
        template = plan.texts[which]
        drop = self.config.drop_idx_edit if task == "edit" else self.config.drop_idx_generate
        key = feature_key(self.backend.info.encoder_id, template, drop, plan.vlm_image)
        if self.feature_cache is not None and not traced:
            cached = self.feature_cache.get(key)
            if cached is not None:
                return _TextFeatures(features=cached)
        pixel_values = grid = None
        n_image = 0
        if task == "edit":
            assert plan.vlm_image is not None
            pixel_values, grid = vlm_inputs(plan.vlm_image, self.spec.processor_config)
            n_image = num_image_tokens(grid, int(self.spec.processor_config.get("merge_size", 2)))
        ids = self.tokenizer.encode(template, n_image)  # (T,) int64
        if ids.shape[0] <= drop:
            raise InvalidInputError(
                "prompt", f"produced {ids.shape[0]} tokens, not more than the {drop} template tokens."
            )
        hidden = self.backend.text_encoder(TextEncoderInput(ids, pixel_values, grid))  # (T, D) float32
        hidden = round_to(hidden, self.dtype)
        features = np.ascontiguousarray(hidden[drop:])  # (L, D) float32
        if self.feature_cache is not None:
            self.feature_cache.put(key, features)
        if not traced:
            return _TextFeatures(features=features)
        return _TextFeatures(
            features=features, input_ids=ids, hidden=hidden, pixel_values=pixel_values, grid=grid
        )

    def _pad_text(self, rows: list[NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        longest = max(r.shape[0] for r in rows)
        length = longest if self.backend.text_len is None else self.backend.text_len
        if longest > length:
            raise InvalidInputError(
                "prompt",
                "is too long for this model bundle's static text length.",
                allowed=f"at most {length} text tokens after the template",
                given=f"{longest} tokens",
            )
        dim = rows[0].shape[1]
        text = np.zeros((len(rows), length, dim), dtype=np.float32)  # (R, L, D) zero padding
        mask = np.zeros((len(rows), length), dtype=np.int64)  # (R, L) 1 = real token
        for r, row in enumerate(rows):
            text[r, : row.shape[0]] = row
            mask[r, : row.shape[0]] = 1
        return text, mask

    # ------------------------------------------------------------------ run
    def run(
        self,
        specs: Sequence[SampleSpec],
        *,
        on_step: StepCallback | None = None,
        cancel_flags: Sequence[CancelFlag | None] | None = None,
        trace: bool = False,
    ) -> list[SampleResult]:
        """Run a batch of samples through one denoiser call per step.

        Args:
            specs: Samples sharing one batch key (generate and edit may mix).
            on_step: Called after every step with the active samples' latents.
            cancel_flags: One optional flag per spec; a set flag drops that sample between steps.
            trace: Record every intermediate in each result's :class:`Trace`.

        Returns:
            One result per spec, in order.

        Raises:
            InvalidInputError: A spec is invalid, or the specs do not share a batch key.
            CanceledError: Every sample was canceled.
        """
        if not specs:
            return []
        plans = [self.plan(s, i) for i, s in enumerate(specs)]
        key = plans[0].key
        for p in plans[1:]:
            if p.key != key:
                raise InvalidInputError(
                    "batch", "mixes samples with different batch keys.", given=f"{key} and {p.key}"
                )
        flags = list(cancel_flags) if cancel_flags is not None else [None] * len(plans)
        if len(flags) != len(plans):
            raise InvalidInputError("cancel_flags", "must have one entry per spec.", given=len(flags))
        dt = self.dtype
        width, height = key.width, key.height
        scale = self.spec.vae_scale
        h, w = height // scale, width // scale
        schedule = self.backend.schedule(width, height, key.steps)
        traces = [Trace() for _ in plans] if trace else None
        timings: dict[str, float] = {}

        # 2. text features, one encoder call per (sample, text)
        t0 = time.perf_counter()
        texts: list[dict[str, _TextFeatures]] = []
        for p in plans:
            texts.append({which: self._encode_text(p, which, trace) for which in p.texts})
        timings["text_encode"] = time.perf_counter() - t0

        # 3. condition latents
        t0 = time.perf_counter()
        channels = self.spec.latent_channels
        cond = np.zeros((len(plans), channels, h, w), dtype=np.float32)  # (B, 4, h, w) zeros for generate
        edit_rows = [i for i, p in enumerate(plans) if p.spec.task == "edit"]
        if edit_rows:
            images = np.stack([vae_input(plans[i].vae_image) for i in edit_rows])  # type: ignore[arg-type]
            images = round_to(images, dt)  # (E, 3, H, W) in the pipeline dtype
            cond[edit_rows] = round_to(self.backend.vae_encoder(images), dt)  # (E, 4, h, w)
        timings["vae_encode"] = time.perf_counter() - t0

        # 4. initial noise
        latents = np.concatenate(
            [initial_noise(p.spec.noise, p.spec.seed, (1, channels, h, w), dt) for p in plans]
        )  # (B, 4, h, w) float32
        time_ids = round_to(np.asarray([[width, height]], dtype=np.float32), dt)  # (1, 2) = [W, H]
        unet_t = schedule.unet_timesteps(dt)  # (N,) as the UNet sees them

        if traces is not None:
            self._trace_inputs(traces, plans, texts, cond, latents, time_ids, schedule, unet_t)

        # 5. denoise
        active = [i for i in range(len(plans)) if not _is_set(flags[i])]
        row_owner: list[int] = []
        t0 = time.perf_counter()
        for step in range(key.steps):
            if not active:
                break
            rows_sample, rows_cond, rows_text = [], [], []
            row_owner = []
            for i in active:
                for branch in plans[i].branches:
                    row_owner.append(i)
                    rows_sample.append(latents[i])
                    rows_cond.append(cond[i] if branch.source_latent else np.zeros_like(cond[i]))
                    rows_text.append(texts[i][branch.text].features)
            sample = np.concatenate([np.stack(rows_sample), np.stack(rows_cond)], axis=3)  # (R, 4, h, 2w)
            text, mask = self._pad_text(rows_text)  # (R, L, D), (R, L)
            n_rows = len(row_owner)
            out = self.backend.denoiser(
                sample,
                np.full((n_rows,), unet_t[step], dtype=np.float32),  # (R,)
                round_to(text, dt),
                mask,
                np.repeat(time_ids, n_rows, axis=0),  # (R, 2)
            )  # (R, 4, h, 2w) float32
            velocity = out[..., :w]  # (R, 4, h, w): the target half
            r = 0
            for i in active:
                k = len(plans[i].branches)
                v = self._combine(plans[i], velocity[r : r + k])  # (4, h, w)
                latents[i] = euler_step(
                    latents[i : i + 1],
                    v[None],
                    float(schedule.sigmas[step]),
                    float(schedule.sigmas[step + 1]),
                    dt,
                )[0]
                if traces is not None:
                    traces[i].add(f"step{step}_unet_out", out[r : r + k])
                    traces[i].add(f"step{step}_latents", latents[i : i + 1])
                r += k
            if on_step is not None:
                on_step(
                    StepEvent(
                        step=step + 1, total=key.steps, indices=tuple(active), latents=latents[active].copy()
                    )
                )
            active = [i for i in active if not _is_set(flags[i])]
        timings["denoise"] = time.perf_counter() - t0
        batch_size = len(plans)

        # 6. decode
        results: list[SampleResult] = []
        decoded_images: dict[int, NDArray[np.uint8]] = {}
        t0 = time.perf_counter()
        if active:
            decoded = round_to(self.backend.vae_decoder(latents[active]), dt)  # (A, 3, H, W)
            images8 = to_uint8(decoded, dt)  # (A, H, W, 3) uint8
            for j, i in enumerate(active):
                image = images8[j]
                if traces is not None:
                    traces[i].add("decoded", decoded[j : j + 1])
                    if plans[i].spec.task == "edit":
                        traces[i].add(f"output_{_size_tag(plans[i].work_size)}", image)
                if plans[i].spec.task == "edit":
                    image = resize_lanczos(image, plans[i].out_size)
                if traces is not None:
                    traces[i].add("output", image)
                decoded_images[i] = image
        timings["decode"] = time.perf_counter() - t0
        for i, p in enumerate(plans):
            recipe = Recipe(
                task=p.spec.task,
                seed=p.spec.seed,
                noise=p.spec.noise,
                steps=key.steps,
                sigmas=tuple(float(s) for s in schedule.sigmas),
                timesteps=tuple(float(t) for t in unet_t),
                width=p.out_size[0],
                height=p.out_size[1],
                working_width=width,
                working_height=height,
                dtype=dt,
                guidance_scale=p.guidance_scale,
                image_guidance_scale=p.image_guidance_scale,
                batch_size=batch_size,
            )
            image = decoded_images.get(i)
            results.append(
                SampleResult(
                    index=i,
                    status="succeeded" if image is not None else "canceled",
                    image=image,
                    recipe=recipe,
                    trace=traces[i] if traces is not None else None,
                    timings=dict(timings),
                )
            )
        if not decoded_images:
            raise CanceledError("every sample of the run was canceled")
        return results

    def _combine(self, plan: SamplePlan, v: NDArray[np.float32]) -> NDArray[np.float32]:
        """Guidance: none (mobile), text CFG (base generate) or text + image CFG (base edit)."""
        if len(plan.branches) == 1:
            only: NDArray[np.float32] = v[0]
            return only
        dt = self.dtype
        g = np.float32(plan.guidance_scale or 0.0)
        if len(plan.branches) == 2:  # [uncond, cond]
            diff = round_to(v[1] - v[0], dt)
            return round_to(v[0] + round_to(g * diff, dt), dt)
        gi = np.float32(plan.image_guidance_scale or 0.0)  # [∅, image, text+image]
        text_term = round_to(g * round_to(v[2] - v[1], dt), dt)
        image_term = round_to(gi * round_to(v[1] - v[0], dt), dt)
        return round_to(round_to(v[0] + text_term, dt) + image_term, dt)

    def _trace_inputs(
        self,
        traces: list[Trace],
        plans: list[SamplePlan],
        texts: list[dict[str, _TextFeatures]],
        cond: NDArray[np.float32],
        noise: NDArray[np.float32],
        time_ids: NDArray[np.float32],
        schedule: Schedule,
        unet_t: NDArray[np.float32],
    ) -> None:
        for i, (tr, p) in enumerate(zip(traces, plans, strict=True)):
            tr.meta.update(
                {
                    "task": p.spec.task,
                    "seed": p.spec.seed,
                    "noise": p.spec.noise,
                    "steps": p.steps,
                    "working_size": list(p.work_size),
                    "output_size": list(p.out_size),
                    "dtype": self.dtype,
                    "backend": self.backend.info.name,
                    "provider": self.backend.info.provider,
                    "model_id": self.config.model_id,
                    "drop_idx": self.config.drop_idx_edit
                    if p.spec.task == "edit"
                    else self.config.drop_idx_generate,
                    "mu": schedule.mu,
                    "prompt_sha256": hashlib.sha256(p.spec.prompt.encode()).hexdigest(),
                }
            )
            if p.spec.task == "edit":
                assert p.spec.image is not None
                assert p.vlm_image is not None
                assert p.vae_image is not None
                tr.add("source", p.spec.image)
                tr.add(f"source_vlm_{_size_tag(self.config.vlm_image_size)}", p.vlm_image)
                tr.add(f"source_vae_{_size_tag(p.work_size)}", p.vae_image)
            for which, feats in texts[i].items():
                prefix = "" if which == "cond" else "uncond_"
                assert feats.input_ids is not None
                assert feats.hidden is not None
                if feats.pixel_values is not None and which == "cond":
                    tr.add("vlm_pixel_values", feats.pixel_values)
                    tr.add("image_grid_thw", feats.grid)  # type: ignore[arg-type]
                tr.add(f"{prefix}input_ids", feats.input_ids[None])
                tr.add(f"{prefix}text_attention_mask", np.ones_like(feats.input_ids)[None])
                tr.add(f"{prefix}text_hidden_last", feats.hidden[None])
                tr.add(f"{prefix}prompt_embeds", feats.features[None])
                tr.add(f"{prefix}prompt_mask", np.ones((1, feats.features.shape[0]), dtype=np.int64))
            tr.add("time_ids", time_ids)
            tr.add("noise", noise[i : i + 1])
            tr.add("cond_latent", cond[i : i + 1])
            tr.add("sigmas", schedule.sigmas)
            tr.add("timesteps", unet_t)

    def describe(self) -> dict[str, Any]:
        """Model facts for ``/v1/models`` and recipes."""
        cfg = self.config
        return {
            "model_id": cfg.model_id,
            "variant": cfg.variant,
            "backend": self.backend.info.name,
            "device": self.backend.info.device,
            "dtype": self.dtype,
            "provider": self.backend.info.provider,
            "default_size": list(cfg.default_size),
            "edit_working_size": list(cfg.edit_working_size),
            "default_steps": cfg.default_steps,
            "size_multiple": cfg.size_multiple,
            "min_size": cfg.min_size,
            "max_size": cfg.max_size,
            "supported_sizes": self.backend.supported_sizes(),
            "guidance": "none" if cfg.variant == "mobile" else "cfg",
        }


def _is_set(flag: CancelFlag | None) -> bool:
    return flag is not None and flag.is_set()


def _size_tag(size: tuple[int, int]) -> str:
    """``1024`` for 1024×1024, ``320x192`` otherwise (the conformance file-name convention)."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def load_pipeline(
    source: str | Any,
    *,
    backend: str = "torch",
    feature_cache: FeatureCache | None = None,
    **options: Any,
) -> Pipeline:
    """Load a model on a backend and wrap it in a :class:`Pipeline`.

    Args:
        source: A DreamLite folder (torch) or device bundle (onnx, qnn).
        backend: ``torch``, ``onnx`` or ``qnn``.
        feature_cache: Optional prompt-feature cache.
        **options: Backend options (``device``, ``dtype``, ``target`` …).
    """
    from model_runtime.backends import create_backend

    return Pipeline(create_backend(backend, source, **options), feature_cache=feature_cache)
