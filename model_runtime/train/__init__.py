"""dreamlite-nano: the in-repo default model, trained with DreamLite's recipe on a procedural shapes world.

Modules: :mod:`.world` (scenes, renders, captions, edit triples), :mod:`.shapes_eval` (the scorer and the
fixed prompt sets), :mod:`.tokenizer_build`, :mod:`.configs`, :mod:`.models`, :mod:`.vae_fit`,
:mod:`.diffusion` (T2I / edit / joint pretraining), :mod:`.distill` (4-step distillation),
:mod:`.writer` (the official folder layout), :mod:`.recipe` and ``python -m model_runtime.train``.
"""
