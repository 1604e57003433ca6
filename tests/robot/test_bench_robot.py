"""`dv-bench robot` end to end at tiny counts: every phase runs on franky-sim and yields numbers, and the tables
print. The served phase talks to an in-process echo `PolicyServer` (no model load), cameras render at 64x48."""

from __future__ import annotations

import json
import threading

import pytest
from rich.console import Console

from policy_server.serving.echo import EchoBackend, echo_contract
from policy_server.serving.server import PolicyServer

pytest.importorskip("franky_sim")
from bench.robot import print_tables, run_robot_bench  # noqa: E402


def test_robot_bench_smoke():
    server = PolicyServer(EchoBackend(echo_contract(), delay_s=0.0), "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_robot_bench(seconds=1.5, estop_trials=1, endpoint=server.endpoint, camera_size=(48, 64))
    finally:
        server.stop()
        thread.join(5)

    json.dumps(result)  # --json prints it as is
    served = result["served"]
    assert served["tick"]["period_ms"]["n"] > 5
    assert 40 < served["tick"]["period_ms"]["p50"] < 100  # 15 Hz: 66.7 ms
    assert set(served["obs_age_at_send_ms"]) == {"state", "static", "wrist"}
    assert served["latency_ms"]["3 reply→first action"]["n"] > 0
    for mode, v in result["velocity_jump"]["modes"].items():
        assert v["jump_mps"]["boundary"]["n"] > 0, mode
    estop = result["estop"]
    assert estop["outcomes"] == ["aborted:estop"]
    assert 0 <= estop["ms"]["STOP sent → stop issued to arm"]["p50"] < 200  # within a tick plus transport
    console = Console(record=True, width=140)
    print_tables(result, console)
    text = console.export_text()
    print(text)
    assert "boundary-jump ratios" in text


def test_the_soak_phase_samples_rss_at_every_episode_end():
    """`dv-bench robot --phases soak`: episodes back to back on one runner, the RSS at each episode's end, and the
    start/end/peak table (the docs' number comes from a longer run of the same phase)."""
    result = run_robot_bench(seconds=1.5, camera_size=(48, 64), phases=["soak"], soak_s=3.0)
    assert set(result) >= {"soak"} and "served" not in result
    soak = result["soak"]
    assert soak["episodes"] >= 2 and soak["ticks"] > 10 and sum(soak["outcomes"].values()) == soak["episodes"]
    rss = soak["rss"]
    assert rss["samples"] == soak["episodes"]
    assert 50 < rss["start_mb"] <= rss["peak_mb"] <= rss["process_peak_mb"] + 1
    assert rss["end_mb"] <= rss["peak_mb"]
    console = Console(record=True, width=160)
    print_tables(result, console)
    text = console.export_text()
    print(text)
    assert "RSS at episode ends" in text and "growth after the first episode" in text
    assert rss["python_blocks_end"] > 0


# ------------------------------------------------------------------------------------------------ latency stats


def _lognormal(n: int, seed: int = 1):
    import numpy as np

    return np.random.default_rng(seed).lognormal(3.0, 0.5, n)  # a latency-like tail, in ms


def test_run_latency_samples_stay_bounded_and_their_quantiles_accurate():
    """An 8-hour run at 15 Hz (432 000 values of a stage, one-minute episodes merged into the run's statistics, as
    the loop does) keeps at most RESERVOIR_SIZE values, like a short one; count and max stay exact and each
    quantile's rank in the full data is within 0.5 % of its target (the reservoir's one sigma is 0.11 %)."""
    import tracemalloc

    import numpy as np

    from dreamvla_client.latency import RESERVOIR_SIZE, LatencyStats

    values = _lognormal(8 * 3600 * 15)
    run = LatencyStats()
    tracemalloc.start()
    sizes = []
    for e, episode_values in enumerate(np.split(values, 480)):
        episode = LatencyStats(seed=e + 1)
        for v in episode_values.tolist():
            episode.add("obs_to_action", v)
        run.merge(episode)
        if e in (9, 479):  # after 10 minutes, and after 8 hours
            sizes.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert run.kept() == RESERVOIR_SIZE
    assert sizes[1] < sizes[0] + 64 * 1024, sizes  # the same memory 10 min and 8 h in
    s = run.summary()["obs_to_action"]
    assert s["n"] == len(values) and s["max"] == values.max()
    for q in (50, 95, 99):
        rank = float(np.mean(values <= s[f"p{q}"]))
        assert abs(rank - q / 100) < 0.005, (q, rank)


def test_latency_stats_are_exact_below_the_bound_and_reproducible_above():
    import numpy as np

    from dreamvla_client.latency import LatencyStats

    small = _lognormal(900)  # one minute at 15 Hz: every value kept, the same numbers as before
    stats = LatencyStats()
    for v in small.tolist():
        stats.add("infer", v)
    s = stats.summary()["infer"]
    assert [s["p50"], s["p95"], s["p99"]] == np.percentile(small, [50, 95, 99]).tolist()
    assert (s["max"], s["n"]) == (small.max(), 900)

    def summary() -> dict:
        run = LatencyStats(reservoir_size=256)
        for v in _lognormal(5000).tolist():
            run.add("infer", v)
        return run.summary()

    assert summary() == summary()  # a fixed seed: the same run gives the same summary
