"""The DreamLite recipe's pretraining stages: T2I → edit (in-context) → joint, with rectified flow.

One stage class serves all three; they differ only in the share of edit examples (0, 1, then mixed):

* data: a batch of world examples drawn from the stage seed and the step number (training split only);
* latents: the frozen VAE encodes the target (x0) and, for edits, the source (the in-context condition);
  generate rows use an all-zero condition, as the official pipeline;
* text: :class:`~model_runtime.train.text_features.TextFeaturizer` — the runtime's own templates, tokenizer,
  VLM preprocessing and pre-final-norm features, with the text encoder trained jointly;
* identity edits (``copy_share``, 0 in the shipped recipe): some edit rows ask for their own source with an
  empty instruction;
* copy-rewarding loss (``keep_weight``, off in the shipped recipe): the cells of objects an edit leaves
  as they are, whose answer is in the condition latent, weigh ``keep_weight`` instead of ``object_weight``;
* change weight (``change_weight``, off in the shipped recipe): the cells an edit changes weigh
  ``change_weight`` instead (0: edit rows train on what they keep only);
* edit kinds (``edit_kinds``, all six in the shipped recipe): edit rows of only these kinds;
* VLM source dropout (``vlm_image_drop``, 0 in the shipped recipe): the text stage of some edit rows sees a
  blank image instead of the source, so that only the condition latent tells what to keep;
* guidance dropout: the prompt is replaced by the official unconditional template (``text_drop``) and,
  for edits, the condition latent by zeros (``image_drop``), so the teacher supports the base pipeline's
  text and image guidance;
* objective: x_t = (1 − t)·x0 + t·ε, target v = ε − x0, MSE on the left (target) half of the
  [x_t | cond] output; t is logit-normal, then shifted by the folder's dynamic shift at 128² (the same
  mu as the inference schedule);
* EMA of UNet and text encoder for evaluation and for the next stage's teacher.

:func:`guided_velocity` and :func:`sample` are the torch sampler used by distillation and quick checks;
the shipped evaluation goes through the public pipeline instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from model_runtime.prompts import Task
from model_runtime.sampler import compute_schedule, shift_mu
from model_runtime.train import world
from model_runtime.train.loop import cosine_lr
from model_runtime.train.models import Ema
from model_runtime.train.text_features import TextFeaturizer, TextRequest, pad_cat

SIZE = world.IMAGE_SIZE
LATENT = SIZE // 8


@dataclass
class NanoModels:
    """The trainable components and the frozen VAE.

    Attributes:
        text_encoder: ``Qwen3VLForConditionalGeneration``.
        unet: ``DreamLiteUNetModel``.
        vae: ``AutoencoderTiny`` (frozen after its own stage).
        featurizer: The runtime-exact text stage.
        scheduler_config: ``scheduler_config.json`` of the folder (for the shift and the sigmas).
    """

    text_encoder: Any
    unet: Any
    vae: Any
    featurizer: TextFeaturizer
    scheduler_config: dict[str, Any]

    def mu(self) -> float:
        """The dynamic-shift mu at the world's size."""
        return shift_mu(self.scheduler_config, SIZE, SIZE)

    @classmethod
    def from_folder(cls, folder: Path, fast_text: bool = False) -> NanoModels:
        """A written model folder's UNet, VLM and VAE (frozen) in float32, eval mode, and its text stage.

        ``fast_text``: the text stage takes :class:`TextFeaturizer`'s fast path.
        """
        from diffusers import AutoencoderTiny, DreamLiteUNetModel
        from transformers import Qwen3VLForConditionalGeneration

        from model_runtime.train import configs

        vae = AutoencoderTiny.from_pretrained(str(folder / "vae"))  # type: ignore[no-untyped-call]
        encoder: Any = Qwen3VLForConditionalGeneration.from_pretrained(str(folder / "text_encoder"))
        unet = DreamLiteUNetModel.from_pretrained(str(folder / "unet"))  # type: ignore[no-untyped-call]
        return cls(
            text_encoder=encoder.float().eval(),
            unet=unet.float().eval(),
            vae=vae.float().eval().requires_grad_(False),
            featurizer=TextFeaturizer.for_folder(folder, fast=fast_text),
            scheduler_config=configs.scheduler_config(),
        )


