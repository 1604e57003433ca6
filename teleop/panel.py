"""The recorder's live panel: the episode, its step, the rate achieved and the frames dropped, redrawn by rich's
own refresh thread from `Recorder.snapshot()` (so drawing never runs on the control loop)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from teleop.recorder import Recorder


class RecordingPanel:
    def __init__(self, recorder: Recorder, task: str, device: str, episodes: int, fps: float, help_text: str,
                 console: Console) -> None:
        self.recorder, self.task, self.device = recorder, task, device
        self.episodes, self.fps, self.help_text = episodes, fps, help_text
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=4, transient=False)

    def _render(self) -> Panel:
        p, done = self.recorder.snapshot()
        kept = sum(1 for e in done if e.kept)
        table = Table.grid(padding=(0, 2))
        table.add_row("episode", f"{p.episode}/{self.episodes}  ({kept} kept so far)")
        table.add_row("instruction", p.instruction)
        table.add_row("step", str(p.ticks))
        table.add_row("rate", f"{p.fps:5.1f} Hz achieved / {self.fps:g} Hz")
        dropped = Text(f"{p.dropped}" + ("  DEGRADED" if p.degraded else ""),
                       style="bold red" if p.degraded else "green")
        table.add_row("dropped", dropped)
        table.add_row("write queue", str(p.queued))
        if p.error:
            table.add_row("error", Text(p.error, style="bold red"))
        return Panel(Group(table, Text(self.help_text, style="dim")),
                     title=f"dv-teleop record · {self.task} · {self.device}")

    @contextmanager
    def shown(self) -> Iterator[None]:
        with self._live:
            yield

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing while the operator answers a question."""
        self._live.stop()
        try:
            yield
        finally:
            self._live.start()
