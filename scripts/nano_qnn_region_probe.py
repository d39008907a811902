"""Probe: where does the w8a16 UNet go wrong on the HTP emulator? Compile parts of the graph, not probes.

``nano_qnn_layer_probe.py`` exposes activations as extra graph outputs, which changes what the HTP compiler
builds. This script compiles *parts* of the QDQ graph instead, each with a single output, and compares the
emulator with the CPU EP's run of the same part (SNR in dB, higher is closer):

* ``prefix`` — for every module (node-name path cut at ``--depth``), the graph up to the module's last
  quantized activation. The first module whose SNR collapses is where the emulator's UNet diverges.
* ``region`` — the ancestors of one node's quantized output, cut at ``--stop`` tensors (or kept to nodes
  whose names contain a ``--within`` string). Cut tensors become inputs fed with their real values from the
  CPU EP's run of the whole graph, so a region can be shrunk from either end until the fault disappears.
  ``--provider-option`` and ``--disable-optimizer`` vary how it is compiled.
* ``matmul-requant`` — a copy of a bundle whose w8a16 UNet requantizes the second input of every
  activation×activation MatMul (attention QKᵀ and PV) the way QNN's HTP does (``u8``: a uint8 Convert;
  ``u16sym``: symmetric uint16), so that ``dreamlite eval shapes --backend onnx`` scores the HTP's MatMul
  arithmetic on the CPU EP. The copy's manifest carries the new graph's hash.

    dreamlite export --out B --targets sm8650 --precision fp32,w8a16 --qnn-precision w8a16 --parity none
    dreamlite generate --backend onnx --bundle B --precision w8a16 --prompt "…" --seed 1000 --out x.png \
        --trace t.npz
    python scripts/nano_qnn_region_probe.py prefix --bundle B --trace t.npz --out prefix.json
    python scripts/nano_qnn_region_probe.py region --bundle B --trace t.npz --node NODE --stop TENSOR ...
    python scripts/nano_qnn_region_probe.py matmul-requant --bundle B --out B-u8 --mode u8

Findings on the shipped nano UNet are in docs/bundle.md §8 and docs/nano.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from nano_qnn_layer_probe import snr_db, step_feeds
from onnx import helper, numpy_helper

UNET = "unet.w8a16.onnx"
QDQ = ("QuantizeLinear", "DequantizeLinear")


class Graph:
    """The w8a16 UNet of a bundle, indexed by producer and consumers."""

    def __init__(self, path: Path) -> None:
        self.model = onnx.load(str(path))
        g = self.model.graph
        self.inits = {i.name for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def quantized_output(self, node: Any) -> str | None:
        """The DequantizeLinear output that carries ``node``'s first output (node → Q → DQ), if any."""
        for q in self.consumers.get(node.output[0], []):
            if q.op_type == "QuantizeLinear":
                for dq in self.consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return str(dq.output[0])
        return None

    def part(self, output: str, stops: set[str], within: list[str] | None = None) -> tuple[Any, list[str]]:
        """The model computing ``output`` from the graph inputs and the tensors where the walk stopped."""
        need: set[str] = set()
        cut: set[str] = set()
        stack = [output]
        while stack:
            x = stack.pop()
            if x in need or x in cut:
                continue
            p = self.producer.get(x)
            inside = x not in stops
            if p is not None and within is not None:
                inside = inside and (p.op_type in QDQ or any(w in p.name for w in within))
            if p is None or inside:
                need.add(x)
                if p is not None:
                    stack.extend(i for i in p.input if i)
            else:
                cut.add(x)
        g = self.model.graph
        nodes = [n for n in g.node if any(o in need for o in n.output)]
        inputs = [i for i in g.input if i.name in need]
        inputs += [helper.make_tensor_value_info(c, onnx.TensorProto.FLOAT, None) for c in sorted(cut)]
        sub = helper.make_graph(
            nodes,
            "part",
            inputs,
            [helper.make_empty_tensor_value_info(output)],
            [i for i in g.initializer if i.name in need],
        )
        model = helper.make_model(
            sub, opset_imports=self.model.opset_import, ir_version=self.model.ir_version
        )
        return model, sorted(cut)


def _feeds(bundle: Path, trace: Path, step: int) -> dict[str, np.ndarray]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return step_feeds(trace, step, int(manifest["text"]["seq_len"]))