@dataclass(frozen=True, slots=True)
class Example:
    """One training or sampling example.

    Attributes:
        task: ``generate`` or ``edit``.
        prompt: Caption or instruction (None: the unconditional template).
        target: The image to produce (None when sampling).
        source: The edit source.
        target_key: Scene key of the target (for the latent cache), if known.
        source_key: Scene key of the source.
        caption: For edits drawn with ``target_captions``: a caption of the target scene (the ``align``
            stage's reference prompt).
    """

    task: str
    prompt: str | None
    target: NDArray[np.uint8] | None
    source: NDArray[np.uint8] | None = None
    target_key: str | None = None
    source_key: str | None = None
    caption: str | None = None


def draw_examples(
    rng: np.random.Generator,
    n: int,
    edit_share: float,
    pool: int | None = None,
    pool_seed: int = 0,
    edit_kinds: Sequence[str] | None = None,
    target_captions: np.random.Generator | None = None,
) -> list[Example]:
    """``n`` training-split examples; each is an edit with probability ``edit_share``.

    With ``pool``, scenes and edits come from a fixed, seeded pool of that many items per task (a
    dataset drawn from the world), so their VAE latents can be cached; the caption's object order is
    still drawn per use. With ``edit_kinds``, an edit of another kind is drawn again (``None``: every kind,
    and no extra draws from ``rng``). With ``target_captions``, each edit also carries a caption of its
    target scene, its object order drawn from that generator (``rng`` draws the same either way).
    """

    def source_rng(is_edit: bool) -> np.random.Generator:
        return (
            rng if pool is None else np.random.default_rng([pool_seed, int(is_edit), int(rng.integers(pool))])
        )

    out = []
    for _ in range(n):
        if rng.random() >= edit_share:
            scene = world.train_scene(source_rng(False))
            caption = scene.caption(world.random_order(rng, len(scene.objects)))
            out.append(Example("generate", caption, world.render(scene), target_key=scene.key()))
            continue
        e = world.train_edit(source_rng(True))
        while edit_kinds is not None and e.kind not in edit_kinds:
            e = world.train_edit(source_rng(True))
        target_caption = None
        if target_captions is not None:
            target_caption = e.target.caption(world.random_order(target_captions, len(e.target.objects)))
        out.append(edit_example(e, target_caption))
    return out


def edit_example(e: world.Edit, caption: str | None = None) -> Example:
    """An edit triple as a training example (renders and scene keys), with its target's caption if given."""
    return Example(
        "edit",
        e.instruction,
        world.render(e.target),
        world.render(e.source),
        e.target.key(),
        e.source.key(),
        caption,
    )


