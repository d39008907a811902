"""Stage ② text: the official DreamLite prompt templates and task prefixes.

The official pipelines format the text by hand (the Qwen-Image recipe), not with a chat template:
a task-specific system prompt, then the user turn with ``[Generate]: `` or the ``[Edit]: A diptych …``
preamble before the user's words, then an open assistant turn. In edit mode the user turn starts with one
``<|image_pad|>`` between the vision markers; the tokenizer stage expands it to the image-token count.
"""

from __future__ import annotations

from typing import Literal

Task = Literal["generate", "edit"]

GENERATE_SYSTEM = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:"
)
EDIT_SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate."
)
GENERATE_PREFIX = "[Generate]: "
EDIT_PREFIX = (
    "[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, "
    "the left one has "
)
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def _template(system: str, user: str) -> str:
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def build_prompt(task: Task, prompt: str) -> str:
    """The text-encoder input string of the official pipeline, before image-token expansion.

    Args:
        task: ``generate`` or ``edit``.
        prompt: The user's words, unchanged.

    Returns:
        The full template string.
    """
    if task == "generate":
        return _template(GENERATE_SYSTEM, GENERATE_PREFIX + prompt)
    return _template(EDIT_SYSTEM, IMAGE_PLACEHOLDER + EDIT_PREFIX + prompt)


def build_unconditional_prompt(task: Task) -> str:
    """The negative branch of the guided (base) pipeline: the template with an empty user text.

    In edit mode the source image stays in the user turn, as in the official base pipeline.
    """
    if task == "generate":
        return _template(GENERATE_SYSTEM, "")
    return _template(EDIT_SYSTEM, IMAGE_PLACEHOLDER)
