"""Per-episode and aggregated normalisation statistics in LeRobot's stats.json shape."""

from __future__ import annotations

from typing import Any

import numpy as np

Stats = dict[str, dict[str, list]]
# LeRobot (0.6) writes these beside min/max/mean/std/count; QUANTILES normalisation (pi0.5) needs q01/q99.
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def vector_stats(x: np.ndarray) -> dict[str, list]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
           "std": x.std(0).tolist(), "count": [int(x.shape[0])]}
    for k, q in QUANTILES.items():
        out[k] = np.quantile(x, q, axis=0).tolist()
    return out


class ImageStatsAccumulator:
    """Per-channel stats of RGB frames scaled to [0, 1], shaped (3, 1, 1) as LeRobot stores them."""

    def __init__(self, stride: int = 4) -> None:
        self.stride = stride
        self.n = 0
        self.frames = 0
        self.s = np.zeros(3)
        self.s2 = np.zeros(3)
        self.lo = np.full(3, np.inf)
        self.hi = np.full(3, -np.inf)
        self.hist = np.zeros((3, 256), np.int64)  # exact quantiles of the sampled uint8 values

    def add(self, rgb: np.ndarray) -> None:
        sub = rgb[:: self.stride, :: self.stride].reshape(-1, 3)
        for c in range(3):
            self.hist[c] += np.bincount(sub[:, c], minlength=256)
        px = sub.astype(np.float64) / 255.0
        self.n += px.shape[0]
        self.frames += 1
        self.s += px.sum(0)
        self.s2 += (px**2).sum(0)
        self.lo = np.minimum(self.lo, px.min(0))
        self.hi = np.maximum(self.hi, px.max(0))

    def result(self) -> dict[str, list]:
        mean = self.s / max(self.n, 1)
        std = np.sqrt(np.maximum(self.s2 / max(self.n, 1) - mean**2, 0.0))

        def c(v: np.ndarray) -> list:
            return v.reshape(3, 1, 1).tolist()

        out = {"min": c(self.lo), "max": c(self.hi), "mean": c(mean), "std": c(std), "count": [self.frames]}
        cdf = np.cumsum(self.hist, axis=1)
        for k, q in QUANTILES.items():
            level = np.array([np.searchsorted(cdf[ch], q * max(cdf[ch, -1], 1)) for ch in range(3)])
            out[k] = c(level / 255.0)
        return out


def aggregate(per_episode: list[Stats]) -> Stats:
    """Pooled statistics (count-weighted mean, pooled variance) over episodes; quantiles count-weighted as
    LeRobot's aggregate_feature_stats does (only where every episode has them: older manifests lack them)."""
    out: Stats = {}
    keys = sorted({k for s in per_episode for k in s})
    for k in keys:
        items = [s[k] for s in per_episode if k in s]
        n = np.array([float(i["count"][0]) for i in items])
        means = [np.asarray(i["mean"], dtype=np.float64) for i in items]
        stds = [np.asarray(i["std"], dtype=np.float64) for i in items]
        total = n.sum()
        w = n / max(total, 1.0)
        mean = sum(wi * m for wi, m in zip(w, means, strict=True))
        var = sum(wi * (s**2 + (m - mean) ** 2) for wi, s, m in zip(w, stds, means, strict=True))
        out[k] = {
            "min": np.min([np.asarray(i["min"]) for i in items], axis=0).tolist(),
            "max": np.max([np.asarray(i["max"]) for i in items], axis=0).tolist(),
            "mean": np.asarray(mean).tolist(),
            "std": np.sqrt(np.maximum(var, 0.0)).tolist(),
            "count": [int(total)],
        }
        for q in QUANTILES:
            if all(q in i for i in items):
                out[k][q] = np.asarray(sum(wi * np.asarray(i[q], dtype=np.float64)
                                           for wi, i in zip(w, items, strict=True))).tolist()
    return out


def close(a: Any, b: Any, tol: float = 1e-4) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tol, rtol=tol))
    except (ValueError, TypeError):
        return False