class LatentCache:
    """VAE latents of renders by scene key (the VAE is frozen after its stage, and a scene has one render).

    Encoding a 128² render costs several UNet forward passes, so training reuses them.
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self.store: dict[str, torch.Tensor] = {}

    def __call__(self, images: Sequence[NDArray[np.uint8]], keys: Sequence[str | None]) -> torch.Tensor:
        """Latents ``(B, 4, 16, 16)`` of ``images``; those with a key are cached."""
        todo = [i for i, k in enumerate(keys) if k is None or k not in self.store]
        fresh = encode_images(self.vae, [images[i] for i in todo]) if todo else None
        row = {i: j for j, i in enumerate(todo)}
        out = []
        for i, k in enumerate(keys):
            if i in row:
                assert fresh is not None
                z = fresh[row[i]]
                if k is not None:
                    self.store[k] = z
            else:
                z = self.store[k]  # type: ignore[index]
            out.append(z)
        return torch.stack(out)  # (B, 4, h, w)


def object_pixels(image: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """``(H, W)`` pixels of a render that differ from its background (the top-left pixel) by more than 8."""
    return changed_pixels(image, image[:1, :1])


def changed_pixels(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """``(H, W)`` pixels where two renders differ by more than 8 in some channel."""
    return cast(NDArray[np.bool_], np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 8)


def object_weights(examples: Sequence[Example], weight: float) -> torch.Tensor:
    """Per-latent-cell loss weights: ``weight`` on cells within one cell of an object, 1 elsewhere.

    For edits the source's objects count too (a removed or moved object's old place must be redrawn).

    Returns:
        ``(B, 1, 16, 16)`` float32.
    """
    masks = []
    for e in examples:
        cover = np.zeros((SIZE, SIZE), dtype=bool)
        for img in (e.target, e.source):
            if img is not None:
                cover |= object_pixels(img)
        masks.append(cover)
    m = torch.from_numpy(np.stack(masks)).float()[:, None]  # (B, 1, H, W) object pixels
    m = F.max_pool2d(m, kernel_size=8)  # (B, 1, h, w) cells touching an object
    m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)  # dilate by one cell
    return 1.0 + (weight - 1.0) * m


def edit_cells(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent cells of edit rows whose answer is in the condition latent, and those the edit changes.

    Kept: a cell that touches an object of the target while no pixel of it, or of its 8 neighbours, differs
    between source and target (so a background edit keeps nothing). Changed: a cell within one cell of a
    pixel that differs. Generate rows have neither.

    Returns:
        ``(kept, changed)``, each ``(B, 1, 16, 16)`` float32 in {0, 1}.
    """
    masks = []
    for e in examples:
        obj = np.zeros((SIZE, SIZE), dtype=bool)
        changed = np.zeros((SIZE, SIZE), dtype=bool)
        if e.source is not None and e.target is not None:
            obj, changed = object_pixels(e.target), changed_pixels(e.target, e.source)
        masks.append(np.stack([obj, changed]))
    m = F.max_pool2d(torch.from_numpy(np.stack(masks)).float(), kernel_size=8)  # (B, 2, h, w)
    near_change = F.max_pool2d(m[:, 1:], kernel_size=3, stride=1, padding=1)  # (B, 1, h, w)
    return m[:, :1] * (1.0 - near_change), near_change


def loss_weights(
    examples: Sequence[Example],
    object_weight: float,
    keep_weight: float | None,
    change_weight: float | None = None,
) -> torch.Tensor:
    """Per-cell loss weights of a batch: :func:`object_weights`, then those of the :func:`edit_cells`.

    ``keep_weight`` replaces the weight of the kept cells, ``change_weight`` that of the changed ones (None:
    leave it).

    Returns:
        ``(B, 1, 16, 16)`` float32.
    """
    w = object_weights(examples, object_weight)  # (B, 1, h, w)
    if keep_weight is None and change_weight is None:
        return w
    kept, changed = edit_cells(examples)  # (B, 1, h, w) each
    for cells, weight in ((kept, keep_weight), (changed, change_weight)):
        if weight is not None:
            w = w * (1.0 - cells) + weight * cells
    return w


def identity_edits(examples: Sequence[Example], share: float, rng: np.random.Generator) -> list[Example]:
    """``examples`` with about ``share`` of the edit rows turned into identity edits.

    An identity edit asks for its own source with the unconditional (empty-instruction) template: the answer
    is the condition latent itself, so these rows train the path from the condition half to the target half
    alone. It is also what the base pipeline's image-only guidance branch (empty prompt + source) should
    predict. ``share`` 0 draws nothing from ``rng``.
    """
    if share <= 0.0:
        return list(examples)
    return [
        replace(e, prompt=None, target=e.source, target_key=e.source_key)
        if e.task == "edit" and rng.random() < share
        else e
        for e in examples
    ]


