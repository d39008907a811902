"""The whole dreamlite-nano recipe, stage by stage, resumable, in one run folder.

Stages (each reads what the previous ones left in the run folder):

1. ``tokenizer`` — BPE with Qwen2's layout on the world's language (seconds).
2. ``vae`` — fit ``AutoencoderTiny`` to the world (:mod:`.vae_fit`).
3. ``text`` — pretrain the nano Qwen3-VL to read captions and edit requests into the requested scene
   (:mod:`.text_pretrain`; DreamLite's UNet is conditioned on a pretrained VLM, and none exists at this size).
4. ``t2i`` — flow-matching text-to-image pretraining (the text encoder trained on jointly).
5. ``read`` — the VLM learns to read edit sources (vision tokens) and requests, captions kept in the mix
   (:mod:`.text_pretrain` with ``read_images``).
6. ``align`` — the VLM learns to make the T2I UNet (frozen) draw, from an edit request, what it draws from
   the target's caption (:mod:`.align`).
7. ``copy`` — optional, 0 steps in the shipped recipe: identity edits only (the target is the source, the
   instruction empty), which teach the UNet the path from the condition half of the in-context latent to the
   target half before real edits (``docs/nano.md``: edit training alone never learns it at this budget).
8. ``edit`` — edit pretraining with the in-context condition switched on.
9. ``joint`` — unified joint training on both tasks; its EMA is the teacher, written as a guided
   ``base`` folder (``teacher/``, 28 steps).
10. ``distill`` — on-policy trajectory distillation into the unguided 4-step student (:mod:`.distill`),
    written as the ``mobile`` folder (``student/``).
11. ``scene`` — the VLM (only) learns to say, at the closing tokens of an edit request, the whole edited
    scene in the student's caption language (:mod:`.scene`); writes ``scene/student`` and, from
    ``teacher/``, ``scene/teacher`` with the new encoder.
12. ``caption_teacher`` — the student's UNet (only) learns to draw, from an edit request, what a frozen copy
    of itself draws from the target's caption, on its own 4-step trajectories (:mod:`.caption_teacher`);
    writes ``caption_teacher/student``.
13. ``teacher_caption`` — the same for the guided 28-step teacher ``scene`` left (``scene/teacher``, or
    ``teacher/`` without scene steps): its UNet's conditional edit velocity learns its own caption velocity at
    forward-noised target latents (:mod:`.caption_teacher`, ``states="forward"``); writes
    ``teacher_caption/teacher``.

The last student folder the recipe makes (``caption_teacher/student``, ``scene/student`` or ``student/``:
the last of those stages with steps) is copied to the output folder.

Every stage checkpoints to ``<run>/<stage>/ckpt.pt``; ``--resume`` continues an interrupted stage at the
same step with the same data. The loss log of all stages is ``<run>/train_log.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from model_runtime.train import configs, tokenizer_build, vae_fit
from model_runtime.train.align import AlignConfig, AlignStage
from model_runtime.train.caption_teacher import CaptionTeacherConfig, CaptionTeacherStage
from model_runtime.train.configs import NanoSizes
from model_runtime.train.diffusion import DiffusionConfig, DiffusionStage, NanoModels, copy_only
from model_runtime.train.distill import DistillConfig, DistillStage, frozen_copy
from model_runtime.train.loop import StageLog, run_stage, write_logs
from model_runtime.train.models import Ema, build_text_encoder, build_unet, count_params
from model_runtime.train.scene import SceneConfig, SceneStage
from model_runtime.train.text_features import TextFeaturizer, TextRequest
from model_runtime.train.text_pretrain import ReadItem, TextPretrainConfig, TextPretrainStage
from model_runtime.train.writer import folder_bytes, write_folder

logger = logging.getLogger(__name__)

STAGES = (
    "tokenizer",
    "vae",
    "text",
    "t2i",
    "read",
    "align",
    "copy",
    "edit",
    "joint",
    "distill",
    "scene",
    "caption_teacher",
    "teacher_caption",
)
DIFFUSION_SEEDS = {"t2i": 103, "edit": 105, "joint": 106, "copy": 110}
"""Data seed of each diffusion stage, added to the recipe's seed (fixed when ``copy`` joined the stages)."""


