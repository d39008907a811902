#!/usr/bin/env bash
# Where the shipped student's w8a16 QNN context diverged on the HTP emulator (docs/nano.md, docs/bundle.md §8):
# the MatMul requantization the HTP does, simulated on the CPU EP; module prefixes of the UNet compiled one by
# one; regions of up_blocks.1 with real boundary inputs; compile options on the smallest failing region; last,
# the module prefixes of the default export, whose GroupNorms are written without reshapes.
# About 22 min on 2 cores. Usage: scripts/nano_qnn_localize.sh [OUT] [RESHAPE_BUNDLE] [DEFAULT_BUNDLE]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/results/nano/qnn-w8a16-localization}"
bundle="${2:-runs/nano-bundle-sm8650-w8a16-reshape}"  # the exporter's GroupNorm form, as first shipped
fixed="${3:-runs/nano-bundle-sm8650-w8a16}"           # the default export
py=.venv/bin/python
probe="$py scripts/nano_qnn_region_probe.py"
mkdir -p "$out" runs
if [ ! -f "$bundle/manifest.json" ]; then
  .venv/bin/dreamlite export --out "$bundle" --targets sm8650 --qnn-precision w8a16 --precision fp32,w8a16 \
    --parity none --qdq-groupnorm reshape --force
fi
if [ ! -f "$fixed/manifest.json" ]; then
  .venv/bin/dreamlite export --out "$fixed" --targets sm8650 --qnn-precision w8a16 --precision fp32,w8a16 \
    --parity none --force
fi
# The held-out prompt whose emulator score fell most (0.83) in the QNN subset, seed 1000.
trace=runs/nano-qnn-localize-trace.npz
.venv/bin/dreamlite generate --backend onnx --bundle "$bundle" --precision w8a16 --seed 1000 \
  --prompt "a large blue circle on the right on a black background" --out runs/nano-qnn-localize.png --trace "$trace"

# 1. The HTP's MatMul arithmetic on the CPU EP: 36 held-out prompts of the QNN subset, seed 1000.
subset=(--limit 36 --seeds 1000 --batch-size 4 --tasks generate)
.venv/bin/dreamlite eval shapes --backend onnx --bundle "$bundle" --precision w8a16 "${subset[@]}" \
  --out "$out/onnx-w8a16-generate-subset.json"
for mode in u8 u16sym; do
  $probe matmul-requant --bundle "$bundle" --out "runs/nano-bundle-matmul-$mode" --mode "$mode"
  .venv/bin/dreamlite eval shapes --backend onnx --bundle "runs/nano-bundle-matmul-$mode" --precision w8a16 \
    "${subset[@]}" --out "$out/onnx-w8a16-matmul-$mode-generate-subset.json"
done

# 2. Prefixes: every module, then every op of the first one that fails.
$probe prefix --bundle "$bundle" --trace "$trace" --under /unet/ --out "$out/prefix-modules.json"
$probe prefix --bundle "$bundle" --trace "$trace" --depth 9 --under /unet/up_blocks.1/resnets.2/ \
  --out "$out/prefix-up_blocks.1-resnets.2.json"

# 3. Regions ending at up_blocks.1/resnets.2/norm1/Mul, started at later and later tensors of resnets.1.
node=/unet/up_blocks.1/resnets.2/norm1/Mul
skips=(--stop /unet/down_blocks.0/downsamplers.0/conv/Conv_output_0
  --stop /unet/down_blocks.0/resnets.0/nonlinearity_1/Mul_output_0 --stop /unet/up_blocks.1/Concat_1_output_0)
$probe region --bundle "$bundle" --trace "$trace" --node "$node" --within /unet/up_blocks.1/ \
  --out "$out/region-up_blocks.1.json"
for start in norm1/Add nonlinearity/Mul conv1/pointwise/Conv Add norm2/Add conv2/pointwise/Conv Add_1; do
  $probe region --bundle "$bundle" --trace "$trace" --node "$node" "${skips[@]}" \
    --stop "/unet/up_blocks.1/resnets.1/${start}_output_0" --out "$out/region-from-resnets.1-${start//\//-}.json"
done

# 4. The smallest failing region (from resnets.1/conv1) under other compile settings and targets.
small=("${skips[@]}" --stop /unet/up_blocks.1/resnets.1/conv1/pointwise/Conv_output_0)
for mode in 0 1 2; do
  $probe region --bundle "$bundle" --trace "$trace" --node "$node" "${small[@]}" \
    --provider-option "{\"htp_graph_finalization_optimization_mode\": \"$mode\"}" --out "$out/small-finalize-$mode.json"
done
$probe region --bundle "$bundle" --trace "$trace" --node "$node" "${small[@]}" \
  --provider-option '{"vtcm_mb": "4"}' --out "$out/small-vtcm4.json"
$probe region --bundle "$bundle" --trace "$trace" --node "$node" "${small[@]}" \
  --disable-optimizer ConstantSharing --out "$out/small-no-constant-sharing.json"
for target in sm8550 sm8750; do  # one target per process
  $probe region --bundle "$bundle" --trace "$trace" --node "$node" "${small[@]}" --target "$target" \
    --out "$out/small-$target.json"
done

# 5. The default export (GroupNorm as reductions, no reshape): every module prefix again.
$probe prefix --bundle "$fixed" --trace "$trace" --under /unet/ --out "$out/prefix-modules-reductions.json"
