"""Print the README's ShapesEval table (markdown) from the JSON reports of ``scripts/nano_eval_all.sh``.

python scripts/nano_results_table.py [docs/results/nano]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (
    ("VAE ceiling (expected renders through the VAE)", "vae-ceiling.json"),
    ("teacher (shipped recipe: joint EMA), 28 steps, guided, float32", "teacher-28step-float32.json"),
    ("teacher (shipped recipe: joint EMA), 28 steps, guided, bfloat16", "teacher-28step-bfloat16.json"),
    ("student (shipped), 4 steps, float32", "student-4step-float32.json"),
    ("student (shipped), 4 steps, bfloat16", "student-4step-bfloat16.json"),
    ("student, 4 steps, ONNX bundle fp32 (CPU EP)", "student-4step-onnx-fp32.json"),
    ("student, 4 steps, ONNX bundle w8a16 QDQ (CPU EP)", "student-4step-onnx-w8a16.json"),
    (
        "text path's ceiling: student, 4 steps, each edit generated from its target's caption",
        "student-4step-edits-as-captions.json",
    ),
    (
        "`read` 1200 and `scene` 3300 steps (`read1200-scene3300/`): student, 4 steps, float32",
        "read1200-scene3300/student-4step-float32.json",
    ),
    (
        "weights shipped before (old order, repair stages; `run8/`): teacher, 28 steps, float32",
        "run8/teacher-28step-float32.json",
    ),
    (
        "weights shipped before (`run8/`): student, 4 steps, float32",
        "run8/student-4step-float32.json",
    ),
    (
        "weights shipped before (`run8/`): student, 4 steps, ONNX bundle w8a16 QDQ (CPU EP)",
        "run8/student-4step-onnx-w8a16.json",
    ),
)
GEN = ("overall", "colour", "shape", "count", "position", "size", "background", "exact")
EDIT = ("overall", "colour", "shape", "add", "remove", "move", "background")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/nano")
    reports = {name: json.loads((folder / f).read_text()) for name, f in ROWS if (folder / f).is_file()}
    print("Generate (held-out prompts; images = prompts × seeds):\n")
    print("| model | images | " + " | ".join(GEN) + " |")
    print("|---|---|" + "---|" * len(GEN))
    for name, r in reports.items():
        if not r["generate"]:
            continue
        n = sum(1 for x in r["samples"] if "kind" not in x)
        cells = " | ".join(f"{r['generate'].get(k, float('nan')):.3f}" for k in GEN)
        print(f"| {name} | {n} | {cells} |")
    print("\nEdit (held-out triples, score = instruction satisfied × rest preserved):\n")
    print("| model | images | " + " | ".join(EDIT) + " | instruction | preserve |")
    print("|---|---|" + "---|" * (len(EDIT) + 2))
    for name, r in reports.items():
        if not r["edit"]:
            continue
        parts = r.get("edit_parts", {})
        instr = sum(parts.get("instruction", {}).values()) / max(1, len(parts.get("instruction", {})))
        keep = sum(parts.get("preserve", {}).values()) / max(1, len(parts.get("preserve", {})))
        cells = " | ".join(f"{r['edit'].get(k, float('nan')):.3f}" for k in EDIT)
        n = sum(1 for x in r["samples"] if "kind" in x)
        print(f"| {name} | {n} | {cells} | {instr:.3f} | {keep:.3f} |")
    secs = {name: r["meta"].get("seconds") for name, r in reports.items()}
    print("\nEvaluation wall time (s): " + ", ".join(f"{k}: {v}" for k, v in secs.items()))


if __name__ == "__main__":
    main()
