"""dv-data verify|repair|stats DIR"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from teleop.dataset import layout as L
from teleop.dataset.stats import aggregate
from teleop.dataset.verify import Report, repair, verify
from teleop.dataset.writer import load_manifests


def _print_report(c: Console, r: Report) -> None:
    c.print(f"[bold]{'OK' if r.ok else 'FAILED'}[/bold]: {r.episodes} episodes, {r.frames} frames")
    for f in r.flagged:
        c.print(f"[yellow]flagged[/yellow] {f}")
    for e in r.errors:
        c.print(f"[red]error[/red] {e}")
    if not r.ok and r.bad_episode is not None:
        c.print(f"first bad episode: {r.bad_episode}; `dv-data repair` keeps episodes 0..{r.bad_episode - 1}")


def compute_stats(root: Path) -> dict:
    """Aggregate normalisation stats from the per-episode stats of the indexed episodes and rewrite stats.json."""
    info = json.loads((root / L.INFO).read_text())
    manifests = load_manifests(root)[: info["total_episodes"]]
    stats = aggregate([m["stats"] for m in manifests]) if manifests else {}
    L.atomic_write_json(root / L.STATS, stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dv-data", description="Verify, repair and summarise a dv-teleop dataset")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, hlp in (("verify", "check indices, frame counts, checksums and stats"),
                      ("repair", "cut back to the longest verified prefix (bad episodes are quarantined)"),
                      ("stats", "compute normalisation statistics (writes meta/stats.json)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("root", type=Path)
        s.add_argument("--json", action="store_true", help="machine-readable output")
    a = p.parse_args(argv)
    c = Console()
    if not (a.root / L.DV_CONFIG).exists():
        c.print(f"[red]{a.root} is not a dv-teleop dataset (no {L.DV_CONFIG})[/red]")
        return 2
    if a.cmd in ("verify", "repair"):
        r = verify(a.root) if a.cmd == "verify" else repair(a.root)
        if a.json:
            print(json.dumps(r.__dict__))
        else:
            _print_report(c, r)
        return 0 if r.ok else 1
    stats = compute_stats(a.root)
    if a.json:
        print(json.dumps(stats))
        return 0
    t = Table("feature", "count", "mean", "std", "min", "max")

    def fmt(v: list) -> str:
        import numpy as np

        return np.array2string(np.asarray(v, dtype=float).reshape(-1), precision=3, max_line_width=60)

    for k, s in stats.items():
        t.add_row(k, str(s["count"][0]), fmt(s["mean"]), fmt(s["std"]), fmt(s["min"]), fmt(s["max"]))
    c.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
