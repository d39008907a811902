"""The loss plot of a training run (one panel per stage, matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_losses(log_path: Path, out: Path) -> None:
    """Plot every stage's main loss from a ``train_log.json``.

    Args:
        log_path: The run's loss log.
        out: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(log_path.read_text(encoding="utf-8"))
    stages = [(name, d) for name, d in data.items() if d.get("steps")]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.8), squeeze=False)
    for ax, (name, d) in zip(axes[0], stages, strict=True):
        for key, values in d["losses"].items():
            if key in ("loss", "rec", "edge", "caption_drift"):
                ax.plot(d["steps"], values, label=key, lw=1.2)
        ax.set_title(f"{name} ({d['seconds'] / 60:.1f} min)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(d["losses"]) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("dreamlite-nano training loss per stage", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
