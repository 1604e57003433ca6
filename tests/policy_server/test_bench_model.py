"""`dv-bench model` runs end to end on the tiny config and its ratios are the ratios of its p50s."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")

from bench.cli import main  # noqa: E402


def test_model_bench_json_is_consistent(capsys):
    assert main(["model", "--config", "tiny", "--iters", "3", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    p50 = {}
    for t in result["timings"]:
        assert math.isfinite(t["p50_ms"]) and math.isfinite(t["p95_ms"]) and math.isfinite(t["mean_ms"])
        assert 0 < t["p50_ms"] <= t["p95_ms"]
        p50[f"{t['variant']} {t['precision']}"] = t["p50_ms"]
    assert set(p50) == {f"{v} {p}" for v in ("recompute", "cached", "cached+decoders") for p in ("fp32", "bf16")}

    pairs = {(r["numerator"], r["denominator"]): r["p50_ratio"] for r in result["ratios"]}
    expected = {("recompute fp32", "cached fp32"), ("recompute bf16", "cached bf16"),
                ("cached+decoders fp32", "cached fp32"), ("cached+decoders bf16", "cached bf16"),
                ("recompute fp32", "recompute bf16"), ("cached fp32", "cached bf16"),
                ("cached+decoders fp32", "cached+decoders bf16")}
    assert set(pairs) == expected
    for (num, den), ratio in pairs.items():
        assert ratio == pytest.approx(p50[num] / p50[den], rel=1e-9)