@dataclass(frozen=True)
class RecipeConfig:
    """Steps and hyper-parameters of every stage.

    Attributes:
        sizes: Model sizes.
        unet_layout: The UNet's block layout, a key of ``configs.UNET_LAYOUTS`` (``mobile``:
            DreamLite-mobile's, the shipped one).
        vae_steps: VAE steps (batch ``vae_batch`` of 64×64 crops).
        vae_precision: The VAE stage's forward precision (``auto``: bf16 autocast only on a CPU with native
            bf16; emulated bf16 is ~8× slower than fp32). The shipped VAE was fitted with bf16 (AMX).
        vae_hard_share: Share of the VAE's scenes put on the colour pairs it fits worst (``vae_fit``).
        vae_leak: Initial slope of the VAE blocks' leaky fuse while the fit takes shape (``vae_fit``).
        text: The text stage; ``text_steps`` its length.
        read: The VLM's edit-reading stage; ``read_steps`` its length.
        align: The VLM's alignment of edit requests to target captions through the T2I UNet;
            ``align_steps`` its length (0: no such stage, as in recipes written before it).
        t2i / edit / joint: The three pretraining stages.
        copy: The optional identity-edit stage before ``edit``.
        t2i_steps / copy_steps / edit_steps / joint_steps: Their lengths (``copy_steps`` 0: no copy stage,
            the shipped recipe).
        distill: Distillation settings; ``distill_steps`` its length.
        scene: The VLM's caption-language scene tokens for edits after distillation; ``scene_steps`` its
            length (0: no such stage, as in recipes written before it).
        caption_teacher: The student's edit path taught by its own caption path, after ``scene``;
            ``caption_teacher_steps`` its length (0: no such stage, as in recipes written before it).
        teacher_caption: The guided teacher's edit path taught by its own caption path, after ``scene``
            (forward-noised rows, the unconditional branch anchored); ``teacher_caption_steps`` its length
            (0: no such stage, as in recipes written before it).
        edit_image_features: Whether the edit features the UNet sees keep the VLM's image tokens (the
            official templates' drop; the shipped recipe). False: the folder's edit ``drop_idx`` also covers
            them, so the UNet reads only the instruction and closing tokens, which see image and instruction
            in the causal VLM (measured worse at this budget: ``docs/nano.md``).
        scene_before_edit: Run ``scene`` right after the text-encoder stages that follow ``t2i`` (``read``,
            ``align``; ``t2i`` itself when both have 0 steps) instead of after ``distill``: the encoder learns
            to say an edit request's target scene in the T2I caption language *before* the UNet meets edits,
            and ``copy`` / ``edit`` start from that encoder, so the teacher and the student are trained on
            those features from their first edit. ``scene`` then measures its rows through the T2I UNet's
            ``encoder_hid_proj`` and writes no model folder; ``caption_teacher`` and ``teacher_caption``
            (if they have steps) train the distilled student and the joint teacher.
        fast_text: Every stage encodes text with ``TextFeaturizer(fast=True)``: the batch's shared template
            prefix once, the patch embedding as a product. The same maths rounded differently (the shipped
            weights were trained with it; those shipped before, without); the stages with edit requests
            run faster (``tests/benchmarks/bench_nano_recipe.py`` prices the recipe both ways).
        seed: Base seed (model init and data).
    """

    sizes: NanoSizes = field(default_factory=NanoSizes)
    unet_layout: str = "mobile"
    vae_steps: int = 3000
    vae_batch: int = 8
    vae_precision: vae_fit.VaePrecision = "auto"
    vae_hard_share: float = vae_fit.HARD_SHARE
    vae_leak: float = vae_fit.LEAK
    text: TextPretrainConfig = field(default_factory=TextPretrainConfig)
    text_steps: int = 1000
    t2i: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(edit_share=0.0))
    t2i_steps: int = 1000
    read: TextPretrainConfig = field(
        default_factory=lambda: TextPretrainConfig(lr=1e-3, warmup=30, captions_first=0, read_images=True)
    )
    read_steps: int = 1500
    align: AlignConfig = field(default_factory=AlignConfig)
    align_steps: int = 0
    copy: DiffusionConfig = field(
        default_factory=lambda: copy_only(DiffusionConfig(edit_share=1.0, lr=1e-3, warmup=20))
    )
    copy_steps: int = 0
    edit: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(edit_share=1.0, warmup=30, text_lr=0.0)
    )
    edit_steps: int = 400
    joint: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(edit_share=0.5, warmup=30, text_lr=0.0)
    )
    joint_steps: int = 900
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_steps: int = 100
    scene: SceneConfig = field(default_factory=lambda: SceneConfig(source_read=1.0, target_read=1.0))
    scene_steps: int = 3600
    caption_teacher: CaptionTeacherConfig = field(default_factory=CaptionTeacherConfig)
    caption_teacher_steps: int = 0
    teacher_caption: CaptionTeacherConfig = field(
        default_factory=lambda: CaptionTeacherConfig(states="forward", uncond_share=0.25)
    )
    teacher_caption_steps: int = 0  # 900 in the old order (600 counted at 0.785 over two seeds: docs/nano.md)
    edit_image_features: bool = True
    fast_text: bool = True
    scene_before_edit: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.unet_layout not in configs.UNET_LAYOUTS:
            raise ValueError(
                f"unet_layout: expected one of {sorted(configs.UNET_LAYOUTS)}, got {self.unet_layout!r}"
            )

    @classmethod
    def quick(cls) -> RecipeConfig:
        """A tiny end-to-end configuration (unit tests: seconds per stage).

        Every stage has steps and ``scene`` runs after ``distill`` (the order of the weights shipped before
        the current ones), so one run exercises every stage's code; tests derive the shipped order from it.
        """
        small = DiffusionConfig(edit_share=0.0, batch=2, warmup=1)
        return cls(
            sizes=NanoSizes.test(),
            vae_steps=2,
            vae_batch=2,
            text=TextPretrainConfig(batch=4, warmup=1, captions_first=1),
            text_steps=2,
            t2i=small,
            t2i_steps=2,
            read=TextPretrainConfig(batch=4, warmup=1, captions_first=0, read_images=True),
            read_steps=2,
            align=AlignConfig(batch=4, warmup=1),
            align_steps=2,
            copy=copy_only(small),
            copy_steps=2,
            edit=replace(small, edit_share=1.0),
            edit_steps=2,
            joint=replace(small, edit_share=0.5),
            joint_steps=2,
            distill=DistillConfig(batch=4, warmup=1),
            distill_steps=2,
            scene=SceneConfig(batch=4, captions=2, warmup=1),
            scene_steps=2,
            caption_teacher=CaptionTeacherConfig(batch=4, warmup=1),
            caption_teacher_steps=2,
            teacher_caption=CaptionTeacherConfig(batch=4, warmup=1, states="forward", uncond_share=1.0),
            teacher_caption_steps=2,
            fast_text=False,
            scene_before_edit=False,
        )

    def stage_order(self) -> tuple[str, ...]:
        """The stages in the order this recipe runs them.

        :data:`STAGES`, with ``scene`` moved before ``copy`` when ``scene_before_edit``.
        """
        if not self.scene_before_edit:
            return STAGES
        rest = [s for s in STAGES if s != "scene"]
        at = rest.index("copy")
        return (*rest[:at], "scene", *rest[at:])

    def late_scene(self) -> bool:
        """Whether ``scene`` has steps and runs after ``distill`` (it then rewrites the model folders)."""
        return self.scene_steps > 0 and not self.scene_before_edit

    def vae_stage(self, vae: Any, **overrides: Any) -> vae_fit.VaeStage:
        """The ``vae`` stage of this recipe for ``vae`` (``overrides``: keyword arguments of ``VaeStage``)."""
        kwargs: dict[str, Any] = {
            "batch": self.vae_batch,
            "seed": self.seed + 10,
            "precision": self.vae_precision,
            "hard_share": self.vae_hard_share,
            "leak": self.vae_leak,
        }
        return vae_fit.VaeStage(vae, self.vae_steps, **{**kwargs, **overrides})

    def with_setting(self, key: str, value: Any) -> RecipeConfig:
        """A copy with one field set: ``edit_steps`` or ``stage.field`` (``edit.lr``) to a parsed JSON value.

        Raises:
            ValueError: An unknown key, or a value of another type than the field's (an int is accepted
                for a float and a list for a tuple).
        """
        head, _, leaf = key.partition(".")
        names = [f.name for f in fields(self)]
        if head not in names or (leaf and not is_dataclass(getattr(self, head))):
            plain = [name for name in names if not is_dataclass(getattr(self, name))]
            nested = [f"{name}.<field>" for name in names if is_dataclass(getattr(self, name))]
            raise ValueError(f"unknown recipe key {key!r}; keys: {', '.join(plain + nested)}")
        if not leaf:
            return replace(self, **{head: _typed(key, getattr(self, head), value)})
        inner = getattr(self, head)
        inner_names = [f.name for f in fields(inner)]
        if leaf not in inner_names:
            raise ValueError(f"unknown recipe key {key!r}; fields of {head!r}: {', '.join(inner_names)}")
        return replace(self, **{head: replace(inner, **{leaf: _typed(key, getattr(inner, leaf), value)})})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def saved_or_default(cls, run_dir: Path) -> RecipeConfig:
        """The recipe saved in ``run_dir`` (``recipe.json``), or the default one."""
        saved = run_dir / "recipe.json"
        return cls.from_json(json.loads(saved.read_text())) if saved.is_file() else cls()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecipeConfig:
        """Inverse of :meth:`to_json`."""
        d = dict(data)
        d["sizes"] = NanoSizes.from_json(d["sizes"])
        d.setdefault("vae_hard_share", 0.0)  # absent from a recipe.json written before the checks existed
        d.setdefault("vae_leak", 0.0)  # absent from a recipe.json written before the leaky fuse
        d.setdefault("align_steps", 0)  # absent from a recipe.json written before the align stage existed
        d.setdefault("edit_image_features", True)  # absent from a recipe.json written before the choice
        d.setdefault("fast_text", False)  # absent from a recipe.json written before the fast text path
        d.setdefault("scene_before_edit", False)  # absent from one written before the choice
        d.setdefault("scene_steps", 0)  # absent from a recipe.json written before the scene stage existed
        d.setdefault("caption_teacher_steps", 0)  # absent from one written before that stage existed
        d.setdefault("teacher_caption_steps", 0)  # absent from one written before that stage existed
        for key in ("caption_teacher", "teacher_caption"):
            if key in d:
                d[key] = CaptionTeacherConfig(**d[key])
        if "scene" in d:  # ``changed_scale`` is absent from one written before the weighting (it was 0)
            d["scene"] = SceneConfig(**{"changed_scale": 0.0, **d["scene"]})
        if "align" in d:
            d["align"] = AlignConfig(**d["align"])
        for key in ("t2i", "copy", "edit", "joint"):
            if key in d:  # ``copy`` is absent from a recipe.json written before that stage existed
                d[key] = DiffusionConfig(**d[key])
        for key in ("text", "read"):
            d[key] = TextPretrainConfig(**d[key])
        dist = dict(d["distill"])
        dist["guidance"] = tuple(dist["guidance"])
        d["distill"] = DistillConfig(**dist)
        return cls(**d)


