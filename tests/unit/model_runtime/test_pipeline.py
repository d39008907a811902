"""Stages ②–⑥: batched execution, determinism, hooks, validation, dtypes and the guided base variant."""

from __future__ import annotations

import json
import shutil
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_runtime import InvalidInputError, Pipeline, SampleSpec, StepEvent, load_pipeline
from model_runtime.errors import CanceledError
from tests.conftest import CASES, TINY_MODEL

BATCH_TOL = 1e-4
SOURCE = np.asarray(Image.open(CASES / "edit_1024" / "source.png").convert("RGB"))


def edit_source(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8)


def mixed_specs() -> list[SampleSpec]:
    """Generate and edit mixed, ragged prompt lengths, different seeds and noise sources, one batch key."""
    return [
        SampleSpec("generate", "a red apple", 1, width=256, height=256),
        SampleSpec(
            "edit",
            "make the sky purple and add a small boat on the lake",
            2,
            image=SOURCE,
            working_size=(256, 256),
        ),
        SampleSpec(
            "generate",
            "a small blue boat on a calm lake at sunrise, mountains in the distance",
            3,
            width=256,
            height=256,
            noise="dln1",
        ),
        SampleSpec(
            "edit", "remove the tree", 4, image=edit_source(0), working_size=(256, 256), width=64, height=64
        ),
    ]


def max_float_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for name, value in a.items():
        if value.dtype.kind == "f":
            d = float(np.abs(value.astype(np.float64) - b[name].astype(np.float64)).max())
            if d > worst:
                worst, where = d, name
    return worst, where


def test_batch_equals_solo_runs(tiny_pipeline: Pipeline) -> None:
    specs = mixed_specs()
    calls: list[tuple[int, ...]] = []
    original = tiny_pipeline.backend.denoiser

    def spy(sample: np.ndarray, *args: Any) -> np.ndarray:
        calls.append(sample.shape)
        return original(sample, *args)

    tiny_pipeline.backend.denoiser = spy  # type: ignore[misc]
    try:
        batch = tiny_pipeline.run(specs, trace=True)
    finally:
        tiny_pipeline.backend.denoiser = original  # type: ignore[misc]
    assert calls == [(4, 4, 32, 64)] * 4, "one denoiser call per step for the whole batch"
    lengths = {r.trace.arrays["prompt_embeds"].shape[1] for r in batch}  # type: ignore[union-attr]
    assert len(lengths) == 4, "prompts must be ragged so padding and masking are exercised"
    worst = 0.0
    for spec, batched in zip(specs, batch, strict=True):
        solo = tiny_pipeline.run([spec], trace=True)[0]
        assert batched.recipe.batch_size == 4
        assert solo.recipe.batch_size == 1
        d, where = max_float_diff(solo.trace.arrays, batched.trace.arrays)  # type: ignore[union-attr]
        assert d <= BATCH_TOL, f"{spec.task} seed {spec.seed}: {where} differs by {d:.3g}"
        worst = max(worst, d)
        assert batched.image is not None
        assert solo.image is not None
        assert batched.image.shape == solo.image.shape
        assert int(np.abs(batched.image.astype(int) - solo.image.astype(int)).max()) <= 1
    print(f"batch-vs-solo max abs difference over all float intermediates: {worst:.3g}")


def test_two_runs_are_bit_identical(tiny_pipeline: Pipeline) -> None:
    specs = mixed_specs()[:2]
    first = tiny_pipeline.run(specs, trace=True)
    fresh = load_pipeline(TINY_MODEL)
    second = fresh.run(specs, trace=True)
    for a, b in zip(first, second, strict=True):
        for name, value in a.trace.arrays.items():  # type: ignore[union-attr]
            np.testing.assert_array_equal(value, b.trace.arrays[name], err_msg=name)  # type: ignore[union-attr]


def test_on_step_and_cancel_between_steps(tiny_pipeline: Pipeline) -> None:
    specs = mixed_specs()[:3]
    flags = [threading.Event() for _ in specs]
    events: list[StepEvent] = []

    def on_step(event: StepEvent) -> None:
        events.append(event)
        if event.step == 2:
            flags[1].set()

    results = tiny_pipeline.run(specs, on_step=on_step, cancel_flags=flags)
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.total == 4 for e in events)
    assert [e.indices for e in events] == [(0, 1, 2), (0, 1, 2), (0, 2), (0, 2)]
    assert events[0].latents.shape == (3, 4, 32, 32)
    assert [r.status for r in results] == ["succeeded", "canceled", "succeeded"]
    assert results[1].image is None
    for i in (0, 2):  # the others finish undisturbed (within the batch tolerance of their solo run)
        solo = tiny_pipeline.run([specs[i]])[0]
        assert int(np.abs(results[i].image.astype(int) - solo.image.astype(int)).max()) <= 1  # type: ignore[union-attr]


