"""What a run leaves behind: one record per episode, a rich summary table and a JSON summary file."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table


@dataclass
class EpisodeRecord:
    """One episode. outcome: 'success', 'failure', or 'aborted:<reason>'; success: the sim predicate or the
    operator's answer (False for aborted episodes)."""

    index: int
    task: str
    instruction: str
    outcome: str
    success: bool
    steps: int
    ticks: int
    duration_s: float
    interventions: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    events: list[str] = field(default_factory=list)

    @property
    def aborted(self) -> bool:
        return self.outcome.startswith("aborted:")


@dataclass
class RunSummary:
    task: str
    mode: str
    policy: str
    episodes: list[EpisodeRecord]
    latency_ms: dict[str, dict[str, float]]
    stopped: str = ""  # why the run ended early ('' when every planned episode ran)
    overrides: list[str] = field(default_factory=list)  # safety overrides in force (e.g. a real robot without e-stop)

    def totals(self) -> dict[str, Any]:
        interventions: Counter[str] = Counter()
        for e in self.episodes:
            interventions.update(e.interventions)
        n = len(self.episodes)
        successes = sum(e.success for e in self.episodes)
        return {"episodes": n, "successes": successes, "success_rate": successes / n if n else 0.0,
                "aborted": sum(e.aborted for e in self.episodes), "interventions": dict(sorted(interventions.items()))}

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "mode": self.mode, "policy": self.policy, "stopped": self.stopped,
                "overrides": self.overrides, "totals": self.totals(), "latency_ms": self.latency_ms,
                "episodes": [asdict(e) for e in self.episodes]}

    def write_json(self, path: Path) -> None:
        """Written to a temporary file and renamed, so a reader never sees half a summary."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)


def _p(latency: dict[str, dict[str, float]], stage: str) -> str:
    s = latency.get(stage)
    return f"{s['p50']:.0f} / {s['p95']:.0f}" if s else "-"


def episode_table(summary: RunSummary) -> Table:
    """One row per episode: outcome, steps, interventions, the two latencies that matter most."""
    table = Table(title=f"dv-robot {summary.task}: {summary.policy} policy, {summary.mode} mode")
    for name in ("ep", "outcome", "success", "steps", "s", "interventions", "obs→action ms", "infer ms"):
        table.add_column(name, justify="left" if name == "outcome" else "right")
    for e in summary.episodes:
        outcome = f"[yellow]{e.outcome}[/yellow]" if e.aborted else e.outcome
        table.add_row(str(e.index), outcome, "[green]yes[/green]" if e.success else "[red]no[/red]", str(e.steps),
                      f"{e.duration_s:.1f}", str(sum(e.interventions.values())), _p(e.latency_ms, "obs_to_action"),
                      _p(e.latency_ms, "infer"))
    t = summary.totals()
    table.add_section()
    table.add_row("all", f"{t['aborted']} aborted", f"{t['successes']}/{t['episodes']}",
                  str(sum(e.steps for e in summary.episodes)), "", str(sum(t["interventions"].values())),
                  _p(summary.latency_ms, "obs_to_action"), _p(summary.latency_ms, "infer"))
    table.caption = "latencies: p50 / p95"
    return table


def interventions_table(summary: RunSummary) -> Table:
    """Safety interventions per rule (rows) and episode (columns)."""
    table = Table(title="safety interventions by rule", min_width=40)
    table.add_column("rule")
    for e in summary.episodes:
        table.add_column(f"ep {e.index}", justify="right")
    table.add_column("total", justify="right")
    for rule, total in summary.totals()["interventions"].items():
        table.add_row(rule, *(str(e.interventions.get(rule, 0)) for e in summary.episodes), str(total))
    return table


def latency_table(summary: RunSummary) -> Table:
    table = Table(title="latency per stage over the run (ms)")
    for name in ("stage", "p50", "p95", "p99", "max", "n"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for stage, s in summary.latency_ms.items():
        table.add_row(stage, f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['p99']:.1f}", f"{s['max']:.1f}", str(s["n"]))
    return table