def hide_sources(examples: Sequence[Example], share: float, rng: np.random.Generator) -> list[Example]:
    """``examples`` with the VLM's view of about ``share`` of the edit sources replaced by a blank image.

    Only the text stage sees the blank; the in-context condition latent still holds the source, so those rows
    can only be solved by reading the condition half. ``share`` 0 draws nothing from ``rng``.
    """
    if share <= 0.0:
        return list(examples)
    blank = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)  # (H, W, 3) uint8 mid-gray
    return [replace(e, source=blank) if e.task == "edit" and rng.random() < share else e for e in examples]


@torch.no_grad()
def encode_images(vae: Any, images: Sequence[NDArray[np.uint8]]) -> torch.Tensor:
    """VAE latents of uint8 renders, as the pipeline computes them (x/255·2 − 1, no scaling).

    Returns:
        ``(B, 4, 16, 16)`` float32.
    """
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0  # (B, 3, H, W)
    latents: torch.Tensor = vae.encode(x).latents  # (B, 4, h, w)
    return latents


@dataclass
class Conditions:
    """Everything a batch is conditioned on (text features are computed once per batch).

    Attributes:
        is_edit: ``(B,)`` bool.
        text: ``(B, L, D)`` prompt features; ``mask`` ``(B, L)``.
        text_u: ``(B, Lu, D)`` unconditional-template features (None without guidance); ``mask_u``.
        cond: ``(B, 4, h, w)`` condition latents (zeros for generate).
    """

    is_edit: torch.Tensor
    text: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    text_u: torch.Tensor | None = None
    mask_u: torch.Tensor | None = None


