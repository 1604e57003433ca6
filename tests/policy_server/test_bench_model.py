"""`dv-bench model` runs end to end on the tiny config (every variant, the CUDA code path included) and its
ratios are the ratios of its p50s."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from bench.cli import main  # noqa: E402


def test_model_bench_json_is_consistent(capsys):
    assert main(["model", "--config", "tiny", "--iters", "3", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    p50 = {}
    for t in result["timings"]:
        assert math.isfinite(t["p50_ms"]) and math.isfinite(t["p95_ms"]) and math.isfinite(t["mean_ms"])
        assert 0 < t["p50_ms"] <= t["p95_ms"]
        p50[f"{t['variant']} {t['precision']}"] = t["p50_ms"]
    variants = ("recompute", "cached", "cached-full-seq", "cached+decoders", "cached+flex")
    assert set(p50) == {f"{v} {p}" for v in variants for p in ("fp32", "bf16")}
    assert (result["full_tokens"], result["serving_tokens"]) == (124, 67)  # tiny: 4 x 31 -> 4 x 12 + 19

    pairs = {(r["numerator"], r["denominator"]): r["p50_ratio"] for r in result["ratios"]}
    expected = {("recompute fp32", "cached fp32"), ("recompute bf16", "cached bf16"),
                ("cached+decoders fp32", "cached fp32"), ("cached+decoders bf16", "cached bf16"),
                ("recompute fp32", "recompute bf16"), ("cached fp32", "cached bf16"),
                ("cached+decoders fp32", "cached+decoders bf16")}
    expected |= {("cached-full-seq fp32", "cached fp32"), ("cached-full-seq bf16", "cached bf16"),
                 ("cached fp32", "cached+flex fp32"), ("cached bf16", "cached+flex bf16"),
                 ("cached-full-seq fp32", "cached-full-seq bf16"), ("cached+flex fp32", "cached+flex bf16")}
    assert set(pairs) == expected
    for (num, den), ratio in pairs.items():
        assert ratio == pytest.approx(p50[num] / p50[den], rel=1e-9)


def test_model_bench_runs_a_chosen_subset_and_names_unknown_variants():
    """The paper configs take seconds per step on CPU: a caller times only the variants it reports."""
    from bench.model_latency import run_model_bench
    from policy_server.model.config import preset

    result = run_model_bench(preset("tiny"), iters=2, warmup=0, variants=("cached-full-seq", "cached"),
                             precisions=("bf16",))
    assert [t.label for t in result.timings] == ["cached-full-seq bf16", "cached bf16"]
    assert [(r.numerator, r.denominator) for r in result.ratios] == [("cached-full-seq bf16", "cached bf16")]
    with pytest.raises(ValueError, match=r"unknown benchmark variant or precision \['cached-pruned'\]"):
        run_model_bench(preset("tiny"), iters=1, warmup=0, variants=("cached-pruned",))
    with pytest.raises(ValueError, match="sees no CUDA device"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        run_model_bench(preset("tiny"), iters=1, warmup=0, device="cuda")
