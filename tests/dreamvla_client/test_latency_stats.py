"""The one latency-statistics type: a reply's timing breakdown adds one value per stage, like separate adds."""

from __future__ import annotations

from dreamvla_client.latency import LatencyStats


def test_a_timing_breakdown_is_one_add_per_stage():
    one, each = LatencyStats(reservoir_size=32, seed=3), LatencyStats(reservoir_size=32, seed=3)
    for i in range(500):
        timing = {"receive": 0.1 * i, "decode": 1.0 + (i % 7), "backbone": 40.0 - 0.01 * i}
        one.add_timing(timing)
        for stage, ms in timing.items():
            each.add(stage, ms)
    assert one.summary() == each.summary()  # the same values through the same seeded sampling
    assert list(one.summary()) == ["backbone", "decode", "receive"]  # sorted by name, whatever the arrival order
    assert one.kept() == 3 * 32 and one.summary()["receive"]["n"] == 500
