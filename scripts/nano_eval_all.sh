#!/usr/bin/env bash
# ShapesEval of dreamlite-nano as the README reports it: the 4-step student (the embedded model) and the
# 28-step guided teacher of a training run, in float32 and bfloat16, on the held-out split, plus the VAE
# ceiling and the student's device bundle (ONNX fp32 and w8a16 QDQ on the CPU execution provider). JSON reports go to docs/results/nano/ (or $1).
#   scripts/nano_eval_all.sh [OUT_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/results/nano}"
run="${2:-runs/nano}"
# The run's last teacher: teacher_caption trains its UNet (teacher_caption/teacher), scene rewrites it with
# its encoder (scene/teacher), else the joint stage's.
teacher="$run/teacher"
if [ -d "$run/scene/teacher" ]; then teacher="$run/scene/teacher"; fi
if [ -d "$run/teacher_caption/teacher" ]; then teacher="$run/teacher_caption/teacher"; fi
mkdir -p "$out"
py=.venv/bin/dreamlite
$py eval shapes --ceiling --out "$out/vae-ceiling.json"
for dtype in float32 bfloat16; do
  $py eval shapes --dtype "$dtype" --out "$out/student-4step-$dtype.json"
done
# The text path's ceiling: every edit made by generating its target scene's caption (perfect reading, no copy).
$py eval shapes --tasks edit --edits-as-captions --out "$out/student-4step-edits-as-captions.json"
# The guided 28-step teacher costs ~2.5 UNet passes × 28 steps per image (17× the student's), so its reports use
# every held-out prompt and edit with two noise seeds (288 images per task; one seed's count swung by 0.06),
# in float32 and bfloat16.
for dtype in float32 bfloat16; do
  $py eval shapes --model "$teacher" --dtype "$dtype" --seeds 1000,1001 --out "$out/teacher-28step-$dtype.json"
done
# What w8a16 costs: a bundle of the student (no QNN targets: the emulator is 50-90x slower than the CPU EP).
$py export --out "$run-bundle" --targets none --precision fp32,w8a16 --parity none --force
for precision in fp32 w8a16; do
  $py eval shapes --backend onnx --bundle "$run-bundle" --precision "$precision" \
    --out "$out/student-4step-onnx-$precision.json"
done
