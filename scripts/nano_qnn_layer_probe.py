"""Probe: which ops of the w8a16 UNet make the HTP emulator differ from the same QDQ graph on the CPU EP?

The parity trace of the shipped student names ``step0.unet_out`` as the first divergent stage (docs/nano.md:
5–8 % of range per UNet step on the emulator, where the CPU EP's QDQ run of the same graph stays close to
fp32). This script looks inside that stage. It takes the bundle's ``unet.w8a16.onnx`` and makes every
quantized activation a graph output: the ``DequantizeLinear`` after each computing op (data-movement ops such
as Reshape and Transpose are skipped). It runs one UNet call, built from a trace's step inputs, through the
CPU EP and through the QNN HTP emulator (compiled in-process, one target), and compares each tensor in graph
order:

* ``snr_db`` of the emulator's tensor against the CPU EP's;
* ``drop_db``: how much lower that is than the worst SNR of the op's own quantized inputs, i.e. the error
  the op itself adds on the HTP.

It prints the ops that add the most error, a summary per op type, and writes everything as JSON.

**Caveat (measured on the nano UNet, sm8650):** extra graph outputs change what the HTP compiler builds. With
all 1545 activations as outputs, the final output agreed with the CPU EP at 21.8 dB, as without probes
(22.1 dB). With only the 18 tensors of one ResNet block as outputs
(``--only up_blocks.1/resnets.2/``), it fell
to 2.2 dB, and a GroupNorm's scale ``Mul`` right after a correct ``InstanceNormalization`` came out wrong.
Some probed tensors disagree at large negative SNRs while the ops they feed agree again. Read single low
values as "this tensor, exposed, is not what the fused HTP graph computes", and trust only a trend that
carries through the following ops. Padded text tokens (mask 0) make the text path's SNR meaningless; the
valid tokens agree at 50–59 dB.

    dreamlite export --out B --targets none --precision fp32,w8a16 --parity none
    dreamlite generate --backend onnx --bundle B --precision w8a16 --prompt "…" --seed 1000 --trace t.npz
    python scripts/nano_qnn_layer_probe.py --bundle B --trace t.npz [--step 0] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

MOVES = {
    "Reshape",
    "Transpose",
    "Tile",
    "Slice",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Split",
    "Gather",
    "Expand",
}


def step_feeds(trace: Path, step: int, seq_len: int) -> dict[str, np.ndarray]:
    """The UNet graph's inputs at ``step`` of a single-image trace (as the ONNX backend feeds them)."""
    t = np.load(trace)
    latents = t["noise"] if step == 0 else t[f"step{step - 1}_latents"]  # (1, 4, h, w)
    sample = np.concatenate([latents, t["cond_latent"]], axis=3).astype(np.float32)  # (1, 4, h, 2w)
    emb, mask = t["prompt_embeds"], t["prompt_mask"]  # (1, L, D), (1, L)
    text = np.zeros((1, seq_len, emb.shape[2]), np.float32)
    text_mask = np.zeros((1, seq_len), np.float32)
    n = min(seq_len, emb.shape[1])
    text[:, :n], text_mask[:, :n] = emb[:, :n], mask[:, :n]
    return {
        "sample": sample,
        "timestep": t["timesteps"][step : step + 1].astype(np.float32),
        "encoder_hidden_states": text,
        "encoder_attention_mask": text_mask,
        "time_ids": t["time_ids"].astype(np.float32),
    }


