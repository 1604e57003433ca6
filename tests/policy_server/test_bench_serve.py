"""Smoke test of `dv-bench serve`'s measurements with tiny counts: the numbers are consistent with each other
and JSON-able. Echo servers run in threads and the clients are real worker processes; openpi's side (which
needs its own venv) and the model are left to the full run."""

from __future__ import annotations

import io
import json
from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console
from serve_process import serving

from bench import serve_latency as sl
from policy_server.serving.echo import EchoBackend, echo_contract


def check_overhead(wire: dict) -> None:
    local = wire["timings"][0]
    assert local["label"] == "in-process step"
    for row, timing in zip(wire["overhead"], wire["timings"][1:], strict=True):
        assert row["server"] == timing["label"]
        assert row["ratio_p50"] == pytest.approx(timing["p50_ms"] / local["p50_ms"])
        assert row["ratio_p95"] == pytest.approx(timing["p95_ms"] / local["p95_ms"])
        assert row["p50_ms"] == pytest.approx(timing["p50_ms"] - local["p50_ms"])
        assert row["meets_target_p50"] == (row["p50_ms"] <= wire["target_p50_ms"])
        assert row["paired_p50_ms"] <= timing["p95_ms"] * 2  # a round trip less a non-negative compute time


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """One tiny run of each measurement (wire, transport without openpi, throughput), shared by the tests."""
    log_dir = tmp_path_factory.mktemp("bench-serve")
    backend = EchoBackend(echo_contract(), delay_s=0.005)
    with ExitStack() as stack:
        workers = sl.our_workers(stack, Path(log_dir), 2)
        plain = stack.enter_context(serving(EchoBackend(echo_contract())))
        on = stack.enter_context(serving(backend, max_wait_ms=2.0))
        off = stack.enter_context(serving(backend, batching=False))
        for w in workers:
            assert w.receive()["ready"]
        wire = sl.measure_wire(backend, {"server thread": on.endpoint}, iters=5, warmup=1)
        ipc = stack.enter_context(serving(EchoBackend(echo_contract()), bind=f"ipc://{log_dir}/echo.ipc"))
        ours = {"ours tcp": (workers[0], plain.endpoint), "ours ipc": (workers[1], ipc.endpoint)}
        transport = sl.measure_transport(ours, None, iters=10, block=4, warmup=2, openpi_note="skipped (test)")
        throughput = sl.measure_throughput({"echo": {"on": on.endpoint, "off": off.endpoint}}, workers,
                                           client_counts=[1, 2], duration_s=0.2, warmup_s=0.1, repeats=2)
    return {"wire": wire, "transport": transport, "throughput": throughput}


def test_wire_overhead_is_consistent(results):
    wire = results["wire"]
    assert [t["n"] for t in wire["timings"]] == [5, 5]
    assert all(t["p50_ms"] > 0 and t["p95_ms"] >= t["p50_ms"] for t in wire["timings"])
    check_overhead(wire)


def test_transport_without_openpi(results):
    transport = results["transport"]
    assert [t["label"] for t in transport["timings"]] == ["ours tcp", "ours ipc"]
    for ours in transport["timings"]:
        assert ours["n"] == 10 and ours["p50_ms"] > 0
    assert "ratios" not in transport and transport["openpi"] == "skipped (test)"


def test_transport_ratios_are_openpi_over_ours_against_the_2x_target():
    theirs = sl.Summary("openpi", 10, p50_ms=0.8, p95_ms=1.2, mean_ms=0.9)
    fast = sl.Summary("ours tcp", 10, p50_ms=0.4, p95_ms=0.5, mean_ms=0.45)
    slow_tail = sl.Summary("ours ipc", 10, p50_ms=0.3, p95_ms=0.7, mean_ms=0.4)
    rows = sl.transport_ratios(theirs, [fast, slow_tail])
    assert [r["ours"] for r in rows] == ["ours tcp", "ours ipc"]
    assert rows[0]["p50"] == pytest.approx(2.0) and rows[0]["p95"] == pytest.approx(2.4) and rows[0]["meets_target"]
    assert rows[1]["p50"] == pytest.approx(0.8 / 0.3) and rows[1]["p95"] == pytest.approx(1.2 / 0.7)
    assert not rows[1]["meets_target"]  # both percentiles must reach 2x


def test_throughput_is_consistent(results):
    throughput = results["throughput"]
    rows = throughput["rows"]
    assert [(r["server"], r["clients"]) for r in rows] == [("echo", 1), ("echo", 2)]
    for r in rows:
        for mode in ("on", "off"):
            cell = r[mode]
            assert cell["windows"] == 2 and cell["requests"] > 0
            assert cell["rps_min"] <= cell["rps"] <= cell["rps_max"]
            # the median of two windows is their mean: total requests over total time
            assert cell["rps"] == pytest.approx(cell["requests"] / (2 * throughput["duration_s"]))
        assert r["ratio_on_off"] == pytest.approx(r["on"]["rps"] / r["off"]["rps"])
        assert r["off"]["mean_batch"] == pytest.approx(1.0, abs=0.2)  # batching off: one request per batch


def test_json_and_tables(results):
    result = results | {
        "payload": {"cameras": ["static", "wrist"], "image": [224, 224, 3], "image_dtype": "uint8", "state": 7,
                    "state_dtype": "float32", "bytes": 301084},
        "machine": {"cpus": 2, "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 2.0, 2.0], "python": "3.11",
                    "torch_threads": 2},
        "elapsed_s": 1.0,
    }
    result["wire"]["model"] = "echo"
    assert json.loads(json.dumps(result)) == result
    out = io.StringIO()
    sl.render(result, Console(file=out, width=160))
    text = out.getvalue()
    assert "Wire overhead" in text and "Transport alone" in text and "throughput" in text
    assert "skipped (test)" in text
