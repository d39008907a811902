"""Parity ⑧ report: one self-contained HTML page per verification.

Side-by-side reference and device images, a heat map of their per-pixel difference, the per-stage table
(verdict, hashes, errors), the first divergent stage, the environment differences and the replay outcome.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model_runtime.parity.compare import ParityReport

_COLOURS = {"bit_exact": "#1a7f37", "within_tolerance": "#9a6700", "mismatch": "#cf222e"}


def _png_data_url(image: NDArray[np.uint8]) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def diff_heatmap(reference: NDArray[np.uint8], device: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Per-pixel max channel difference, scaled so the largest difference is full red (black = equal)."""
    d = np.abs(reference.astype(np.int16) - device.astype(np.int16)).max(axis=2).astype(np.float64)  # (H, W)
    peak = float(d.max())
    scaled = (d / peak * 255.0) if peak > 0 else d
    heat = np.zeros((*d.shape, 3), dtype=np.uint8)
    heat[..., 0] = scaled.astype(np.uint8)
    heat[..., 1] = (scaled * 0.35).astype(np.uint8)
    return heat


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_report(
    report: ParityReport,
    reference_image: NDArray[np.uint8] | None = None,
    device_image: NDArray[np.uint8] | None = None,
    title: str = "DreamLite parity report",
) -> str:
    """The HTML page of one report."""
    verdict = report.verdict
    rows = []
    for s in report.stages:
        colour = _COLOURS[s.verdict]
        rows.append(
            f'<tr class="stage {s.verdict}" data-stage="{html.escape(s.name)}">'
            f"<td>{html.escape(s.name)}</td>"
            f'<td style="color:{colour};font-weight:bold">{s.verdict}</td>'
            f"<td><code>{_fmt((s.reference_sha256 or '')[:12])}</code></td><td><code>{_fmt((s.device_sha256 or '')[:12])}</code></td>"
            f"<td>{_fmt(s.max_abs)}</td><td>{_fmt(s.pct_of_range)}</td><td>{_fmt(s.psnr_db)}</td><td>{_fmt(s.ssim)}</td>"
            f"<td>{'estimated' if s.estimated else ''} {html.escape(s.note)}</td></tr>"
        )
    images = ""
    if reference_image is not None and device_image is not None:
        cells = [("reference", reference_image), ("device", device_image)]
        if reference_image.shape == device_image.shape:
            cells.append(("difference", diff_heatmap(reference_image, device_image)))
        images = (
            '<div class="images">'
            + "".join(
                f'<figure><img id="img-{name}" alt="{name}" src="{_png_data_url(img)}"><figcaption>{name}</figcaption></figure>'
                for name, img in cells
            )
            + "</div>"
        )
    env_rows = (
        "".join(
            f"<tr><td>{html.escape(d['field'])}</td><td>{_fmt(d['reference'])}</td><td>{_fmt(d['device'])}</td></tr>"
            for d in report.environment_diff
        )
        or '<tr><td colspan="3">no differences</td></tr>'
    )
    replay = ""
    if report.replay:
        replay = f'<h2>Replay</h2><p id="replay">{html.escape(str(report.replay.get("explanation", "")))}</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }}
.images {{ display: flex; gap: 1em; }} .images img {{ width: 256px; image-rendering: pixelated; border: 1px solid #888; }}
#verdict {{ font-size: 1.4em; font-weight: bold; color: {_COLOURS[verdict]}; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>request <code id="request-id">{html.escape(report.request_id)}</code></p>
<p>verdict: <span id="verdict">{verdict}</span>; first divergent stage:
<b id="first-divergent">{_fmt(report.first_divergent_stage)}</b>; first mismatch: <b id="first-mismatch">{_fmt(report.first_mismatch_stage)}</b></p>
<p>reference: <code>{_fmt(report.reference_executor)}</code><br>device: <code>{_fmt(report.device_executor)}</code></p>
{images}
<h2>Stages</h2>
<table id="stages"><tr><th>stage</th><th>verdict</th><th>reference sha256</th><th>device sha256</th><th>max |Δ|</th>
<th>% of range</th><th>PSNR dB</th><th>SSIM</th><th>note</th></tr>
{"".join(rows)}</table>
<h2>Environment differences</h2>
<table id="environment"><tr><th>field</th><th>reference</th><th>device</th></tr>{env_rows}</table>
{replay}
<h2>Tolerances</h2><pre>{html.escape(report.tolerances.model_dump_json(indent=1))}</pre>
<script>
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.imagesLoaded = String(imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0));
  document.body.dataset.stageRows = String(document.querySelectorAll("#stages tr.stage").length);
}});
</script>
</body></html>
"""
