"""The recipe's ``scene`` stage: the VLM learns to say the whole edited scene in the UNet's caption language.

After ``distill`` the 4-step student draws captions well and edit requests badly. In a caption the UNet finds
each object at the position word that closes its phrase ("… red circle on the *left*") and the background at
its colour word ("on a *white* background"). In an edit request (official template: image tokens, diptych
sentence, instruction, the closing ``<|im_end|>``, newline, ``<|im_start|>assistant``, newline) the image
tokens describe the *source* (the causal VLM reads them before the instruction), and the UNet draws every
description it finds. Measured (``docs/nano.md``, "Caption-language scene tokens"): with features whose
image tokens say nothing and whose last ``SCENE_ROWS`` rows say the whole target scene in caption language,
the shipped student, untouched, edits at 0.68 instead of 0.31.

This stage trains only the text encoder toward those features. For an edit triple (source, instruction,
target), the target features are built from a frozen copy of the stage's starting encoder (the reference):

* the last ``SCENE_ROWS`` kept rows (the instruction's last word and the template's closing tokens: the only
  rows that see the image *and* the whole instruction) take, one per slot of ``world.POSITIONS``, the
  reference's state of that slot's position word in the target's caption (an empty slot: the neutral state),
  and the last one the state of the background colour word;
* every other row takes the neutral state: the reference's state of a caption's first kept token, which is
  the same in every caption and so says nothing to the UNet.

The error is measured as the UNet sees the rows (after its ``encoder_hid_proj``), relative to the target
row's power. Caption rows anchor the caption features where the reference puts them, so generation keeps
its features. The UNets are not changed; the stage reads the folders ``distill`` (and ``joint``) wrote and
writes the same folders with the new encoder.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.backends.torch_backend import whole_rows
from model_runtime.train import world
from model_runtime.train.loop import cosine_lr
from model_runtime.train.text_features import TextFeaturizer, TextRequest
from model_runtime.train.text_pretrain import N_COLOUR, N_SHAPE, N_SIZE, scene_labels

SCENE_ROWS = len(world.POSITIONS) + 1
"""Closing rows of an edit request that carry the target scene: one per slot, one for the background."""


@dataclass(frozen=True, slots=True)
class SceneConfig:
    """Hyper-parameters of the ``scene`` stage.

    Attributes:
        batch: Edit requests per step.
        captions: Caption rows per step (the anchor of the caption features).
        lr: Peak learning rate of the text encoder.
        warmup: Warm-up steps.
        keep: Weight of the caption anchor.
        neutral: Weight of the neutral rows' error.
        weight_decay: AdamW weight decay.
        changed_scale: Above 0 (the shipped stage: 1): the row of what the edit changes
            (:func:`changed_slots`), whose target is a relative distance ``d`` from the source scene's row
            (colour and shape changes are the small ones), weighs ``clip(changed_scale / d, 1, 10)`` in the
            scene error, so that a small change is said as precisely as a large one. 0: every scene row weighs
            the same (the first shipped stage, ``docs/results/nano/run6/``; ``docs/nano.md``).
        source_read: Above 0: weight of an auxiliary readout of the *source* at the first
            ``SCENE_ROWS`` tokens after ``<|vision_end|>`` (the diptych sentence, the same words at the same
            places in every request, right after the image): token ``j`` is asked, at the output of decoder
            layer ``source_read_layer``, for the source's object at slot ``j`` (the last one: its
            background). Those rows sit at a fixed distance from the image, so they can find a slot's cells
            by position, and the closing rows can then find a slot by the word that holds it instead of
            among identical image tokens. The heads are thrown away with the stage. 0 (the shipped stage):
            no readout.
        source_read_layer: The decoder layer (0-based) whose output the readout reads.
        target_read: Above 0: weight of an auxiliary readout of the *target* scene at the ``SCENE_ROWS``
            closing rows (the rows the scene error trains), at the output of decoder layer
            ``target_read_layer``: row ``j`` is asked for the target's object at slot ``j`` (the last one: its
            background), so the closing rows learn *what* the edited scene is as labels, with a gradient as
            large for a colour as for a move, before the last layers say it in caption language. The heads are
            thrown away with the stage. 0 (the shipped stage): no readout.
        target_read_layer: The decoder layer (0-based) whose output the target readout reads.
    """

    batch: int = 32
    captions: int = 16
    lr: float = 1e-3
    warmup: int = 20
    keep: float = 4.0
    neutral: float = 1.0
    weight_decay: float = 0.0
    changed_scale: float = 1.0
    source_read: float = 0.0
    source_read_layer: int = 1
    target_read: float = 0.0
    target_read_layer: int = 2


class SceneTargets:
    """Caption-language target states of edit requests' features, from a frozen reference encoder.

    Args:
        featurizer: The runtime-exact text stage (its tokenizer names the position and colour words).
        bg_word: The background's row: its ``colour`` word or the word ``background``.
        objects: An object's row: its position word in the target's ``caption``, or in its own one-object
            caption (``one``: the same in every scene).
    """

    def __init__(self, featurizer: TextFeaturizer, bg_word: str = "colour", objects: str = "caption") -> None:
        from tokenizers import Tokenizer

        if bg_word not in ("colour", "background"):
            raise ValueError(f"bg_word: expected 'colour' or 'background', got {bg_word!r}")
        if objects not in ("caption", "one"):
            raise ValueError(f"objects: expected 'caption' or 'one', got {objects!r}")
        tok = Tokenizer.from_file(str(featurizer.tokenizer_file))
        self.fz = featurizer
        self.pos_ids = {tok.token_to_id("Ġ" + p): p for p in world.POSITIONS}
        self.bg_ids = {tok.token_to_id("Ġ" + b) for b in world.BACKGROUND_NAMES}
        self.background_id = tok.token_to_id("Ġbackground")
        if None in self.pos_ids or None in self.bg_ids or self.background_id is None:
            raise ValueError("the tokenizer lacks a position, background colour or 'background' word token")
        self.bg_word = bg_word
        self.objects = objects
        self._one: dict[world.ShapeObject, torch.Tensor] = {}

    def caption_rows(self, scene: world.Scene) -> tuple[str, list[int | None], int]:
        """The scene's caption and the kept rows of its words.

        Returns:
            The caption, the row of each slot's position word (None: an empty slot), the background's row.
        """
        caption = scene.caption()
        ids = self.fz.kept_ids(TextRequest("generate", caption))
        rows: list[int | None] = [None] * len(world.POSITIONS)
        for k, t in enumerate(ids):
            if t in self.pos_ids:
                rows[world.POSITIONS.index(self.pos_ids[t])] = k
        wanted = self.bg_ids if self.bg_word == "colour" else {self.background_id}
        bg = max(k for k, t in enumerate(ids) if t in wanted)
        return caption, rows, bg

    @torch.no_grad()
    def __call__(
        self, ref: Any, targets: Sequence[world.Scene], lengths: Sequence[int], width: int
    ) -> torch.Tensor:
        """``(B, width, D)`` float32 target features of edit requests whose kept rows number ``lengths``."""
        capts = [self.caption_rows(s) for s in targets]
        feats, _ = self.fz(ref, [TextRequest("generate", c) for c, _, _ in capts])  # (B, Lc, D) f32
        neutral = feats[0, 0]  # (D,) the constant first kept token of every caption
        out = neutral.expand(len(targets), width, feats.shape[-1]).clone()  # (B, W, D) f32
        for b, ((_, rows, bg), n) in enumerate(zip(capts, lengths, strict=True)):
            for j, r in enumerate(rows):
                if r is not None:
                    out[b, n - SCENE_ROWS + j] = feats[b, r]
            out[b, n - 1] = feats[b, bg]
        if self.objects == "one":
            for b, (scene, n) in enumerate(zip(targets, lengths, strict=True)):
                for o in scene.objects:
                    out[b, n - SCENE_ROWS + world.POSITIONS.index(o.position)] = self.one_object(ref, o)
        return out

    @torch.no_grad()
    def one_object(self, ref: Any, o: world.ShapeObject) -> torch.Tensor:
        """``(D,)`` the position word's state in the object's own caption; cached (``ref`` is frozen)."""
        if o not in self._one:
            caption = f"{o.phrase()} on a white background"
            ids = self.fz.kept_ids(TextRequest("generate", caption))
            row = next(k for k, t in enumerate(ids) if t in self.pos_ids)
            feats, _ = self.fz(ref, [TextRequest("generate", caption)])  # (1, L, D)
            self._one[o] = feats[0, row]
        return self._one[o]


class SourceReadout(nn.Module):
    """Heads that ask the diptych rows for the source scene (:attr:`SceneConfig.source_read`).

    Args:
        dim: The encoder's hidden size.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.slot_head = nn.Linear(dim, N_COLOUR + N_SHAPE + N_SIZE)
        self.bg_head = nn.Linear(dim, len(world.BACKGROUND_NAMES))

    def loss(self, states: torch.Tensor, sources: Sequence[world.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the readout and the fraction of slots (and backgrounds) read exactly.

        Args:
            states: ``(B, SCENE_ROWS, D)`` the diptych rows' states, slots in ``world.POSITIONS`` order, then
                the background's.
            sources: The requests' source scenes.
        """
        labels = [scene_labels(s) for s in sources]
        slot_y = torch.tensor([lab for lab, _ in labels]).view(len(sources), -1, 3)  # (B, 5, 3) int64
        bg_y = torch.tensor([bg for _, bg in labels])  # (B,) int64
        h = self.norm(states.float())  # (B, 6, D) f32
        logits = self.slot_head(h[:, :-1])  # (B, 5, 15)
        bg_logits = self.bg_head(h[:, -1])  # (B, 3)
        parts = torch.split(logits, [N_COLOUR, N_SHAPE, N_SIZE], dim=-1)
        loss = F.cross_entropy(bg_logits, bg_y)
        right = [bg_logits.argmax(-1) == bg_y]  # (B,) bool each
        for k, part in enumerate(parts):
            loss = loss + F.cross_entropy(part.flatten(0, 1), slot_y[..., k].flatten())
        exact = torch.stack([p.argmax(-1) for p in parts], -1).eq(slot_y).all(-1)  # (B, 5) bool
        right.extend(exact.unbind(1))
        return loss, torch.stack(right).float().mean()


@contextmanager
def layer_states(text_encoder: Any, layer: int) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of one decoder layer of ``text_encoder`` while the block runs.

    The list holds one ``(B, T, D)`` tensor per call of the layer: one for the plain text path, two for the
    shared-prefix one (``(1, P, D)`` the prefix, ``(B, T - P, D)`` the rest).
    """
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, _args: Any, out: Any) -> None:
        captured.append(out if isinstance(out, torch.Tensor) else out[0])

    handle = text_encoder.model.language_model.layers[layer].register_forward_hook(grab)
    try:
        yield captured
    finally:
        handle.remove()


def diptych_rows(featurizer: TextFeaturizer, vision_end_id: int) -> list[int]:
    """Full-row indices of the ``SCENE_ROWS`` tokens after ``<|vision_end|>`` in an edit request."""
    blank = np.zeros((8, 8, 3), np.uint8)
    req = TextRequest("edit", "x", blank)
    ids = featurizer.kept_ids(req)
    if vision_end_id not in ids:
        raise ValueError("the edit features drop the image; the diptych rows are not among them")
    start = featurizer.drop_idx["edit"] + ids.index(vision_end_id) + 1
    return list(range(start, start + SCENE_ROWS))


def edit_lengths(featurizer: TextFeaturizer, edits: Sequence[world.Edit]) -> list[int]:
    """Kept rows of each edit request (the image's size does not change the count)."""
    blank = np.zeros((8, 8, 3), np.uint8)
    return [len(featurizer.kept_ids(TextRequest("edit", e.instruction, blank))) for e in edits]


def changed_slots(edit: world.Edit) -> list[bool]:
    """Per scene row (``world.POSITIONS``, then the background): whether the edit changes what it says."""
    before = {o.position: o for o in edit.source.objects}
    after = {o.position: o for o in edit.target.objects}
    rows = [before.get(p) != after.get(p) for p in world.POSITIONS]
    return [*rows, edit.source.background != edit.target.background]


def edit_requests(edits: Sequence[world.Edit]) -> list[TextRequest]:
    """The edit requests as the pipeline encodes them (instruction + rendered source)."""
    return [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits]


class SceneStage:
    """The ``scene`` stage (a :class:`~.loop.Stage`).

    Args:
        text_encoder: The encoder to train (the reference is a frozen copy of it as given).
        unet: The UNet whose ``encoder_hid_proj`` defines how rows are compared (not changed).
        featurizer: The runtime-exact text stage.
        cfg: Hyper-parameters.
        total: Planned steps.
        seed: Data seed.
        targets: The target features (default: :class:`SceneTargets` of ``featurizer``, caption rows).
    """

    def __init__(
        self,
        text_encoder: Any,
        unet: Any,
        featurizer: TextFeaturizer,
        cfg: SceneConfig,
        total: int,
        seed: int,
        targets: SceneTargets | None = None,
    ) -> None:
        self.enc = text_encoder
        self.fz = featurizer
        self.cfg = cfg
        self.total = total
        self.seed = seed
        self.reference = copy.deepcopy(text_encoder).eval().requires_grad_(False)
        self.proj = copy.deepcopy(unet.encoder_hid_proj).float().eval().requires_grad_(False)
        self.targets = targets if targets is not None else SceneTargets(featurizer)
        text_encoder.requires_grad_(True)
        self.readout: SourceReadout | None = None
        self.target_readout: SourceReadout | None = None
        self.diptych: list[int] = []
        params = list(text_encoder.parameters())
        layers = int(text_encoder.config.text_config.num_hidden_layers)
        dim = int(text_encoder.config.text_config.hidden_size)
        for name, weight, layer in (
            ("source_read", cfg.source_read, cfg.source_read_layer),
            ("target_read", cfg.target_read, cfg.target_read_layer),
        ):
            if weight > 0 and not 0 <= layer < layers:
                raise ValueError(
                    f"scene.{name}_layer: expected 0 to {layers - 1} (the encoder's decoder layers), "
                    f"got {layer}"
                )
        if cfg.source_read > 0:
            with torch.random.fork_rng(devices=[]):  # the heads' start: a function of the stage's seed
                torch.manual_seed(seed)
                self.readout = SourceReadout(dim)
            self.diptych = diptych_rows(featurizer, int(text_encoder.config.vision_end_token_id))
            params += list(self.readout.parameters())
        if cfg.target_read > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.target_readout = SourceReadout(dim)
            params += list(self.target_readout.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))

    def row_error(self, feats: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` squared error of rows as the UNet sees them, relative to the target row's power."""
        a: torch.Tensor = self.proj(feats)  # (B, L, D') f32
        b: torch.Tensor = self.proj(want)  # (B, L, D') f32
        return ((a - b) ** 2).sum(-1) / (b**2).sum(-1)

    def edit_error(
        self, edits: Sequence[world.Edit], weighted: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean error of the scene rows and of the other (neutral) rows of edit requests.

        ``weighted``: the scene rows weighted as ``cfg.changed_scale`` says (the training objective).
        """
        n = edit_lengths(self.fz, edits)
        feats, mask = self.fz(self.enc, edit_requests(edits))  # (B, L, D) f32, (B, L) int
        want = self.targets(self.reference, [e.target for e in edits], n, feats.shape[1])  # (B, L, D)
        per_row = self.row_error(feats, want)  # (B, L)
        scene = torch.zeros_like(per_row)  # (B, L) 1 = a scene row
        for b, k in enumerate(n):
            scene[b, k - SCENE_ROWS : k] = 1.0
        neutral = mask.float() * (1 - scene)  # (B, L)
        if weighted and self.cfg.changed_scale > 0:
            changed = torch.zeros_like(per_row, dtype=torch.bool)  # (B, L) the edit's own change
            for b, (e, k) in enumerate(zip(edits, n, strict=True)):
                for j, slot in enumerate(changed_slots(e)):
                    changed[b, k - SCENE_ROWS + j] = slot
            with torch.no_grad():
                was = self.targets(self.reference, [e.source for e in edits], n, feats.shape[1])  # (B, L, D)
                d = self.row_error(was, want).clamp_min(1e-6)  # (B, L) how far the target moved the row
            w = torch.where(changed, (self.cfg.changed_scale / d).clamp(1.0, 10.0), torch.ones_like(d))
            scene = scene * w  # (B, L)
        return (per_row * scene).sum() / scene.sum(), (per_row * neutral).sum() / neutral.sum()

    def caption_drift(self, scenes: Sequence[world.Scene]) -> torch.Tensor:
        """Mean row error of caption features against the reference's."""
        reqs = [TextRequest("generate", s.caption()) for s in scenes]
        with torch.no_grad():
            ref, mask = self.fz(self.reference, reqs)  # (B, L, D), (B, L)
        live, _ = self.fz(self.enc, reqs)  # (B, L, D)
        m = mask.float()
        return (self.row_error(live, ref) * m).sum() / m.sum()

    def step(self, i: int) -> dict[str, float]:
        """One optimisation step (data: a pure function of the seed and ``i``)."""
        rng = np.random.default_rng([self.seed, i])
        edits = [world.train_edit(rng) for _ in range(self.cfg.batch)]
        scenes = [world.train_scene(rng) for _ in range(self.cfg.captions)]
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(i, self.total, self.cfg.lr, self.cfg.warmup)
        self.enc.train()
        read = acc = t_read = t_acc = torch.zeros(())
        hook: AbstractContextManager[list[torch.Tensor]] = (
            nullcontext([]) if self.readout is None else layer_states(self.enc, self.cfg.source_read_layer)
        )
        t_hook: AbstractContextManager[list[torch.Tensor]] = (
            nullcontext([])
            if self.target_readout is None
            else layer_states(self.enc, self.cfg.target_read_layer)
        )
        with hook as captured, t_hook as t_captured:
            err_scene, err_neutral = self.edit_error(edits, weighted=True)
        if self.readout is not None:
            states = whole_rows(captured)[:, self.diptych]  # (B, SCENE_ROWS, D)
            read, acc = self.readout.loss(states, [e.source for e in edits])
        if self.target_readout is not None:
            full = whole_rows(t_captured)  # (B, T, D)
            drop = self.fz.drop_idx["edit"]
            rows = torch.tensor(
                [[drop + k - SCENE_ROWS + j for j in range(SCENE_ROWS)] for k in edit_lengths(self.fz, edits)]
            )  # (B, SCENE_ROWS) int64 full-row index of the closing rows
            closing = full.gather(1, rows[..., None].expand(-1, -1, full.shape[-1]))  # (B, SCENE_ROWS, D)
            t_read, t_acc = self.target_readout.loss(closing, [e.target for e in edits])
        drift = self.caption_drift(scenes)
        loss = (
            err_scene
            + self.cfg.neutral * err_neutral
            + self.cfg.keep * drift
            + self.cfg.source_read * read
            + self.cfg.target_read * t_read
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.enc.parameters(), 1.0)
        self.opt.step()
        out = {
            "loss": float(loss.detach()),
            "scene": float(err_scene.detach()),
            "neutral": float(err_neutral.detach()),
            "caption_drift": float(drift.detach()),
        }
        if self.readout is not None:
            out |= {"source_read": float(read.detach()), "source_read_exact": float(acc)}
        if self.target_readout is not None:
            out |= {"target_read": float(t_read.detach()), "target_read_exact": float(t_acc)}
        return out

    @torch.no_grad()
    def heldout_error(self, edits: Sequence[world.Edit], scenes: Sequence[world.Scene]) -> dict[str, float]:
        """Mean scene-row, neutral-row and caption errors over fixed edits and scenes (48 a batch)."""
        self.enc.eval()
        parts = [self.edit_error(edits[k : k + 48]) for k in range(0, len(edits), 48)]
        drift = [float(self.caption_drift(scenes[k : k + 48])) for k in range(0, len(scenes), 48)]
        return {
            "scene": float(np.mean([float(s) for s, _ in parts])),
            "neutral": float(np.mean([float(u) for _, u in parts])),
            "caption_drift": float(np.mean(drift)) if drift else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """Encoder and optimiser (the reference is the stage's starting encoder, rebuilt on resume)."""
        state = {"text_encoder": self.enc.state_dict(), "opt": self.opt.state_dict()}
        if self.readout is not None:
            state["readout"] = self.readout.state_dict()
        if self.target_readout is not None:
            state["target_readout"] = self.target_readout.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.enc.load_state_dict(state["text_encoder"])
        if self.readout is not None:
            self.readout.load_state_dict(state["readout"])
        if self.target_readout is not None:
            self.target_readout.load_state_dict(state["target_readout"])
        self.opt.load_state_dict(state["opt"])
