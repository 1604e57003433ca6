"""Where a run's numbers go: RUN/metrics.jsonl (always), TensorBoard (when installed), a rich progress bar.

The JSONL file is the record (one object per logged step, with `split` train/val/eval); a resumed run first
drops the rows written after the checkpoint it resumes from, so the file never holds two histories.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from policy_server.training.state import write_text_atomic

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def truncate_metrics(run: Path, step: int) -> None:
    """Keep only rows up to `step` (the resumed checkpoint's): the killed run's later rows are replayed."""
    rows = [r for r in read_metrics(run) if r.get("step", 0) <= step]
    if (run / METRICS_FILE).is_file():
        write_text_atomic(run / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    """Append-only JSONL plus an optional TensorBoard writer."""

    def __init__(self, run: Path, *, tensorboard: bool = True) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self._file = (run / METRICS_FILE).open("a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: the JSONL file has everything
                log.info("tensorboard is not installed: metrics go to %s only", run / METRICS_FILE)
            else:
                self._tb = SummaryWriter(str(run / "tensorboard"))

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"split": split, "step": step, "time": time.time(), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(enabled: bool) -> Progress:
    """Step counter, bar, steps/s, ETA and a free text field with the per-head losses and the learning rate."""
    return Progress(
        TextColumn("[b]train[/b]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
        disable=not enabled,
    )


def format_losses(values: dict[str, float], lr: float) -> str:
    heads = " ".join(f"{k}={v:.4f}" for k, v in values.items() if k.startswith("loss/"))
    return f"{heads.replace('loss/', '')} lr={lr:.2e}"
