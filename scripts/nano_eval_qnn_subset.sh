#!/usr/bin/env bash
# ShapesEval of the shipped student's phone graph (w8a16 QNN context for sm8650) on the HTP emulator, beside
# the same subset on the CPU EP (w8a16 QDQ and fp32 ONNX) and in torch fp32. The emulator is ~50x slower than
# the CPU EP, so this runs a fixed subset: 36 held-out prompts + 36 held-out edits (6 per kind), seed 1000.
# The fp16 contexts (the fp32 graphs run by the HTP in float16) are scored on the same subset.
# About 75 min on 2 cores (export 3 min, emulator 27 min w8a16 + ~45 min fp16).
# Usage: scripts/nano_eval_qnn_subset.sh [OUT] [BUNDLE]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/results/nano}"
bundle="${2:-runs/nano-bundle-sm8650}"
py=.venv/bin/dreamlite
subset=(--limit 36 --seeds 1000 --batch-size 4)
mkdir -p "$out"
$py export --out "$bundle" --targets sm8650 --qnn-precision w8a16,fp16 --precision fp32,w8a16 --parity none \
  --force
$py eval shapes --backend qnn --bundle "$bundle" --target sm8650 "${subset[@]}" \
  --out "$out/student-4step-qnn-sm8650-emulator-subset.json"
$py eval shapes --backend qnn --bundle "$bundle" --target sm8650 --precision fp16 "${subset[@]}" \
  --out "$out/student-4step-qnn-fp16-sm8650-emulator-subset.json"
for precision in w8a16 fp32; do
  $py eval shapes --backend onnx --bundle "$bundle" --precision "$precision" "${subset[@]}" \
    --out "$out/student-4step-onnx-$precision-subset.json"
done
$py eval shapes "${subset[@]}" --out "$out/student-4step-float32-subset.json"