def _compare(
    model: Any,
    feeds: dict[str, np.ndarray],
    target: str,
    extra: dict[str, str],
    disabled: list[str],
) -> dict[str, Any]:
    """Run one part on the CPU EP and on the HTP emulator; SNR and value ranges."""
    import onnxruntime as ort

    from model_runtime.backends.qnn_backend import create_qnn_session, provider_options
    from model_runtime.export.config import QNN_TARGETS

    t = QNN_TARGETS[target]
    names = {i.name for i in model.graph.input}
    feed = {k: v for k, v in feeds.items() if k in names}
    for value_info in model.graph.input:  # cut tensors enter without a shape; the HTP needs static ones
        if not value_info.type.tensor_type.HasField("shape"):
            shaped = helper.make_tensor_value_info(
                value_info.name, onnx.TensorProto.FLOAT, feed[value_info.name].shape
            )
            value_info.CopyFrom(shaped)
    with tempfile.TemporaryDirectory(prefix="dreamlite-region-") as tmp:
        path = Path(tmp) / "part.onnx"
        onnx.save(model, str(path))
        ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        t0 = time.perf_counter()
        if disabled:
            real = ort.InferenceSession

            def session(*a: Any, **k: Any) -> Any:
                k.setdefault("disabled_optimizers", disabled)
                return real(*a, **k)

            ort.InferenceSession = session  # type: ignore[misc]
        try:
            qnn = create_qnn_session(path, provider_options(t.soc_model, t.htp_arch, extra))
        finally:
            if disabled:
                ort.InferenceSession = real  # type: ignore[misc]
        got = qnn.run(None, feed)[0]
        seconds = time.perf_counter() - t0
    err = np.abs(ref.astype(np.float64) - got)
    snr = snr_db(ref, got)
    row: dict[str, Any] = {
        "nodes": len(model.graph.node),
        "snr_db": round(snr, 2) if math.isfinite(snr) else None,
        "cpu_abs_max": float(np.abs(ref).max()),
        "qnn_abs_max": float(np.abs(got).max()),
        "max_abs_err": float(err.max()),
        "seconds": round(seconds, 1),
    }
    if ref.ndim == 4:  # which channels carry the error
        row["channel_max_err"] = [round(float(v), 3) for v in err.reshape(err.shape[1], -1).max(axis=1)]
    return row


def _claim(target: str) -> None:
    from model_runtime.backends.qnn_backend import claim_target

    claim_target(target)


def cmd_prefix(args: argparse.Namespace) -> None:
    """One compiled prefix per module, in graph order."""
    graph = Graph(args.bundle / "graphs" / args.size / UNET)
    feeds = _feeds(args.bundle, args.trace, args.step)
    last: dict[str, tuple[str, str]] = {}
    for node in graph.model.graph.node:
        if node.op_type in QDQ or not node.name.startswith(args.under):
            continue
        out = graph.quantized_output(node)
        if out is None:
            continue
        module = "/".join(node.name.strip("/").split("/")[: args.depth])
        last[module] = (out, node.name)  # the module's last quantized activation in graph order
    _claim(args.target)
    rows = []
    for module, (tensor, node_name) in last.items():
        model, _ = graph.part(tensor, set())
        row = {"module": module, "node": node_name, **_compare(model, feeds, args.target, {}, [])}
        row.pop("channel_max_err", None)
        rows.append(row)
        print(f"{row['snr_db']!s:>8} dB  {row['nodes']:5d} nodes  {module}", flush=True)
    _write(args.out, {"mode": "prefix", "bundle": str(args.bundle), "trace": str(args.trace), "rows": rows})


def cmd_region(args: argparse.Namespace) -> None:
    """One region, compiled once per ``--provider-option`` set (or once)."""
    import onnxruntime as ort

    graph = Graph(args.bundle / "graphs" / args.size / UNET)
    feeds = _feeds(args.bundle, args.trace, args.step)
    node = next((n for n in graph.model.graph.node if n.name == args.node), None)
    if node is None:
        raise SystemExit(f"no node named {args.node!r}")
    output = graph.quantized_output(node)
    if output is None:
        raise SystemExit(f"{args.node!r} has no quantized output")
    model, cut = graph.part(output, set(args.stop), args.within or None)
    if cut:  # the cut tensors' real values: the CPU EP's run of the whole graph with them as outputs
        full = onnx.load(str(args.bundle / "graphs" / args.size / UNET))
        full.graph.output.extend(helper.make_empty_tensor_value_info(c) for c in cut)
        with tempfile.TemporaryDirectory(prefix="dreamlite-region-") as tmp:
            path = Path(tmp) / "full.onnx"
            onnx.save(full, str(path))
            values = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(cut, feeds)
        feeds = {**feeds, **dict(zip(cut, values, strict=True))}
    _claim(args.target)
    extra = json.loads(args.provider_option) if args.provider_option else {}
    row = _compare(model, feeds, args.target, extra, args.disable_optimizer)
    report = {
        "mode": "region",
        "bundle": str(args.bundle),
        "trace": str(args.trace),
        "node": args.node,
        "stop": args.stop,
        "within": args.within,
        "cut_inputs": cut,
        "target": args.target,
        "provider_options": extra,
        "disabled_optimizers": args.disable_optimizer,
        **row,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "channel_max_err"}, indent=1))
    _write(args.out, report)


