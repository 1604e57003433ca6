"""`Recorder`: the loop's `StepSink` that turns ticks into committed dataset episodes without ever blocking it.

The loop hands each tick over with a non-blocking put into a bounded queue; one writer thread per episode
encodes video and depth and appends rows. When the queue is full (the disk or the encoder falls behind) or a
camera had no usable frame, the tick is counted as dropped and the episode is committed flagged *degraded*
(never silently thinned). At the end of an episode the queue is drained, `decide` (the operator, or a rule)
keeps it (atomic commit) or discards it (its staging area is deleted), and a writer failure (out of disk space)
discards the episode, keeps every earlier one, and stops the run through `on_failure`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from robot.runner import EpisodeRecord, TickRecord
from teleop.dataset import DatasetWriter, EpisodeAborted, EpisodeWriter
from teleop.rows import tick_row

log = logging.getLogger("teleop.recorder")


@dataclass
class EpisodeProgress:
    """What the live panel and the summary show about the episode being (or last) recorded."""

    episode: int = 0
    instruction: str = ""
    ticks: int = 0
    written: int = 0
    dropped: int = 0
    queued: int = 0
    fps: float = 0.0
    error: str | None = None
    outcome: str = ""
    kept: bool | None = None
    dataset_index: int | None = None

    @property
    def degraded(self) -> bool:
        return self.dropped > 0


Decide = Callable[[EpisodeRecord, EpisodeProgress], bool]
_END = object()


class Recorder:
    """Records every episode the runner runs into `writer`; `decide(record, progress)` keeps or discards each."""

    def __init__(self, writer: DatasetWriter, cameras: Sequence[str], decide: Decide, queue_size: int = 64,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.writer, self.cameras, self.decide = writer, list(cameras), decide
        self.on_failure = on_failure or (lambda _reason: None)
        self.progress = EpisodeProgress()
        self.history: list[EpisodeProgress] = []
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._episode: EpisodeWriter | None = None
        self._thread: threading.Thread | None = None
        self._t0_ns = 0
        self._lock = threading.Lock()  # progress is read by the panel's thread

    # ------------------------------------------------------------------ StepSink (the loop's thread)

    def begin(self, episode: int, instruction: str) -> None:
        with self._lock:
            self.progress = EpisodeProgress(episode=episode, instruction=instruction)
        self._t0_ns = 0
        try:
            self._episode = self.writer.begin_episode(instruction)
        except EpisodeAborted as exc:
            self._fail(str(exc))
            return
        self._thread = threading.Thread(target=self._drain, args=(self._episode,), name="recorder", daemon=True)
        self._thread.start()

    def record(self, tick: TickRecord) -> None:
        if self._episode is None:
            return
        if self._t0_ns == 0:
            self._t0_ns = tick.tick_ns
        with self._lock:
            p = self.progress
            p.ticks += 1
            elapsed = (tick.tick_ns - self._t0_ns) / 1e9
            p.fps = (p.ticks - 1) / elapsed if elapsed > 0 else 0.0
            if tick.frames is None or p.error is not None:
                p.dropped += 1
                return
            try:
                self._queue.put_nowait(tick)
            except queue.Full:
                p.dropped += 1
                return
            p.queued = self._queue.qsize()

    def end(self, record: EpisodeRecord) -> None:
        episode, self._episode = self._episode, None
        p = self.progress
        p.outcome = record.outcome
        if episode is None:  # it never started (no room on the disk): nothing was written
            p.kept = False
            with self._lock:
                self.history.append(p)
            return
        self._queue.put(_END)  # blocking is fine here: the arm is at rest
        assert self._thread is not None
        self._thread.join()
        if p.error is None and p.written > 0:
            self._settle(episode, record, p)
        else:
            p.kept = False
            if not episode.closed:
                episode.abort()
        with self._lock:
            self.history.append(p)
        log.info("episode %d: %s, %d rows, %d dropped -> %s", p.episode, p.outcome, p.written, p.dropped,
                 "kept" if p.kept else f"discarded{f' ({p.error})' if p.error else ''}")

    # ------------------------------------------------------------------ writer side

    def _drain(self, episode: EpisodeWriter) -> None:
        while (tick := self._queue.get()) is not _END:
            assert isinstance(tick, TickRecord)
            if self.progress.error is not None:
                continue  # the episode is gone; empty the queue
            try:
                episode.add_frame(**tick_row(tick, self._t0_ns, self.cameras))
            except EpisodeAborted as exc:
                self._fail(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the thread: `end` waits on it
                episode.abort()
                self._fail(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.progress.written += 1
                self.progress.queued = self._queue.qsize()

    def _settle(self, episode: EpisodeWriter, record: EpisodeRecord, p: EpisodeProgress) -> None:
        keep = self.decide(record, p)
        if not keep:
            episode.abort()
            p.kept = False
            return
        if p.dropped:
            episode.mark_degraded(p.dropped)
        try:
            p.dataset_index = episode.commit()
            p.kept = True
        except EpisodeAborted as exc:
            self._fail(str(exc))
            p.kept = False

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.progress.error = reason
        log.error("recording failed: %s", reason)
        self.on_failure(reason)

    def snapshot(self) -> tuple[EpisodeProgress, list[EpisodeProgress]]:
        """A copy of the current episode's progress and of the finished ones, for another thread."""
        with self._lock:
            return EpisodeProgress(**vars(self.progress)), list(self.history)
