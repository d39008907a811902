"""Decoder or UNet: which makes a device trace's image diverge? Replay the decoder on the device's latents.

Runs the bundle's ``vae_decoder`` graphs (fp32 and w8a16 QDQ, CPU EP) on the final latents a device trace
recorded and compares with the ``decoded`` stage the device recorded. If they agree closely, the device's
decoder is faithful and the image difference comes from the latents, i.e. from the UNet steps.

    dreamlite parity request --prompt "..." --seed 1000 --bundle B --target sm8650 --out req.json
    dreamlite device-sim --bundle B --target sm8650 --request req.json --out trace.json
    python scripts/nano_qnn_decoder_replay.py trace.npz --bundle B [--size 128x128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


def psnr(a: np.ndarray, b: np.ndarray, value_range: float = 2.0) -> float:
    """PSNR in dB of two arrays in [-1, 1]."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(value_range**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace", type=Path, help="the device trace's .npz")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--size", default="128x128")
    args = parser.parse_args()
    trace = np.load(args.trace)
    steps = sorted(
        (k for k in trace.files if k.startswith("step") and k.endswith(".latents")),
        key=lambda k: int(k[len("step") : -len(".latents")]),
    )
    latents = trace[steps[-1]].astype(np.float32)  # (1, 4, h, w) final latents
    device = trace["decoded"].astype(np.float32)  # (1, 3, H, W) in [-1, 1]
    out: dict[str, dict[str, float]] = {}
    for precision in ("fp32", "w8a16"):
        graph = args.bundle / "graphs" / args.size / f"vae_decoder.{precision}.onnx"
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        decoded = session.run(None, {session.get_inputs()[0].name: latents})[0]  # (1, 3, H, W)
        out[precision] = {
            "psnr_db": round(psnr(decoded, device), 2),
            "max_abs": round(float(np.abs(decoded - device).max()), 4),
        }
    print(json.dumps({"latents": steps[-1], "cpu_ep_decoder_vs_device_decoded": out}, indent=1))


if __name__ == "__main__":
    main()
