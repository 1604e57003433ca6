"""`Recorder`: the loop's `StepSink` that turns ticks into committed dataset episodes without ever blocking it.

The loop hands each tick over with a non-blocking put into a bounded queue; one writer thread per episode
encodes video and depth and appends rows. When the queue is full (the disk or the encoder falls behind) or a
camera had no usable frame, the tick is counted as dropped and the episode is committed flagged *degraded*
(never silently thinned). At the end of an episode the queue is drained, `decide` (the operator, or a rule)
keeps it (atomic commit) or discards it (its staging area is deleted), and a writer failure (out of disk space)
discards the episode, keeps every earlier one, and stops the run through `on_failure`.

The wait at the end is bounded (`writer_timeout_s`, on the loop's thread): a writer that has not drained its queue
by then (a stalled disk or encoder) is abandoned. Its episode is discarded and flagged (`writer_timed_out`), the run
is stopped through `on_failure`, and the writer thread, which alone touches that episode, deletes its staging area
if it ever returns; committed episodes are never touched, so the dataset stays consistent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    writer_timed_out: bool = False  # discarded because its writer did not finish within writer_timeout_s

    @property
    def degraded(self) -> bool:
        return self.dropped > 0


Decide = Callable[[EpisodeRecord, EpisodeProgress], bool]
_END = object()
WRITER_TIMEOUT_S = 30.0  # draining a full queue (64 frames of two cameras) takes a few seconds on a loaded PC


@dataclass
class _Writing:
    """One episode's writer thread with its own queue and progress, so that an abandoned writer can never take
    the next episode's ticks or count into its progress."""

    episode: EpisodeWriter
    queue: queue.Queue[object]
    progress: EpisodeProgress
    thread: threading.Thread | None = None
    t0_ns: int = 0  # the episode's first tick: row timestamps count from it
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # the thread has left its loop (under `lock`)
    abandoned: bool = False  # `end` stopped waiting for it (under `lock`)

    def abandon(self) -> bool:
        """Mark it abandoned; True if its thread had already finished (then nobody else touches the episode)."""
        with self.lock:
            self.abandoned = True
            return self.done