def encode_texts(
    models: NanoModels, examples: Sequence[Example], unconditional: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text features of a batch, in the order of ``examples``.

    Rows flagged in ``unconditional`` use the official empty-prompt template (guidance dropout).
    """
    requests = [
        TextRequest(cast(Task, e.task), None if uncond else e.prompt, e.source)
        for e, uncond in zip(examples, unconditional, strict=True)
    ]
    return models.featurizer.encode_mixed(models.text_encoder, requests)


def unet_velocity(
    unet: Any, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The UNet on the in-context latent; returns the target half.

    Args:
        unet: ``DreamLiteUNetModel``.
        x: ``(B, 4, h, w)`` noisy target latents.
        cond: ``(B, 4, h, w)`` condition latents.
        t: ``(B,)`` sigmas in [0, 1] (the UNet sees 1000·t).
        text: ``(B, L, D)`` features.
        mask: ``(B, L)`` int64, 1 = real token.

    Returns:
        ``(B, 4, h, w)`` predicted velocity.
    """
    w = x.shape[-1]
    sample = torch.cat([x, cond], dim=3)  # (B, 4, h, 2w): [target | condition]
    time_ids = torch.tensor([[SIZE, SIZE]], dtype=x.dtype).expand(x.shape[0], 2)  # (B, 2) = [W, H]
    out = unet(
        sample,
        t * 1000.0,
        encoder_hidden_states=text,
        encoder_attention_mask=mask,
        added_cond_kwargs={"time_ids": time_ids},
        return_dict=False,
    )[0]  # (B, 4, h, 2w)
    velocity: torch.Tensor = out[..., :w]  # (B, 4, h, w)
    return velocity


def shift_sigma(t: torch.Tensor, mu: float) -> torch.Tensor:
    """The exponential time shift of the scheduler: e^mu / (e^mu + (1/t − 1))."""
    e = math.exp(mu)
    return e * t / (1.0 + (e - 1.0) * t)


def noisy_latents(
    x0: torch.Tensor, gen: torch.Generator, logit_mean: float, logit_std: float, mu: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rectified-flow training points: logit-normal t (resolution-shifted), noise, x_t = (1 − t)·x0 + t·ε.

    Draws t first, then the noise, from ``gen``.

    Returns:
        ``t`` ``(B,)``, ``noise`` and ``x_t`` ``(B, 4, h, w)``.
    """
    u = torch.randn(x0.shape[0], generator=gen) * logit_std + logit_mean
    t = shift_sigma(torch.sigmoid(u), mu)  # (B,) logit-normal, resolution-shifted
    noise = torch.randn(x0.shape, generator=gen)  # (B, 4, h, w)
    tb = t[:, None, None, None]
    return t, noise, (1.0 - tb) * x0 + tb * noise


@dataclass(frozen=True, slots=True)
class DiffusionConfig:
    """Hyper-parameters of a pretraining stage."""

    edit_share: float
    batch: int = 32
    lr: float = 1.5e-3
    text_lr: float = 3e-4
    warmup: int = 60
    text_drop: float = 0.1
    image_drop: float = 0.1
    vlm_image_drop: float = 0.0
    copy_share: float = 0.0
    keep_weight: float | None = None
    change_weight: float | None = None
    edit_kinds: tuple[str, ...] | None = None
    logit_mean: float = 0.0
    logit_std: float = 1.0
    ema_decay: float = 0.995
    weight_decay: float = 0.01
    object_weight: float = 4.0
    pool: int | None = 8000

    def __post_init__(self) -> None:
        if self.edit_kinds is not None:  # a JSON list from recipe.json becomes the tuple
            kinds = tuple(self.edit_kinds)
            unknown = [k for k in kinds if k not in world.EDIT_KINDS]
            if unknown or not kinds:
                allowed = ", ".join(world.EDIT_KINDS)
                raise ValueError(f"edit_kinds must be a non-empty subset of {allowed}; given {list(kinds)}")
            object.__setattr__(self, "edit_kinds", kinds)


def copy_only(cfg: DiffusionConfig) -> DiffusionConfig:
    """``cfg`` turned into identity edits only: every row an edit asking for its own source, no dropout.

    What the recipe's optional ``copy`` stage and the probes' copy curricula train on.
    """
    return replace(cfg, edit_share=1.0, copy_share=1.0, image_drop=0.0, text_drop=0.0)


class DiffusionStage:
    """A rectified-flow pretraining stage (T2I, edit or joint, by ``cfg.edit_share``).

    Args:
        models: The components (the UNet and text encoder are trained, the VAE is frozen).
        cfg: Hyper-parameters.
        total: Planned steps (learning-rate schedule).
        seed: Data seed of the stage.
    """

    def __init__(self, models: NanoModels, cfg: DiffusionConfig, total: int, seed: int) -> None:
        self.m = models
        self.cfg = cfg
        self.total = total
        self.seed = seed
        self.mu = models.mu()
        self.cache = LatentCache(models.vae)
        params = [{"params": list(models.unet.parameters()), "lr": cfg.lr}]
        self.peaks = [cfg.lr]
        # text_lr 0: the encoder is frozen (at rate 0 AdamW would not move it either: its decay scales with
        # the rate); its features then carry no graph, the backward pass stops at them, and the
        # gradient-norm clip covers the UNet alone
        self.text_frozen = cfg.text_lr == 0.0
        models.text_encoder.requires_grad_(not self.text_frozen)
        models.unet.requires_grad_(True)  # the stage's learner, whatever a caller froze before
        if not self.text_frozen:
            params.append({"params": list(models.text_encoder.parameters()), "lr": cfg.text_lr})
            self.peaks.append(cfg.text_lr)
        self.opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.ema_unet = Ema(models.unet.parameters(), cfg.ema_decay)
        self.ema_text = Ema(models.text_encoder.parameters(), cfg.ema_decay)

    def batch(self, i: int) -> tuple[list[Example], np.random.Generator]:
        """The examples of step ``i`` (a pure function of the stage seed and ``i``)."""
        rng = np.random.default_rng([self.seed, i])
        cfg = self.cfg
        examples = draw_examples(rng, cfg.batch, cfg.edit_share, cfg.pool, self.seed, cfg.edit_kinds)
        return identity_edits(examples, cfg.copy_share, rng), rng

    def loss(self, examples: Sequence[Example], rng: np.random.Generator) -> torch.Tensor:
        """Rectified-flow loss of one batch."""
        cfg, m = self.cfg, self.m
        x0 = self.cache([e.target for e in examples], [e.target_key for e in examples])  # type: ignore[misc]
        cond = torch.zeros_like(x0)  # (B, 4, h, w)
        edit_rows = [i for i, e in enumerate(examples) if e.task == "edit"]
        if edit_rows:
            keep = [i for i in edit_rows if rng.random() >= cfg.image_drop]
            if keep:
                cond[keep] = self.cache(
                    [examples[i].source for i in keep],  # type: ignore[misc]
                    [examples[i].source_key for i in keep],
                )
        uncond = [bool(rng.random() < cfg.text_drop) for _ in examples]
        text, mask = encode_texts(
            m, hide_sources(examples, cfg.vlm_image_drop, rng), uncond
        )  # (B, L, D), (B, L)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        t, noise, x_t = noisy_latents(
            x0, gen, cfg.logit_mean, cfg.logit_std, self.mu
        )  # (B,), (B, 4, h, w) ×2
        v = unet_velocity(m.unet, x_t, cond, t, text, mask)  # (B, 4, h, w)
        if cfg.object_weight == 1.0 and cfg.keep_weight is None and cfg.change_weight is None:
            return F.mse_loss(v, noise - x0)
        w = loss_weights(examples, cfg.object_weight, cfg.keep_weight, cfg.change_weight)  # (B, 1, h, w)
        return ((v - (noise - x0)) ** 2 * w).mean() / w.mean()

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step."""
        examples, rng = self.batch(i)
        for group, peak in zip(self.opt.param_groups, self.peaks, strict=True):
            group["lr"] = cosine_lr(i, self.total, peak, self.cfg.warmup)
        self.m.unet.train()
        self.m.text_encoder.train(not self.text_frozen)
        loss = self.loss(examples, rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        params = [p for g in self.opt.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        self.ema_unet.update()
        self.ema_text.update()
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm)}

    def state_dict(self) -> dict[str, Any]:
        """Models, optimiser and EMAs."""
        return {
            "unet": self.m.unet.state_dict(),
            "text_encoder": self.m.text_encoder.state_dict(),
            "opt": self.opt.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m.unet.load_state_dict(state["unet"])
        self.m.text_encoder.load_state_dict(state["text_encoder"])
        self.opt.load_state_dict(state["opt"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text.load_state_dict(state["ema_text"])

    def apply_ema(self) -> None:
        """Replace the live weights by their EMA (at the end of a stage)."""
        self.ema_unet.copy_to(self.m.unet.parameters())
        self.ema_text.copy_to(self.m.text_encoder.parameters())


# ----------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def conditions(
    models: NanoModels, examples: Sequence[Example], guided: bool, cache: LatentCache | None = None
) -> Conditions:
    """Text features (and unconditional ones when ``guided``) and condition latents of a batch."""
    B = len(examples)
    text, mask = encode_texts(models, examples, [False] * B)
    c = Conditions(
        is_edit=torch.tensor([e.task == "edit" for e in examples]),
        text=text,
        mask=mask,
        cond=condition_latents(models, examples, cache),
    )
    if guided:
        c.text_u, c.mask_u = encode_texts(models, examples, [True] * B)
    return c


@torch.no_grad()
def condition_latents(
    models: NanoModels, examples: Sequence[Example], cache: LatentCache | None = None
) -> torch.Tensor:
    """In-context condition latents of a batch.

    The edit sources' latents (through ``cache`` if given), zeros for generate rows. ``(B, 4, h, w)``.
    """
    cond = torch.zeros((len(examples), 4, LATENT, LATENT))
    edit_rows = [i for i, e in enumerate(examples) if e.task == "edit"]
    if edit_rows:
        sources = [examples[i].source for i in edit_rows]
        if cache is None:
            cond[edit_rows] = encode_images(models.vae, sources)  # type: ignore[arg-type]
        else:
            cond[edit_rows] = cache(sources, [examples[i].source_key for i in edit_rows])  # type: ignore[arg-type]
    return cond


def guided_velocity(
    unet: Any, x: torch.Tensor, sigma: torch.Tensor, c: Conditions, guidance: tuple[float, float] | None
) -> torch.Tensor:
    """Velocity with the base pipeline's guidance (one UNet call for all branches).

    Generate: v∅ + g·(v_text − v∅). Edit: v∅ + g·(v_text − v_img) + g_img·(v_img − v∅), where ∅ is the
    unconditional template with a zero condition latent and "img" the unconditional template with the
    source latent. ``guidance`` None: one conditional pass (the mobile pipeline).

    Args:
        unet: The UNet.
        x: ``(B, 4, h, w)`` latents.
        sigma: ``(B,)`` current sigmas.
        c: Conditions of the batch.
        guidance: (g, g_img) or None.

    Returns:
        ``(B, 4, h, w)`` velocity.
    """
    if guidance is None:
        return unet_velocity(unet, x, c.cond, sigma, c.text, c.mask)
    if c.text_u is None or c.mask_u is None:
        raise ValueError("guided sampling needs the unconditional text features")
    g, gi = guidance
    B = x.shape[0]
    edit = torch.nonzero(c.is_edit).flatten()
    zeros = torch.zeros_like(c.cond)
    text, mask = pad_cat([(c.text_u, c.mask_u), (c.text, c.mask), (c.text_u[edit], c.mask_u[edit])])
    xs = torch.cat([x, x, x[edit]])  # (2B + E, 4, h, w)
    conds = torch.cat([zeros, c.cond, c.cond[edit]])
    sig = torch.cat([sigma, sigma, sigma[edit]])
    v = unet_velocity(unet, xs, conds, sig, text, mask)  # (2B + E, 4, h, w)
    v_u, v_c, v_img = v[:B], v[B : 2 * B], v[2 * B :]
    out = v_u + g * (v_c - v_u)  # (B, 4, h, w) generate rule
    if edit.numel():
        vu_e, vc_e = v_u[edit], v_c[edit]
        out[edit] = vu_e + g * (vc_e - v_img) + gi * (v_img - vu_e)
    return out


def schedule_sigmas(models: NanoModels, steps: int) -> torch.Tensor:
    """``(steps + 1,)`` float32 sigmas of the inference schedule at the world's size."""
    return torch.from_numpy(np.array(compute_schedule(models.scheduler_config, SIZE, SIZE, steps).sigmas))


@torch.no_grad()
def sample(
    models: NanoModels,
    examples: Sequence[Example],
    seeds: Sequence[int],
    steps: int,
    guidance: tuple[float, float] | None,
) -> NDArray[np.uint8]:
    """Euler sampling on the inference schedule (torch noise per seed, as the pipeline's ``torch-cpu``).

    Returns:
        ``(B, 128, 128, 3)`` uint8 images.
    """
    models.unet.eval()
    models.text_encoder.eval()
    c = conditions(models, examples, guidance is not None)
    sig = schedule_sigmas(models, steps)
    x = torch.cat(
        [torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )  # (B, 4, h, w)
    for k in range(steps):
        sigma = sig[k].expand(x.shape[0])
        v = guided_velocity(models.unet, x, sigma, c, guidance)
        x = x + (sig[k + 1] - sig[k]) * v
    y = models.vae.decode(x).sample  # (B, 3, H, W)
    y = ((y / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.asarray(y.permute(0, 2, 3, 1).numpy(), dtype=np.uint8)  # (B, H, W, 3) uint8
