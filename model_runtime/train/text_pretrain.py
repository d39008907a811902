"""The recipe's text stage: pretraining the nano Qwen3-VL to read the world before the UNet learns from it.

DreamLite conditions its UNet on a *pretrained* VLM (Qwen3-VL): the text features the UNet sees already
say what the prompt (and, for edits, the source image plus instruction) asks for. No pretrained Qwen exists
at nano size, so this stage gives the from-scratch encoder that role on the shapes world: from exactly the
features the pipeline hands the UNet (runtime templates and tokenizer, VLM preprocessing of the source,
pre-final-norm last-layer states, ``drop_idx`` tokens dropped; :class:`~.text_features.TextFeaturizer`), a
small readout must recover the *requested* scene:

* generate: the caption's scene;
* edit: the edited scene, i.e. the target of the triple, read from the source image (vision tower) and the
  instruction together.

The readout (:class:`SceneReadout`) is cross-attention from six learned queries (the five slots and the
background) over the kept tokens, the same access pattern the UNet's cross-attention has, followed by
per-slot classifiers (colour or empty, shape or empty, size or empty) and a background classifier. A second,
per-token head asks the position word that closes each object phrase of a caption ("… red circle on the
*left*") for that object's colour, shape and size: a one-hop target that teaches the causal encoder to bind
a phrase's attributes into the token the slot query looks for (with the slot readout alone, the queries and
the binding had to appear together and a pilot stalled). The heads are discarded after the stage; the
encoder is then trained on with the UNet (:mod:`.diffusion`).

With ``read_images`` (the recipe's ``read`` stage, after T2I) the same per-token head also asks each merged
vision token of an edit source for the object at the slot its image cell covers (or "empty"): the one-hop
target that teaches the vision tower to read the source, while the slot readout still asks for the edited
scene. Where the folder's edit drop leaves the image tokens out of the features
(``RecipeConfig.edit_image_features`` False; the shipped recipe keeps them), the head reads their states
from the encoder directly, and the slot readout must find the edited scene in the instruction and closing
tokens, which is where the UNet then looks for it. Caption rows stay in the batches so the caption features
the UNet has learned keep their meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.train import world
from model_runtime.train.loop import cosine_lr
from model_runtime.train.text_features import TextFeaturizer, TextRequest
from model_runtime.train.world import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    Position,
    Scene,
)

N_COLOUR = len(COLOUR_NAMES) + 1  # class 0 = empty slot
N_SHAPE = len(SHAPES) + 1
N_SIZE = len(SIZES) + 1
N_SLOT = len(POSITIONS)


def _codes(o: world.ShapeObject | None) -> list[int]:
    """Class codes (colour, shape, size; 0 = empty slot) of one object."""
    if o is None:
        return [0, 0, 0]
    return [COLOUR_NAMES.index(o.colour) + 1, SHAPES.index(o.shape) + 1, SIZES.index(o.size) + 1]


def scene_labels(scene: Scene) -> tuple[list[int], int]:
    """Class labels of a scene.

    Per slot (in ``POSITIONS`` order) colour, shape, size (0 = empty), and the background.

    Returns:
        ``[colour, shape, size] * 5`` flattened, and the background index.
    """
    by_slot = {o.position: o for o in scene.objects}
    return [v for p in POSITIONS for v in _codes(by_slot.get(p))], BACKGROUND_NAMES.index(scene.background)


class SceneReadout(nn.Module):
    """Six learned queries attend over the text features; linear heads name the scene.

    Args:
        dim: Feature width (the text encoder's hidden size).
        heads: Attention heads.
    """

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.queries = nn.Parameter(torch.randn(N_SLOT + 1, dim) * dim**-0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.slot_head = nn.Sequential(
            nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, N_COLOUR + N_SHAPE + N_SIZE)
        )
        self.bg_head = nn.Linear(dim, len(BACKGROUND_NAMES))
        self.token_head = nn.Linear(dim, N_COLOUR + N_SHAPE + N_SIZE)

    def forward(
        self, feats: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the requested scene and of every token.

        Args:
            feats: ``(B, L, D)`` text features.
            mask: ``(B, L)`` 1 = real token.

        Returns:
            ``(B, 5, 7 + 5 + 3)`` slot logits, ``(B, 3)`` background logits and ``(B, L, 7 + 5 + 3)``
            per-token logits.
        """
        B = feats.shape[0]
        kv = self.norm(feats)  # (B, L, D)
        q = self.queries[None].expand(B, -1, -1)  # (B, 6, D)
        pooled, _ = self.attn(q, kv, kv, key_padding_mask=mask == 0)  # (B, 6, D)
        return self.slot_head(pooled[:, :N_SLOT]), self.bg_head(pooled[:, N_SLOT]), self.token_head(kv)


@dataclass(frozen=True, slots=True)
class TextPretrainConfig:
    """Hyper-parameters of the text stage.

    ``captions_first`` steps read captions only (a curriculum: mixed from the start, the harder edit requests
    kept the caption readout from taking off in a pilot); then a share ``edit_share`` of edit requests.
    """

    batch: int = 64
    lr: float = 5e-3
    warmup: int = 50
    edit_share: float = 0.5
    captions_first: int = 600
    weight_decay: float = 0.01
    read_images: bool = False


@dataclass(frozen=True, slots=True)
class ReadItem:
    """One request and the scene it asks for."""

    request: TextRequest
    scene: Scene
    source: Scene | None = None


def draw_items(rng: np.random.Generator, n: int, edit_share: float) -> list[ReadItem]:
    """``n`` training-split requests (generate captions in a random object order, or edit requests)."""
    out = []
    for _ in range(n):
        if rng.random() < edit_share:
            e = world.train_edit(rng)
            out.append(
                ReadItem(TextRequest("edit", e.instruction, world.render(e.source)), e.target, e.source)
            )
        else:
            scene = world.train_scene(rng)
            caption = scene.caption(world.random_order(rng, len(scene.objects)))
            out.append(ReadItem(TextRequest("generate", caption), scene))
    return out


def cell_slots(side: int, merge: int = 2, patch: int = 16) -> list[Position | None]:
    """The slot each merged vision token of a ``side``² VLM image covers (row-major), or None.

    A token covers a cell of ``merge · patch`` pixels (in the world's 128² coordinates); it belongs to the
    slot whose centre lies in the closed cell (slot centres sit on cell borders, so a slot owns 2 or 4
    cells; corner cells own none).
    """
    n = side // (merge * patch)
    cell = world.IMAGE_SIZE / n
    out: list[Position | None] = []
    for r in range(n):
        for c in range(n):
            owner: Position | None = None
            for pos, (x, y) in world.SLOTS.items():
                if c * cell <= x <= (c + 1) * cell and r * cell <= y <= (r + 1) * cell:
                    owner = pos
                    break
            out.append(owner)
    return out


def phrase_labels(
    featurizer: TextFeaturizer, items: Sequence[ReadItem], length: int, read_images: bool = False
) -> torch.Tensor:
    """Per-token targets (as :func:`scene_labels` codes), −100 (ignored) elsewhere.

    Caption rows: at each position word, its object's colour, shape and size. Edit rows (with
    ``read_images``): at each merged vision token, the source object at the slot its cell covers, or
    empty (:func:`cell_slots`).

    Returns:
        ``(B, length, 3)`` int64.
    """
    tok = _tokenizer(str(featurizer.tokenizer_file))
    word_ids = {tok.token_to_id("Ġ" + p): p for p in POSITIONS}
    image_pad = tok.token_to_id("<|image_pad|>")
    cells = cell_slots(featurizer.vlm_size[0], featurizer.merge)
    out = torch.full((len(items), length, 3), -100, dtype=torch.int64)
    for b, it in enumerate(items):
        ids = featurizer.kept_ids(it.request)
        if it.request.task == "generate":
            by_slot = {o.position: o for o in it.scene.objects}
            for k, t in enumerate(ids):
                pos = word_ids.get(t)
                if pos is not None and pos in by_slot:
                    out[b, k] = torch.tensor(_codes(by_slot[pos]))
        elif read_images and it.source is not None:
            pads = [k for k, t in enumerate(ids) if t == image_pad]
            if not pads:  # image tokens outside the features: see :func:`image_labels`
                continue
            if len(pads) != len(cells):
                raise ValueError(f"{len(pads)} image tokens for {len(cells)} cells")
            for k, codes in _cell_codes(it.source, cells):
                out[b, pads[k]] = torch.tensor(codes)
    return out


def _cell_codes(source: Scene, cells: Sequence[Position | None]) -> list[tuple[int, list[int]]]:
    """(image token index, codes of the source object at its cell's slot, or empty) for covering cells."""
    by_slot = {o.position: o for o in source.objects}
    return [(k, _codes(by_slot.get(slot))) for k, slot in enumerate(cells) if slot is not None]


def image_labels(featurizer: TextFeaturizer, items: Sequence[ReadItem], n_image: int) -> torch.Tensor:
    """Per-image-token targets: the source object at the slot each token's cell covers, or empty.

    Returns:
        ``(B, n_image, 3)`` int64 codes for edit rows, −100 (ignored) for generate rows.
    """
    cells = cell_slots(featurizer.vlm_size[0], featurizer.merge)
    out = torch.full((len(items), n_image, 3), -100, dtype=torch.int64)
    for b, it in enumerate(items):
        if it.request.task == "edit" and it.source is not None:
            for k, codes in _cell_codes(it.source, cells):
                out[b, k] = torch.tensor(codes)
    return out


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    """The ``tokenizers`` object of a tokenizer file (cached)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def readout_loss(
    readout: SceneReadout,
    feats: torch.Tensor,
    mask: torch.Tensor,
    scenes: Sequence[Scene],
    token_labels: torch.Tensor | None = None,
    image_states: torch.Tensor | None = None,
    image_token_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the readout, and the per-request exact-match of the slot readout.

    The per-token head's loss is added where ``token_labels`` ``(B, L, 3)`` are given, and on
    ``image_states`` ``(B, N, D)`` (image tokens outside the features) where ``image_token_labels``
    ``(B, N, 3)`` are. Exact-match means every slot and the background.
    """
    labels = [scene_labels(s) for s in scenes]
    slot_y = torch.tensor([lab for lab, _ in labels]).view(-1, N_SLOT, 3)  # (B, 5, 3) int64
    bg_y = torch.tensor([bg for _, bg in labels])  # (B,) int64
    slot_logits, bg_logits, token_logits = readout(feats, mask)  # (B, 5, 15), (B, 3), (B, L, 15)
    c, s, z = torch.split(slot_logits, [N_COLOUR, N_SHAPE, N_SIZE], dim=-1)
    loss = (
        F.cross_entropy(c.flatten(0, 1), slot_y[..., 0].flatten())
        + F.cross_entropy(s.flatten(0, 1), slot_y[..., 1].flatten())
        + F.cross_entropy(z.flatten(0, 1), slot_y[..., 2].flatten())
        + F.cross_entropy(bg_logits, bg_y)
    )
    if token_labels is not None:
        loss = _add_token_loss(loss, token_logits, token_labels)
    if image_states is not None and image_token_labels is not None:
        image_logits = readout.token_head(readout.norm(image_states))  # (B, N, 15)
        loss = _add_token_loss(loss, image_logits, image_token_labels)
    pred = torch.stack([c.argmax(-1), s.argmax(-1), z.argmax(-1)], dim=-1)  # (B, 5, 3)
    exact = ((pred == slot_y).flatten(1).all(1) & (bg_logits.argmax(-1) == bg_y)).float()  # (B,)
    return loss, exact


def _add_token_loss(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``loss`` plus the per-token head's colour, shape and size cross-entropies.

    ``logits`` ``(B, L, 15)``; ``labels`` ``(B, L, 3)`` mark the tokens with a target (−100 elsewhere);
    nothing is added when none does.
    """
    if not bool((labels[..., 0] >= 0).any()):
        return loss
    for part, k in zip(torch.split(logits, [N_COLOUR, N_SHAPE, N_SIZE], dim=-1), range(3), strict=True):
        loss = loss + F.cross_entropy(part.flatten(0, 1), labels[..., k].flatten(), ignore_index=-100)
    return loss


class TextPretrainStage:
    """The text stage (a :class:`~.loop.Stage`).

    Args:
        text_encoder: ``Qwen3VLForConditionalGeneration`` (trained).
        featurizer: The runtime-exact text stage.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data and readout seed.
    """

    def __init__(
        self, text_encoder: Any, featurizer: TextFeaturizer, cfg: TextPretrainConfig, total: int, seed: int
    ) -> None:
        self.text_encoder = text_encoder
        self.featurizer = featurizer
        self.cfg = cfg
        self.total = total
        self.seed = seed
        torch.manual_seed(seed)
        self.readout = SceneReadout(int(text_encoder.config.text_config.hidden_size))
        self.image_rows_kept = featurizer.keeps_image_tokens()
        params = list(text_encoder.parameters()) + list(self.readout.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step on a batch drawn from the stage seed and ``i``."""
        rng = np.random.default_rng([self.seed, i])
        share = 0.0 if i < self.cfg.captions_first else self.cfg.edit_share
        items = draw_items(rng, self.cfg.batch, share)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.cfg.lr, self.cfg.warmup)
        self.text_encoder.train()
        feats, mask, images = self.featurizer.encode_mixed_images(
            self.text_encoder, [it.request for it in items]
        )  # (B, L, D), (B, L), (B, N, D)
        labels = phrase_labels(self.featurizer, items, feats.shape[1], self.cfg.read_images)  # (B, L, 3)
        img_labels = None
        if self.cfg.read_images and not self.image_rows_kept:
            img_labels = image_labels(self.featurizer, items, images.shape[1])  # (B, N, 3)
        loss, exact = readout_loss(
            self.readout, feats, mask, [it.scene for it in items], labels, images, img_labels
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        return {"loss": float(loss.detach()), "exact": float(exact.mean())}

    @torch.no_grad()
    def accuracy(self, items: Sequence[ReadItem], batch: int = 64) -> float:
        """Exact-match rate of the readout on ``items`` (e.g. the held-out ShapesEval requests)."""
        self.text_encoder.eval()
        hits = 0.0
        for k in range(0, len(items), batch):
            chunk = items[k : k + batch]
            feats, mask = self.featurizer.encode_mixed(self.text_encoder, [it.request for it in chunk])
            _, exact = readout_loss(self.readout, feats, mask, [it.scene for it in chunk])
            hits += float(exact.sum())
        return hits / max(1, len(items))

    def state_dict(self) -> dict[str, Any]:
        """Encoder, readout and optimiser."""
        return {
            "text_encoder": self.text_encoder.state_dict(),
            "readout": self.readout.state_dict(),
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.readout.load_state_dict(state["readout"])
        self.opt.load_state_dict(state["opt"])