def cmd_matmul_requant(args: argparse.Namespace) -> None:
    """A bundle copy whose UNet requantizes input 1 of every activation×activation MatMul."""
    rel = f"graphs/{args.size}/{UNET}"
    graph = Graph(args.bundle / rel)
    g = graph.model.graph
    arrays = {i.name: i for i in g.initializer}
    count = 0
    for node in list(g.node):
        if node.op_type != "MatMul":
            continue
        sources = [graph.producer.get(i) for i in node.input]
        if not all(
            s is not None and s.op_type == "DequantizeLinear" and s.input[0] not in graph.inits
            for s in sources
        ):
            continue
        dq = sources[1]
        scale = float(numpy_helper.to_array(arrays[dq.input[1]]))
        zero = int(numpy_helper.to_array(arrays[dq.input[2]]))
        lo, hi = scale * (0 - zero), scale * (65535 - zero)  # the uint16 tensor's float range
        if args.mode == "u8":
            new_scale = (hi - lo) / 255.0
            new_zero: Any = np.uint8(round(-lo / new_scale))
        else:
            new_scale = max(-lo, hi) / 32767.0
            new_zero = np.uint16(32768)
        s_name, z_name = f"requant_{count}_scale", f"requant_{count}_zero_point"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(new_scale, np.float32), s_name),
                numpy_helper.from_array(np.array(new_zero), z_name),
            ]
        )
        q_out, dq_out = f"requant_{count}_q", f"requant_{count}_dq"
        at = list(g.node).index(node)
        g.node.insert(at, helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out]))
        g.node.insert(at, helper.make_node("QuantizeLinear", [node.input[1], s_name, z_name], [q_out]))
        node.input[1] = dq_out
        count += 1
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.bundle, args.out, copy_function=os.link)
    for name in (rel, "manifest.json"):
        (args.out / name).unlink()  # hard links: never write through them
    onnx.save(graph.model, str(args.out / rel))
    raw = (args.out / rel).read_bytes()
    manifest_text = (args.bundle / "manifest.json").read_text()
    old = json.loads(manifest_text)["files"][rel]["sha256"]
    manifest = json.loads(manifest_text.replace(old, hashlib.sha256(raw).hexdigest()))
    manifest["files"][rel]["bytes"] = len(raw)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"requantized input 1 of {count} MatMuls ({args.mode}) into {args.out}")


def _write(out: Path | None, report: dict[str, Any]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", type=Path, required=True)
    common.add_argument("--size", default="128x128")
    p = sub.add_parser("prefix", parents=[common], help="compile the graph up to each module")
    r = sub.add_parser("region", parents=[common], help="compile one region with real boundary inputs")
    for q in (p, r):
        q.add_argument("--trace", type=Path, required=True, help="a single-image trace (.npz)")
        q.add_argument("--step", type=int, default=0)
        q.add_argument("--target", default="sm8650")
        q.add_argument("--out", type=Path, default=None)
    p.add_argument("--depth", type=int, default=3, help="node-name components that name a module")
    p.add_argument("--under", default="", help="only nodes whose name starts with this")
    r.add_argument("--node", required=True, help="the region ends at this node's quantized output")
    r.add_argument("--stop", action="append", default=[], help="a float tensor where the region starts")
    r.add_argument("--within", action="append", default=[], help="keep nodes whose name contains this")
    r.add_argument("--provider-option", default="", help='JSON, e.g. {"vtcm_mb": "4"}')
    r.add_argument(
        "--disable-optimizer", action="append", default=[], help="an ORT optimizer, e.g. ConstantSharing"
    )
    m = sub.add_parser("matmul-requant", parents=[common], help="bundle copy with HTP-style MatMul inputs")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--mode", choices=("u8", "u16sym"), default="u8")
    args = parser.parse_args()
    {"prefix": cmd_prefix, "region": cmd_region, "matmul-requant": cmd_matmul_requant}[args.cmd](args)


if __name__ == "__main__":
    main()