def probed_graph(src: Path, dst: Path, only: str | None = None) -> list[dict[str, Any]]:
    """Write ``src`` with every computed quantized activation as an extra output; return those tensors.

    Each entry: ``tensor`` (the DequantizeLinear output), ``op`` / ``node`` (the op that computed it) and
    ``inputs`` (the probed tensors that op read).
    """
    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    probes: list[dict[str, Any]] = []
    probe_of: dict[str, str] = {}  # float tensor computed by an op -> its probed DQ output

    def source_probe(name: str) -> str | None:
        """The probed tensor a float input comes from (through DQ ← Q ← op, skipping moves)."""
        seen = 0
        while name in producer and seen < 16:
            node = producer[name]
            if node.op_type == "DequantizeLinear":
                q = producer.get(node.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    return None
                if q.input[0] in probe_of:
                    return probe_of[q.input[0]]
                name = q.input[0]
            elif node.op_type in MOVES or node.op_type == "QuantizeLinear":
                name = node.input[0]
            else:
                return None
            seen += 1
        return None

    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in inits:
            continue
        q = producer.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        op = producer.get(q.input[0])
        if op is None or op.op_type in MOVES | {"DequantizeLinear", "QuantizeLinear"}:
            continue
        if q.input[0] in probe_of or (only is not None and only not in op.name):
            continue
        probe_of[q.input[0]] = node.output[0]
        inputs = [p for p in (source_probe(i) for i in op.input if i and i not in inits) if p]
        probes.append({"tensor": node.output[0], "op": op.op_type, "node": op.name, "inputs": inputs})
    existing = {o.name for o in model.graph.output}
    for p in probes:
        if p["tensor"] not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(p["tensor"]))
    onnx.save(model, str(dst))
    return probes


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10·log10(power of ``ref`` / power of the difference); inf when equal."""
    noise = float(np.mean((ref.astype(np.float64) - got) ** 2))
    power = float(np.mean(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(power, 1e-30) / noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--trace", type=Path, required=True, help="a single-image generate/edit trace (.npz)")
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--target", default="sm8650")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default=None, help="probe only ops whose node name contains this")
    parser.add_argument("--dump", type=Path, default=None, help="save both runs' probed tensors (.npz)")
    args = parser.parse_args()

    import onnxruntime as ort

    from model_runtime.backends.qnn_backend import claim_target, create_qnn_session, provider_options
    from model_runtime.export.config import QNN_TARGETS

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    seq_len = int(manifest["text"]["seq_len"])
    feeds = step_feeds(args.trace, args.step, seq_len)
    target = QNN_TARGETS[args.target]
    with tempfile.TemporaryDirectory(prefix="dreamlite-layer-probe-") as tmp:
        graph = Path(tmp) / "unet.probed.onnx"
        probes = probed_graph(args.bundle / "graphs" / args.size / "unet.w8a16.onnx", graph, args.only)
        names = [p["tensor"] for p in probes]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        cpu = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        t0 = time.perf_counter()
        final = cpu.get_outputs()[0].name
        ref = dict(zip(["out", *names], cpu.run([final, *names], feeds), strict=True))
        cpu_s = time.perf_counter() - t0
        claim_target(target.name)
        t0 = time.perf_counter()
        qnn = create_qnn_session(graph, provider_options(target.soc_model, target.htp_arch))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = dict(zip(["out", *names], qnn.run([final, *names], feeds), strict=True))
        qnn_s = time.perf_counter() - t0
    if args.dump is not None:
        np.savez(args.dump, **{f"cpu/{n}": ref[n] for n in ref}, **{f"qnn/{n}": got[n] for n in got})
    plain = ort.InferenceSession(
        str(args.bundle / "graphs" / args.size / "unet.w8a16.onnx"), so, providers=["CPUExecutionProvider"]
    ).run(None, feeds)[0]
    snr = {n: snr_db(ref[n], got[n]) for n in names}
    rows = []
    for p in probes:
        inputs = [snr[i] for i in p["inputs"] if i in snr]
        worst_in = min(inputs) if inputs else math.inf
        own = snr[p["tensor"]]
        rows.append(
            {
                "op": p["op"],
                "node": p["node"],
                "snr_db": round(own, 2) if math.isfinite(own) else None,
                "worst_input_snr_db": round(worst_in, 2) if math.isfinite(worst_in) else None,
                "drop_db": round(worst_in - own, 2)
                if math.isfinite(worst_in) and math.isfinite(own)
                else None,
                "range": float(ref[p["tensor"]].max() - ref[p["tensor"]].min()),
            }
        )
    by_op: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["drop_db"] is not None:
            by_op[r["op"]].append(r["drop_db"])
    summary = {
        op: {"count": len(v), "mean_drop_db": round(float(np.mean(v)), 2), "max_drop_db": round(max(v), 2)}
        for op, v in sorted(by_op.items(), key=lambda kv: -float(np.mean(kv[1])))
    }
    top = sorted((r for r in rows if r["drop_db"] is not None), key=lambda r: -r["drop_db"])[: args.top]
    report = {
        "bundle": str(args.bundle),
        "trace": str(args.trace),
        "step": args.step,
        "target": target.name,
        "probed_tensors": len(names),
        "output_snr_db": round(snr_db(ref["out"], got["out"]), 2),
        "probed_vs_plain_cpu_max_abs": float(np.abs(plain - ref["out"]).max()),
        "seconds": {
            "cpu_run": round(cpu_s, 2),
            "qnn_compile": round(compile_s, 1),
            "qnn_run": round(qnn_s, 1),
        },
        "per_op_type": summary,
        "top_drops": top,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
