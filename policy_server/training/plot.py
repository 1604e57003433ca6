"""RUN/losses.png: one panel per loss head (train and val), log-scaled, drawn at the end of a run.

Drawn with Pillow, which the server install already has (diffusers depends on it); matplotlib is not a
dependency of this project and is not needed for a few polylines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 420, 260, 46
COLOURS = {"train": (31, 119, 180), "val": (214, 39, 40)}


def _series(rows: list[dict[str, Any]], split: str, key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r
            and isinstance(r[key], int | float) and r[key] > 0 and math.isfinite(r[key])]


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str,
           series: dict[str, list[tuple[float, float]]]) -> None:
    left, top, right, bottom = x0 + MARGIN, y0 + 24, x0 + PANEL_W - 12, y0 + PANEL_H - 28
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, y0 + 6), f"{title} (log scale)", fill="black")
    points = [p for pts in series.values() for p in pts]
    if not points:
        return
    s_lo, s_hi = min(p[0] for p in points), max(p[0] for p in points)
    v_lo, v_hi = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    s_span, v_span = max(s_hi - s_lo, 1), max(v_hi - v_lo, 1e-9)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - s_lo) / s_span * (right - left),
                bottom - (math.log10(value) - v_lo) / v_span * (bottom - top))

    for split, pts in series.items():
        if len(pts) > 1:
            draw.line([xy(*p) for p in pts], fill=COLOURS[split], width=2)
        elif pts:
            x, y = xy(*pts[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOURS[split])
    draw.text((left, bottom + 6), f"step {s_lo:g}", fill="black")
    draw.text((right - 70, bottom + 6), f"{s_hi:g}", fill="black")
    draw.text((x0 + 2, top), f"{10**v_hi:.3g}", fill="black")
    draw.text((x0 + 2, bottom - 10), f"{10**v_lo:.3g}", fill="black")
    draw.text((right - 120, top + 4), "train", fill=COLOURS["train"])
    draw.text((right - 70, top + 4), "val", fill=COLOURS["val"])


def plot_losses(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Write the PNG; None when there is nothing to draw."""
    heads = sorted({k for r in rows for k in r if k.startswith("loss/")})
    if not heads:
        return None
    cols = min(3, len(heads))
    img = Image.new("RGB", (cols * PANEL_W, math.ceil(len(heads) / cols) * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    for i, head in enumerate(heads):
        _panel(draw, (i % cols) * PANEL_W, (i // cols) * PANEL_H, head[5:],
               {s: _series(rows, s, head) for s in COLOURS})
    img.save(out)
    return out