def _typed(key: str, current: Any, value: Any) -> Any:
    """``value`` checked against the type of the field's ``current`` value (see ``with_setting``)."""
    if isinstance(value, list) and (current is None or isinstance(current, tuple)):
        return tuple(value)
    if current is None:  # an optional field (``edit_kinds``): the dataclass validates the value
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(current):
        raise ValueError(f"{key}: expected a {type(current).__name__} like {current!r}, got {value!r}")
    return value


def setting_stage(key: str) -> str:
    """The first stage a recipe key changes (its weights and every later stage's depend on it)."""
    head = key.partition(".")[0]
    early = {
        "sizes": "vae",
        "seed": "vae",
        "vae_batch": "vae",
        "vae_precision": "vae",
        "vae_hard_share": "vae",
        "vae_leak": "vae",
        "unet_layout": "t2i",
        "edit_image_features": "text",
        "fast_text": "text",
        "scene_before_edit": "scene",
    }
    stage = early.get(head, head.removesuffix("_steps"))
    if stage not in STAGES:
        raise ValueError(f"unknown recipe key {key!r}")
    return stage


class Recipe:
    """Runs the stages of a :class:`RecipeConfig` in a run folder.

    Args:
        run_dir: The run folder (created).
        config: The recipe; when None, the one saved in ``run_dir`` (or the default).
        resume: Continue interrupted stages from their checkpoints.
        progress: Show progress bars.
    """

    def __init__(
        self, run_dir: Path, config: RecipeConfig | None = None, *, resume: bool = True, progress: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.cfg = config if config is not None else RecipeConfig.saved_or_default(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(
            json.dumps(self.cfg.to_json(), indent=1) + "\n", encoding="utf-8"
        )
        self.logs: dict[str, StageLog] = {}
        log_path = run_dir / "train_log.json"
        if log_path.is_file():
            for name, data in json.loads(log_path.read_text()).items():
                self.logs[name] = StageLog(**data)

    # -------------------------------------------------------------------------------------- helpers
    def _done(self, stage: str) -> bool:
        return (self.run_dir / stage / "done.json").is_file()

    def _mark_done(self, stage: str, info: dict[str, Any]) -> None:
        (self.run_dir / stage).mkdir(parents=True, exist_ok=True)
        (self.run_dir / stage / "done.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    def _record(self, log: StageLog) -> None:
        self.logs[log.name] = log
        write_logs(self.logs, self.run_dir / "train_log.json")

    def tokenizer(self) -> Any:
        """The trained tokenizer (built once, then read from the run folder)."""
        from tokenizers import Tokenizer

        path = self.run_dir / "tokenizer" / "tokenizer.json"
        if not path.is_file():
            tok = tokenizer_build.build_tokenizer()
            tokenizer_build.save_tokenizer(tok, path.parent)
        return Tokenizer.from_file(str(path))

    def vae(self) -> Any:
        """The fitted VAE (frozen)."""
        vae = vae_fit.build_vae(self.cfg.sizes, seed=self.cfg.seed)
        state = torch.load(self.run_dir / "vae" / "ckpt.pt", map_location="cpu", weights_only=False)
        vae.load_state_dict(state["stage"]["vae"])
        return vae.eval().requires_grad_(False)

    def drop_idx(self) -> dict[str, int]:
        """Template tokens dropped from the text features per task (the folder's ``drop_idx``)."""
        s = self.cfg.sizes
        merge = int(configs.processor_config(s).get("merge_size", 2))
        image_tokens = None if self.cfg.edit_image_features else (s.vlm_image // 16 // merge) ** 2
        return tokenizer_build.drop_indices(self.tokenizer(), image_tokens)

    def featurizer(self) -> TextFeaturizer:
        """The runtime-exact text stage of this run's tokenizer and sizes."""
        tok = self.tokenizer()
        s = self.cfg.sizes
        return TextFeaturizer(
            self.run_dir / "tokenizer" / "tokenizer.json",
            configs.processor_config(s),
            self.drop_idx(),
            (s.vlm_image, s.vlm_image),
            tokenizer_build.token_ids(tok)["<|endoftext|>"],
            fast=self.cfg.fast_text,
        )

    def text_encoder(self) -> Any:
        """A fresh (seeded) text encoder."""
        return build_text_encoder(self.cfg.sizes, self.tokenizer(), seed=self.cfg.seed + 1)

    def models(self) -> NanoModels:
        """Fresh UNet and text encoder (seeded), the fitted VAE and the text stage."""
        s = self.cfg.sizes
        featurizer = self.featurizer()
        return NanoModels(
            text_encoder=self.text_encoder(),
            unet=build_unet(s, seed=self.cfg.seed + 2, layout=self.cfg.unet_layout),
            vae=self.vae(),
            featurizer=featurizer,
            scheduler_config=configs.scheduler_config(),
        )

    def folder_models(self, folder: Path) -> NanoModels:
        """:meth:`NanoModels.from_folder`, its text stage set as this recipe's (``fast_text``)."""
        return NanoModels.from_folder(folder, fast_text=self.cfg.fast_text)

    def _load_stage_models(self, models: NanoModels, stage: str, ema: bool) -> None:
        state = torch.load(self.run_dir / stage / "ckpt.pt", map_location="cpu", weights_only=False)["stage"]
        models.unet.load_state_dict(state["unet"])
        models.text_encoder.load_state_dict(state["text_encoder"])
        if ema:
            for module, key in ((models.unet, "ema_unet"), (models.text_encoder, "ema_text")):
                with torch.no_grad():
                    for p, v in zip(module.parameters(), state[key]["shadow"], strict=True):
                        p.copy_(v)

    # --------------------------------------------------------------------------------------- stages
    def run_tokenizer(self) -> None:
        """Stage 1."""
        t0 = time.perf_counter()
        tok = self.tokenizer()
        info = {
            "vocab": tok.get_vocab_size(),
            "drop_idx": self.drop_idx(),
            "seconds": time.perf_counter() - t0,
        }
        self._mark_done("tokenizer", info)
        self._record(StageLog(name="tokenizer", total_steps=0, seconds=info["seconds"]))

    def run_vae(self) -> None:
        """Stage 2."""
        vae = vae_fit.build_vae(self.cfg.sizes, seed=self.cfg.seed)
        stage = self.cfg.vae_stage(vae)
        log = run_stage(
            stage, "vae", self.cfg.vae_steps, self.run_dir, resume=self.resume, progress=self.progress
        )
        self._record(log)
        self._mark_done(
            "vae",
            {
                "params": count_params(vae),
                "latents": vae_fit.latent_stats(vae),
                "precision": stage.precision,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "pair_errors": {f"{c}/{b}": e for (c, b), e in vae_fit.pair_errors(vae).items()},
                "hard_checks": stage.hard_log,
            },
        )

    def run_text(self, name: str) -> None:
        """Stages 3 and 5 (``text``, ``read``).

        Reports the readout's exact-match rate on the held-out ShapesEval requests. ``read`` continues
        from the text encoder T2I left.
        """
        from model_runtime.train import shapes_eval, world

        cfg: TextPretrainConfig = getattr(self.cfg, name)
        total: int = getattr(self.cfg, f"{name}_steps")
        text_encoder = self.text_encoder()
        if name == "read":
            state = torch.load(self.run_dir / "t2i" / "ckpt.pt", map_location="cpu", weights_only=False)
            text_encoder.load_state_dict(state["stage"]["text_encoder"])
        stage = TextPretrainStage(
            text_encoder,
            self.featurizer(),
            cfg,
            total,
            seed=self.cfg.seed + {"text": 50, "read": 60}[name],
        )
        log = run_stage(stage, name, total, self.run_dir, resume=self.resume, progress=self.progress)
        self._record(log)
        gen = [
            ReadItem(TextRequest("generate", g.prompt), g.scene)
            for g in shapes_eval.generate_items("heldout")
        ]
        edit = [
            ReadItem(TextRequest("edit", e.edit.instruction, world.render(e.edit.source)), e.edit.target)
            for e in shapes_eval.edit_items("heldout")
        ]
        info = {
            "text_encoder_params": count_params(text_encoder),
            "heldout_exact": {"generate": stage.accuracy(gen), "edit": stage.accuracy(edit)},
        }
        self._mark_done(name, info)

    def _reader(self, before_scene: bool = False) -> str:
        """The stage whose text encoder the edit stages start from.

        ``scene`` when it runs before the edit stages, else ``align`` or ``read`` when the recipe gives them
        steps, else ``t2i``. ``before_scene``: the stage that such a ``scene`` starts from.
        """
        if self.cfg.scene_before_edit and self.cfg.scene_steps > 0 and not before_scene:
            return "scene"
        if self.cfg.align_steps > 0:
            return "align"
        return "read" if self.cfg.read_steps > 0 else "t2i"

    def run_align(self) -> None:
        """Stage 6: the T2I UNet (frozen) and the encoder ``read`` left.

        Reports the gap (the loss) on the held-out ShapesEval edits before and after.
        """
        from model_runtime.train import shapes_eval, world
        from model_runtime.train.diffusion import Example

        total = self.cfg.align_steps
        if total == 0:  # not part of this recipe
            self._mark_done("align", {"skipped": True})
            return
        models = self.models()
        models.unet.load_state_dict(self._stage_state("t2i")["unet"])
        reader = "read" if self.cfg.read_steps > 0 else "t2i"
        models.text_encoder.load_state_dict(self._stage_state(reader)["text_encoder"])
        stage = AlignStage(models, self.cfg.align, total, seed=self.cfg.seed + 70)
        heldout = [
            Example(
                "edit",
                e.edit.instruction,
                world.render(e.edit.target),
                world.render(e.edit.source),
                e.edit.target.key(),
                e.edit.source.key(),
                e.edit.target.caption(list(range(len(e.edit.target.objects)))),
            )
            for e in shapes_eval.edit_items("heldout")
        ]
        before = stage.heldout_gap(heldout)
        log = run_stage(stage, "align", total, self.run_dir, resume=self.resume, progress=self.progress)
        self._record(log)
        self._mark_done("align", {"heldout_gap": {"before": before, "after": stage.heldout_gap(heldout)}})

    def _stage_state(self, stage: str) -> dict[str, Any]:
        state: dict[str, Any] = torch.load(
            self.run_dir / stage / "ckpt.pt", map_location="cpu", weights_only=False
        )["stage"]
        return state

    def run_diffusion(self, name: str) -> None:
        """The diffusion stages (``t2i``, ``copy``, ``edit``, ``joint``)."""
        cfg: DiffusionConfig = getattr(self.cfg, name)
        total: int = getattr(self.cfg, f"{name}_steps")
        if name == "copy" and total == 0:  # not part of this recipe
            self._mark_done(name, {"skipped": True})
            return
        models = self.models()
        copied = self.cfg.copy_steps > 0
        previous = {"t2i": None, "copy": "t2i", "edit": "copy" if copied else "t2i", "joint": "edit"}[name]
        stage = DiffusionStage(models, cfg, total, seed=self.cfg.seed + DIFFUSION_SEEDS[name])
        if previous is not None:
            state = torch.load(self.run_dir / previous / "ckpt.pt", map_location="cpu", weights_only=False)
            models.unet.load_state_dict(state["stage"]["unet"])
            models.text_encoder.load_state_dict(state["stage"]["text_encoder"])
            stage.ema_unet.load_state_dict(state["stage"]["ema_unet"])
            stage.ema_text.load_state_dict(state["stage"]["ema_text"])
        # a text-encoder-only stage ran in between
        reader = self._reader()
        text_stage = {"t2i": "text", "copy": reader, "edit": None if copied else reader}.get(name)
        if text_stage is not None and text_stage != previous:
            state = torch.load(self.run_dir / text_stage / "ckpt.pt", map_location="cpu", weights_only=False)
            models.text_encoder.load_state_dict(state["stage"]["text_encoder"])
            stage.ema_text = Ema(models.text_encoder.parameters(), cfg.ema_decay)
        log = run_stage(stage, name, total, self.run_dir, resume=self.resume, progress=self.progress)
        self._record(log)
        info: dict[str, Any] = {
            "unet_params": count_params(models.unet),
            "text_encoder_params": count_params(models.text_encoder),
        }
        if name == "joint":
            stage.apply_ema()
            out = self.write_teacher(models)
            info["teacher"] = str(out)
        self._mark_done(name, info)

    def write_teacher(self, models: NanoModels) -> Path:
        """The joint stage's EMA as a guided ``base`` folder (28 steps)."""
        return write_folder(
            self.teacher_folder("joint"),
            sizes=self.cfg.sizes,
            tokenizer=self.tokenizer(),
            text_encoder=models.text_encoder,
            unet=models.unet,
            vae=models.vae,
            variant="base",
            steps=self.cfg.distill.teacher_steps,
            guidance=self.cfg.distill.guidance,
            dtype=torch.float32,
            model_id="dreamlite-nano-teacher",
            drop=self.drop_idx(),
        )

    def run_distill(self, out: Path | None) -> None:
        """Stage 10; writes ``<run>/student`` and copies it to ``out``."""
        models = self.models()
        self._load_stage_models(models, "joint", ema=True)
        teacher = frozen_copy(models.unet)
        stage = DistillStage(
            models, teacher, self.cfg.distill, self.cfg.distill_steps, seed=self.cfg.seed + 200
        )
        log = run_stage(
            stage, "distill", self.cfg.distill_steps, self.run_dir, resume=self.resume, progress=self.progress
        )
        self._record(log)
        stage.apply_ema()
        student = write_folder(
            self.student_folder("distill"),
            sizes=self.cfg.sizes,
            tokenizer=self.tokenizer(),
            text_encoder=models.text_encoder,
            unet=models.unet,
            vae=models.vae,
            drop=self.drop_idx(),
        )
        info: dict[str, Any] = {"student": str(student), "bytes": folder_bytes(student)}
        if out is not None and self.last_student_stage() == "distill":
            info["out"] = _recorded(_copy_folder(student, out))
        self._mark_done("distill", info)

    def last_student_stage(self) -> str:
        """The last stage of this recipe that writes a student folder (its folder is the recipe's output)."""
        if self.cfg.caption_teacher_steps > 0:
            return "caption_teacher"
        return "scene" if self.cfg.late_scene() else "distill"

    def student_folder(self, stage: str) -> Path:
        """The student folder ``stage`` writes (``distill``: ``<run>/student``)."""
        return self.run_dir / "student" if stage == "distill" else self.run_dir / stage / "student"

    def teacher_folder(self, stage: str) -> Path:
        """The teacher folder ``stage`` writes (``joint``: ``<run>/teacher``)."""
        return self.run_dir / "teacher" if stage == "joint" else self.run_dir / stage / "teacher"

    def run_scene(self, out: Path | None) -> None:
        """Stage 11: trains the encoder of ``<run>/student``.

        Writes ``<run>/scene/student`` (copied to ``out`` when it is the recipe's last student) and, when
        ``<run>/teacher`` exists, ``<run>/scene/teacher``, both with the new encoder. Reports the held-out
        scene-row, neutral-row and caption errors before and after. With ``scene_before_edit`` it trains the
        encoder the text stages after ``t2i`` left instead, for the edit stages (no folder is written).
        """
        if self.cfg.scene_steps == 0:  # not part of this recipe
            self._mark_done("scene", {"skipped": True})
            return
        if self.cfg.scene_before_edit:
            self._run_scene_before_edit()
            return
        source = self.student_folder("distill")
        models = self.folder_models(source)
        before, after = self._train_scene(models)
        encoder = models.text_encoder.requires_grad_(False)
        info: dict[str, Any] = {"heldout_error": {"before": before, "after": after}}
        student = self._rewrite(source, self.student_folder("scene"), "text_encoder", encoder)
        info["student"] = str(student)
        info["bytes"] = folder_bytes(student)
        if self.teacher_folder("joint").is_dir():
            teacher = self._rewrite(
                self.teacher_folder("joint"), self.teacher_folder("scene"), "text_encoder", encoder
            )
            info["teacher"] = str(teacher)
        if out is not None and self.last_student_stage() == "scene":
            info["out"] = _recorded(_copy_folder(student, out))
        self._mark_done("scene", info)

    def _train_scene(self, models: NanoModels) -> tuple[dict[str, float], dict[str, float]]:
        """Run the ``scene`` stage on ``models``' encoder, leaving it in eval mode.

        The rows are measured through the UNet's ``encoder_hid_proj``.

        Returns:
            The held-out errors before and after.
        """
        from model_runtime.train import shapes_eval

        stage = SceneStage(
            models.text_encoder,
            models.unet,
            models.featurizer,
            self.cfg.scene,
            self.cfg.scene_steps,
            seed=self.cfg.seed + 300,
        )
        held = [it.edit for it in shapes_eval.edit_items("heldout")]
        scenes = [g.scene for g in shapes_eval.generate_items("heldout")]
        before = stage.heldout_error(held, scenes)
        log = run_stage(
            stage, "scene", self.cfg.scene_steps, self.run_dir, resume=self.resume, progress=self.progress
        )
        self._record(log)
        models.text_encoder.eval()
        return before, stage.heldout_error(held, scenes)

    def _run_scene_before_edit(self) -> None:
        """``scene`` with ``scene_before_edit``, on the encoder the text stages after ``t2i`` left.

        Its rows are measured through the T2I UNet's ``encoder_hid_proj``; the edit stages load the encoder
        from its checkpoint, and no model folder is written.
        """
        models = self.models()
        models.unet.load_state_dict(self._stage_state("t2i")["unet"])
        start = self._stage_state(self._reader(before_scene=True))
        models.text_encoder.load_state_dict(start["text_encoder"])
        before, after = self._train_scene(models)
        self._mark_done("scene", {"heldout_error": {"before": before, "after": after}, "before_edit": True})

    def run_caption_teacher(self, out: Path | None) -> None:
        """Stage 12: trains the UNet of the student ``scene`` left (``student/`` without scene steps).

        Writes ``<run>/caption_teacher/student`` (only its UNet's weights differ) and copies it to ``out``.
        Reports the held-out edit rows' error (against the caption teacher) before and after.
        """
        total = self.cfg.caption_teacher_steps
        if total == 0:  # not part of this recipe
            self._mark_done("caption_teacher", {"skipped": True})
            return
        source = self.student_folder("scene" if self.cfg.late_scene() else "distill")
        info, unet = self._caption_stage("caption_teacher", source, self.cfg.caption_teacher, total, 600)
        student = self._rewrite(source, self.student_folder("caption_teacher"), "unet", unet)
        info["student"] = str(student)
        info["bytes"] = folder_bytes(student)
        if out is not None:
            info["out"] = _recorded(_copy_folder(student, out))
        self._mark_done("caption_teacher", info)

    def run_teacher_caption(self) -> None:
        """Stage 13: trains the UNet of the guided teacher ``scene`` left (``teacher/`` without scene steps).

        Writes ``<run>/teacher_caption/teacher`` (only its UNet's weights differ). Reports the held-out edit
        rows' error (against the teacher's own caption path) before and after.

        Raises:
            FileNotFoundError: The run holds no teacher folder.
            ValueError: The teacher's text and image guidance differ (the stage's target assumes them equal).
        """
        total = self.cfg.teacher_caption_steps
        if total == 0:  # not part of this recipe
            self._mark_done("teacher_caption", {"skipped": True})
            return
        g, g_img = self.cfg.distill.guidance
        if g != g_img:
            raise ValueError(
                "distill.guidance: the teacher_caption stage needs equal text and image guidance, got "
                f"{g!r}, {g_img!r}; set teacher_caption_steps=0 to leave the stage out"
            )
        source = self.teacher_folder("scene" if self.cfg.late_scene() else "joint")
        if not source.is_dir():
            raise FileNotFoundError(
                f"the teacher_caption stage trains the teacher folder {source}, which this run does not hold"
            )
        info, unet = self._caption_stage("teacher_caption", source, self.cfg.teacher_caption, total, 700)
        teacher = self._rewrite(source, self.teacher_folder("teacher_caption"), "unet", unet)
        info["teacher"] = str(teacher)
        info["bytes"] = folder_bytes(teacher)
        self._mark_done("teacher_caption", info)

    def _caption_stage(
        self, name: str, source: Path, cfg: CaptionTeacherConfig, total: int, seed_offset: int
    ) -> tuple[dict[str, Any], Any]:
        """Run a :class:`CaptionTeacherStage` on the folder ``source`` as stage ``name``.

        Returns:
            The stage's report (its source and the held-out edit rows' error before and after) and the
            trained UNet (eval mode, frozen).
        """
        from model_runtime.train import shapes_eval

        models = self.folder_models(source)
        stage = CaptionTeacherStage(models, cfg, total, seed=self.cfg.seed + seed_offset)
        held = [it.edit for it in shapes_eval.edit_items("heldout")]
        before = stage.heldout_error(held)
        log = run_stage(stage, name, total, self.run_dir, resume=self.resume, progress=self.progress)
        self._record(log)
        info: dict[str, Any] = {"source": str(source)}
        if cfg.keep != 1.0:
            info["heldout_error_trained"] = stage.heldout_error(held)
            stage.merge()
            info["keep"] = cfg.keep
        unet = models.unet.eval().requires_grad_(False)
        info["heldout_error"] = {"before": before, "after": stage.heldout_error(held)}
        return info, unet

    @staticmethod
    def _rewrite(folder: Path, out: Path, component: str, module: Any) -> Path:
        """``folder`` copied to ``out`` with another ``component``'s weights (in the folder's precision).

        Every other file, the component's config included, is copied unchanged.

        Args:
            folder: A model folder.
            out: Destination (replaced).
            component: ``text_encoder`` or ``unet``.
            module: The component's new weights.

        Raises:
            ValueError: The module's weights are not the folder's tensors.
        """
        from safetensors import safe_open
        from safetensors.torch import save_file

        tmp = _copy_folder(folder, out.with_name(out.name + ".tmp"))
        files = {"text_encoder": "model.safetensors", "unet": "diffusion_pytorch_model.safetensors"}
        weights = tmp / component / files[component]
        with safe_open(str(weights), "pt") as f:
            names = f.keys()
            slices = {k: f.get_slice(k) for k in names}
            shapes = {k: (s.get_shape(), s.get_dtype()) for k, s in slices.items()}
            metadata = f.metadata()
        state = module.state_dict()
        missing = sorted(set(shapes) - set(state))
        if missing:
            raise ValueError(f"the {component} lacks {len(missing)} tensors of {weights}, e.g. {missing[:3]}")
        dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
        new = {}
        for key, (shape, kind) in shapes.items():
            if list(state[key].shape) != list(shape):
                raise ValueError(f"{key}: shape {list(state[key].shape)}, the folder's {list(shape)}")
            new[key] = state[key].detach().to(dtype[kind]).contiguous()
        save_file(new, str(weights), metadata=metadata)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
        return out

    def run(
        self, stages: tuple[str, ...] | None = None, out: Path | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Run ``stages`` in order (default: :meth:`RecipeConfig.stage_order`), skipping done ones.

        ``force`` runs done stages again.

        Returns:
            Wall seconds per stage run now.
        """
        timings: dict[str, Any] = {}
        for name in self.cfg.stage_order() if stages is None else stages:
            if self._done(name) and not force:
                logger.info("stage %s already done", name)
                continue
            t0 = time.perf_counter()
            if name == "tokenizer":
                self.run_tokenizer()
            elif name == "vae":
                self.run_vae()
            elif name in ("text", "read"):
                self.run_text(name)
            elif name == "align":
                self.run_align()
            elif name in ("t2i", "copy", "edit", "joint"):
                self.run_diffusion(name)
            elif name == "distill":
                self.run_distill(out)
            elif name == "scene":
                self.run_scene(out)
            elif name == "caption_teacher":
                self.run_caption_teacher(out)
            elif name == "teacher_caption":
                self.run_teacher_caption()
            else:
                raise ValueError(f"unknown stage `{name}`; stages: {', '.join(STAGES)}")
            timings[name] = round(time.perf_counter() - t0, 1)
            logger.info("stage %s took %.1f s", name, timings[name])
        return timings


def _copy_folder(folder: Path, out: Path) -> Path:
    """``folder`` copied to ``out`` (replacing it)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder, out)
    return out


def _recorded(path: Path) -> str:
    """``path`` as a ``done.json`` records it.

    Relative to the working directory when inside it, so a record committed from the repo names no machine.
    """
    resolved, here = path.resolve(), Path.cwd()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(path)
