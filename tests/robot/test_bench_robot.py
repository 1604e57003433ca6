"""`dv-bench robot` end to end at tiny counts: every phase runs on franky-sim and yields numbers, and the tables
print. The served phase talks to an in-process echo `PolicyServer` (no model load), cameras render at 64x48."""

from __future__ import annotations

import json
import threading

import pytest
from rich.console import Console

from policy_server.echo import EchoBackend, echo_contract
from policy_server.server import PolicyServer

pytest.importorskip("franky_sim")
from robot.bench import print_tables, run_robot_bench  # noqa: E402


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
