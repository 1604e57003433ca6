"""`dv-bench record` runs end to end on a small size and reports both codecs with their ratios."""

from __future__ import annotations

from bench.cli import main


def test_record_bench_smoke(capsys):
    assert main(["record", "--frames", "6", "--width", "128", "--height", "96"]) == 0
    out = capsys.readouterr().out
    assert "mp4v" in out and "h264" in out and "h264 / mp4v (same run)" in out