class Recorder:
    """Records every episode the runner runs into `writer`; `decide(record, progress)` keeps or discards each."""

    def __init__(self, writer: DatasetWriter, cameras: Sequence[str], decide: Decide, queue_size: int = 64,
                 on_failure: Callable[[str], None] | None = None, writer_timeout_s: float = WRITER_TIMEOUT_S) -> None:
        if writer_timeout_s <= 0:
            raise ValueError(f"writer_timeout_s must be > 0, got {writer_timeout_s}")
        self.writer, self.cameras, self.decide = writer, list(cameras), decide
        self.on_failure = on_failure or (lambda _reason: None)
        self.writer_timeout_s = writer_timeout_s
        self.progress = EpisodeProgress()
        self.history: list[EpisodeProgress] = []
        self._queue_size = queue_size
        self._writing: _Writing | None = None
        self._abandoned: _Writing | None = None  # the last writer `end` gave up on
        self._lock = threading.Lock()  # progress is read by the panel's thread

    # ------------------------------------------------------------------ StepSink (the loop's thread)

    def begin(self, episode: int, instruction: str) -> None:
        with self._lock:
            self.progress = EpisodeProgress(episode=episode, instruction=instruction)
        stuck = self._abandoned
        if stuck is not None and stuck.thread is not None and stuck.thread.is_alive():
            self._fail(f"the writer of episode {stuck.progress.episode} is still stuck; not recording")
            return
        try:
            opened = self.writer.begin_episode(instruction)
        except EpisodeAborted as exc:
            self._fail(str(exc))
            return
        w = _Writing(opened, queue.Queue(maxsize=self._queue_size), self.progress)
        w.thread = threading.Thread(target=self._drain, args=(w,), name="recorder", daemon=True)
        self._writing = w
        w.thread.start()

    def record(self, tick: TickRecord) -> None:
        w = self._writing
        if w is None:
            return
        if w.t0_ns == 0:
            w.t0_ns = tick.tick_ns
        with self._lock:
            p = self.progress
            p.ticks += 1
            elapsed = (tick.tick_ns - w.t0_ns) / 1e9
            p.fps = (p.ticks - 1) / elapsed if elapsed > 0 else 0.0
            if tick.frames is None or p.error is not None:
                p.dropped += 1
                return
            try:
                w.queue.put_nowait(tick)
            except queue.Full:
                p.dropped += 1
                return
            p.queued = w.queue.qsize()

    def end(self, record: EpisodeRecord) -> None:
        w, self._writing = self._writing, None
        p = self.progress
        p.outcome = record.outcome
        if w is None:  # it never started (no room on the disk): nothing was written
            p.kept = False
        elif not self._writer_finished(w):
            self._give_up(w, p)
        elif p.error is None and p.written > 0:
            self._settle(w.episode, record, p)
        else:
            p.kept = False
            if not w.episode.closed:
                w.episode.abort()
        with self._lock:
            self.history.append(p)
        log.info("episode %d: %s, %d rows, %d dropped -> %s", p.episode, p.outcome, p.written, p.dropped,
                 "kept" if p.kept else f"discarded{f' ({p.error})' if p.error else ''}")

    def _writer_finished(self, w: _Writing) -> bool:
        """Hand the writer its end mark and wait for it, both within `writer_timeout_s` in all (the loop's thread
        waits here with the arm at rest, but never forever)."""
        deadline = time.monotonic() + self.writer_timeout_s
        try:
            w.queue.put(_END, timeout=self.writer_timeout_s)
        except queue.Full:
            return False
        assert w.thread is not None
        w.thread.join(max(0.0, deadline - time.monotonic()))
        return not w.thread.is_alive()

    def _give_up(self, w: _Writing, p: EpisodeProgress) -> None:
        """Discard and flag the episode of a writer that did not finish in time, and stop the run."""
        reason = f"the episode writer did not finish within {self.writer_timeout_s:g} s (disk or encoder stalled)"
        with self._lock:
            p.writer_timed_out, p.kept = True, False
        self._abandoned = w
        if w.abandon():  # it finished just after the wait: nobody else touches the episode now
            w.episode.abort()
        self._fail(reason)

    # ------------------------------------------------------------------ writer side

    def _drain(self, w: _Writing) -> None:
        """The writer thread: rows until the end mark; once abandoned, it stops and discards its episode itself."""
        while (tick := w.queue.get()) is not _END:
            assert isinstance(tick, TickRecord)
            if w.abandoned:
                break
            if w.progress.error is not None:
                continue  # the episode is gone; empty the queue
            try:
                w.episode.add_frame(**tick_row(tick, w.t0_ns, self.cameras))
            except EpisodeAborted as exc:
                self._fail(str(exc), w)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the thread: `end` waits on it
                w.episode.abort()
                self._fail(f"{type(exc).__name__}: {exc}", w)
                continue
            with self._lock:
                w.progress.written += 1
                w.progress.queued = w.queue.qsize()
        with w.lock:
            w.done = True
            abandoned = w.abandoned
        if abandoned:
            w.episode.abort()  # deletes its staging area; committed episodes are untouched

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

    def _fail(self, reason: str, w: _Writing | None = None) -> None:
        """Record the failure on the episode it belongs to (the current one, or writer `w`'s) and stop the run; an
        abandoned writer's late failures are its own and stop nothing."""
        if w is not None and w.abandoned:
            return
        with self._lock:
            (w.progress if w is not None else self.progress).error = reason
        log.error("recording failed: %s", reason)
        self.on_failure(reason)

    def snapshot(self) -> tuple[EpisodeProgress, list[EpisodeProgress]]:
        """A copy of the current episode's progress and of the finished ones, for another thread."""
        with self._lock:
            return EpisodeProgress(**vars(self.progress)), list(self.history)