def test_all_canceled_raises(tiny_pipeline: Pipeline) -> None:
    flag = threading.Event()
    flag.set()
    with pytest.raises(CanceledError):
        tiny_pipeline.run(mixed_specs()[:1], cancel_flags=[flag])


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SampleSpec("generate", "x", 0, width=100, height=256), "width"),
        (SampleSpec("generate", "x", 0, width=256, height=4096), "height"),
        (SampleSpec("generate", "x", 0, width=256), "height"),
        (SampleSpec("generate", "", 0), "prompt"),
        (SampleSpec("generate", "x", -1), "seed"),
        (SampleSpec("generate", "x", 2**64), "seed"),
        (SampleSpec("generate", "x", 0, steps=0), "steps"),
        (SampleSpec("generate", "x", 0, noise="numpy"), "noise"),  # type: ignore[arg-type]
        (SampleSpec("generate", "x", 0, guidance_scale=3.0), "guidance_scale"),
        (SampleSpec("generate", "x", 0, image=SOURCE), "image"),
        (SampleSpec("edit", "x", 0), "image"),
        (SampleSpec("edit", "x", 0, image=SOURCE, working_size=(250, 256)), "width"),
        (SampleSpec("paint", "x", 0), "task"),  # type: ignore[arg-type]
    ],
)
def test_invalid_specs_name_the_field(tiny_pipeline: Pipeline, spec: SampleSpec, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        tiny_pipeline.plan(spec)
    assert info.value.field == field
    assert f"`{field}`" in str(info.value)


def test_mixed_batch_keys_are_refused(tiny_pipeline: Pipeline) -> None:
    specs = [
        SampleSpec("generate", "x", 0, width=256, height=256),
        SampleSpec("generate", "x", 0, width=320, height=256),
    ]
    with pytest.raises(InvalidInputError, match="batch keys"):
        tiny_pipeline.run(specs)


def test_batch_key_ignores_the_task(tiny_pipeline: Pipeline) -> None:
    gen, edit = mixed_specs()[:2]
    assert tiny_pipeline.batch_key(gen) == tiny_pipeline.batch_key(edit)


def official_torch_loop(dtype: str, prompt: str, seed: int, size: int) -> dict[str, np.ndarray]:
    """The official mobile pipeline's generate loop written directly in torch, in ``dtype``.

    Mirrors ``DreamLiteMobilePipeline.__call__``: features in the pipeline dtype, noise drawn in that dtype,
    ``t.expand(B).to(latents.dtype)``, ``scheduler.step`` (fp32 upcast inside), VAE decode, postprocess.
    """
    import torch
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLForConditionalGeneration

    from model_runtime.backends.torch_backend import prefinal_text_states
    from model_runtime.prompts import build_prompt
    from model_runtime.tokenization import PromptTokenizer

    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    unet = DreamLiteUNetModel.from_pretrained(TINY_MODEL, subfolder="unet", torch_dtype=tdt).eval()
    vae = AutoencoderTiny.from_pretrained(TINY_MODEL, subfolder="vae", torch_dtype=tdt).eval()
    te = Qwen3VLForConditionalGeneration.from_pretrained(TINY_MODEL / "text_encoder", dtype=tdt).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(TINY_MODEL, subfolder="scheduler")
    ids = torch.from_numpy(
        PromptTokenizer(TINY_MODEL / "tokenizer" / "tokenizer.json").encode(build_prompt("generate", prompt))
    )[None]
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        embeds = prefinal_text_states(te, ids, torch.ones_like(ids))[:, 34:].to(tdt)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        lat = torch.randn(
            (1, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(seed), dtype=tdt
        )
        cond = torch.zeros_like(lat)
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * ((size // 16) ** 2 - 256)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=mu)
        time_ids = torch.tensor([[size, size]], dtype=tdt)
        for i, t in enumerate(scheduler.timesteps):
            pred = unet(
                torch.cat([lat, cond], dim=3),
                t.expand(1).to(lat.dtype),
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                added_cond_kwargs={"time_ids": time_ids},
                return_dict=False,
            )[0]
            lat = scheduler.step(pred[..., : size // 8], t, lat, return_dict=False)[0]
            out[f"step{i}_latents"] = lat.float().numpy()
        image = vae.decode(lat, return_dict=False)[0]
        image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
        out["output"] = (image * 255).round().astype(np.uint8)[0]
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_is_bit_identical_to_the_official_loop(dtype: str) -> None:
    """bf16/fp16: timesteps rounded like the official cast, and every step bit-identical to a torch loop."""
    import torch

    pipe = load_pipeline(TINY_MODEL, dtype=dtype)
    result = pipe.run([SampleSpec("generate", "a red apple", 42, width=128, height=128)], trace=True)[0]
    assert result.recipe.dtype == dtype
    tr = result.trace.arrays  # type: ignore[union-attr]
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    np.testing.assert_array_equal(
        tr["timesteps"], torch.from_numpy(tr["timesteps"]).to(torch_dtype).float().numpy()
    )
    assert not np.array_equal(tr["timesteps"], pipe.backend.schedule(128, 128, 4).timesteps), "rounded"
    reference = official_torch_loop(dtype, "a red apple", 42, 128)
    for name, value in reference.items():
        np.testing.assert_array_equal(tr[name], value, err_msg=name)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    spec = SampleSpec("generate", "a red apple", 42, width=256, height=256)
    cpu = load_pipeline(TINY_MODEL).run([spec], trace=True)[0]
    gpu = load_pipeline(TINY_MODEL, device="cuda").run([spec], trace=True)[0]
    d, where = max_float_diff(cpu.trace.arrays, gpu.trace.arrays)  # type: ignore[union-attr]
    assert d < 1e-3, where
    for dtype in ("bfloat16", "float16"):
        assert load_pipeline(TINY_MODEL, device="cuda", dtype=dtype).run([spec])[0].image is not None


@pytest.fixture(scope="module")
def base_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The tiny model declared as DreamLite-base (guided): same networks, official base constants."""
    dst = tmp_path_factory.mktemp("base") / "model"
    shutil.copytree(TINY_MODEL, dst)
    index_path = dst / "model_index.json"
    index_path.chmod(0o644)
    index = json.loads(index_path.read_text())
    index["_class_name"] = "DreamLitePipeline"
    index_path.write_text(json.dumps(index))
    # Same VLM size as mobile, so guided runs can be compared with the unguided tiny pipeline.
    (dst / "dreamlite.json").write_text(json.dumps({"vlm_image_size": [256, 256]}))
    return load_pipeline(dst)


def test_base_variant_guidance(base_pipeline: Pipeline, tiny_pipeline: Pipeline) -> None:
    rows: list[int] = []
    original = base_pipeline.backend.denoiser

    def spy(sample: np.ndarray, *args: Any) -> np.ndarray:
        rows.append(sample.shape[0])
        return original(sample, *args)

    base_pipeline.backend.denoiser = spy  # type: ignore[misc]
    gen = SampleSpec("generate", "a red apple", 5, width=256, height=256, steps=2, guidance_scale=1.0)
    edit = SampleSpec(
        "edit",
        "make it red",
        6,
        image=SOURCE,
        working_size=(256, 256),
        steps=2,
        guidance_scale=1.0,
        image_guidance_scale=1.0,
    )
    try:
        guided = base_pipeline.run([gen, edit], trace=True)
    finally:
        base_pipeline.backend.denoiser = original  # type: ignore[misc]
    assert rows == [5, 5], "generate has 2 rows (uncond, cond), edit 3 (∅, image, text+image)"
    assert "uncond_prompt_embeds" in guided[0].trace.arrays  # type: ignore[union-attr]
    # With g = g_img = 1 every guidance formula reduces to the conditional branch: the unguided run.
    for spec, result in zip((gen, edit), guided, strict=True):
        plain = SampleSpec(
            spec.task,
            spec.prompt,
            spec.seed,
            width=spec.width,
            height=spec.height,
            steps=2,
            image=spec.image,
            working_size=spec.working_size,
        )
        unguided = tiny_pipeline.run([plain], trace=True)[0]
        a = result.trace.arrays["step1_latents"]  # type: ignore[union-attr]
        b = unguided.trace.arrays["step1_latents"]  # type: ignore[union-attr]
        assert float(np.abs(a - b).max()) < 1e-4
    # A real guidance scale changes the result.
    strong = base_pipeline.run([SampleSpec("generate", "a red apple", 5, width=256, height=256, steps=2)])[0]
    assert strong.recipe.guidance_scale == 3.5
    assert not np.array_equal(strong.image, guided[0].image)


def test_static_text_length_is_checked_when_planning(tiny_pipeline: Pipeline) -> None:
    """Static-shape bundles refuse a too-long prompt at validation time, naming the prompt."""
    backend = tiny_pipeline.backend
    saved = backend.text_len
    backend.text_len = 24  # type: ignore[misc]
    try:
        tiny_pipeline.plan(SampleSpec("generate", "a red apple", 0, width=256, height=256))  # 19 tokens: fits
        with pytest.raises(InvalidInputError) as info:
            tiny_pipeline.plan(SampleSpec("generate", "a red apple " * 10, 0, width=256, height=256))
        assert info.value.field == "prompt"
        with pytest.raises(InvalidInputError, match="static text length"):  # 64 image tokens alone exceed 24
            tiny_pipeline.plan(SampleSpec("edit", "x", 0, image=SOURCE, working_size=(256, 256)))
    finally:
        backend.text_len = saved  # type: ignore[misc]
