"""`dv-bench robot`: the control loop's timing in the sim workcell (real franky against franky-sim), in one run.

Four phases on one workcell, each an episode of the unchanged `Runner` (nothing here re-implements the loop):
1. served: chunk mode against a `dv-serve` on the tiny checkpoint (started locally, as `dv-robot --sim` does):
   tick-period jitter, observation age at send per stream, obs→action latency per stage;
2. modes: the sim's scripted expert (`ScriptedPolicy`: smooth, meaningful motion; the tiny checkpoint's random
   weights would make velocity jumps meaningless) in chunk, receding and ensemble mode on the same layout: the
   commanded-velocity jump at chunk boundaries, and its ratios between modes;
3. e-stop: a few trials where a `HeartbeatSender` (the console's sender) commands STOP mid-motion: STOP → stop
   issued to the arm, and stop issued → TCP at rest;
4. soak (only with `--phases soak`): the scripted expert's episodes back to back on one `Runner` for `--soak-s`
   seconds, the process's resident memory (RSS) sampled at every episode's end: start, end, peak and the growth
   per hour, so that a long run's memory can be checked to stay flat (the run-level latency samples are bounded).

The loop is observed only from outside, through its devices: `_ArmProbe` records when the loop reads the state
(once per tick, first thing after the e-stop check: the tick grid), the targets it sends and the stops it issues;
`_PolicyProbe` records when each request left and its reply came back. This module never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dreamvla_client.latency import RESERVOIR_SIZE
from robot.execution import MODES, Mode
from robot.policy import Observation, Policy, PolicyChunk, PolicyFailure, RemotePolicy, ScriptedPolicy, robot_contract
from robot.runner import Runner, RunnerConfig, RunSummary, SimScene
from robot.safety import SafetyConfig

REST_TOLERANCE_M = 0.001  # at rest: the TCP stays within this of where it ends
REST_WATCH_S = 0.5  # the TCP is watched this long after the episode ended, to see where it ends
JUMP_RESOLUTION_MPS = 0.001  # a ratio of jumps below this (1 mm/s: float noise of a constant velocity) is omitted
ESTOP_AFTER_MOVES = 12  # STOP is sent once the arm has been commanded this many targets (it is moving)
PHASES = ("served", "modes", "estop", "soak")
DEFAULT_PHASES = ("served", "modes", "estop")


# ------------------------------------------------------------------------------------------------ statistics


def _stats(values: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """{pNN..., max, n} of `values` ({"n": 0} when empty, so a phase that produced nothing still prints)."""
    if len(values) == 0:
        return {"n": 0}
    v = np.asarray(values, dtype=float)
    out = {f"p{q}": float(p) for q, p in zip(quantiles, np.percentile(v, quantiles), strict=True)}
    return {**out, "max": float(v.max()), "n": len(v)}


def _ms(ns: float) -> float:
    return ns / 1e6


# ------------------------------------------------------------------------------------------------ probes


class _ArmProbe:
    """The real arm, with the loop's state reads, targets and stops time-stamped (monotonic ns)."""

    def __init__(self, arm: Any) -> None:
        self.arm = arm
        self.reads: list[int] = []
        self.moves: list[tuple[int, np.ndarray]] = []
        self.stops: list[int] = []

    def read_state(self) -> Any:
        state = self.arm.read_state()
        self.reads.append(state.capture_ns)
        return state

    def move_to(self, T_base_target: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        self.moves.append((time.monotonic_ns(), T_base_target[:3, 3].copy()))
        return self.arm.move_to(T_base_target, asynchronous, dynamics_factor)

    def stop(self) -> bool:
        self.stops.append(time.monotonic_ns())
        return self.arm.stop()

    def __getattr__(self, name: str) -> Any:  # wait, poll_error, recover, move_joints: unobserved
        return getattr(self.arm, name)


@dataclass(frozen=True)
class _Call:
    """One policy request: the observation's capture stamps, when it was sent, when its reply came back."""

    capture_ns: dict[str, int]
    sent_ns: int
    replied_ns: int
    chunk: bool  # the reply was a chunk of actions (not a failure or 'done')


class _PolicyProbe:
    """A policy whose requests are time-stamped; `infer` runs on the runner's worker thread, so its entry is when
    the request leaves the loop."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.calls: list[_Call] = []

    def reset(self, instruction: str) -> PolicyFailure | None:
        return self.policy.reset(instruction)

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        sent = time.monotonic_ns()
        reply = self.policy.infer(observation)
        chunk = isinstance(reply, PolicyChunk) and not reply.done
        self.calls.append(_Call(dict(observation.capture_ns), sent, time.monotonic_ns(), chunk))
        return reply

    def close(self) -> None:
        self.policy.close()


# ------------------------------------------------------------------------------------------------ the rig


@dataclass
class _Rig:
    """One sim workcell with its connected arm, gripper and cameras, shared by every phase."""

    cell: Any  # robot.sim.workcell.SimWorkcell
    arm: Any
    gripper: Any
    cameras: dict[str, Any]
    safety: SafetyConfig
    task: str
    rate_hz: float = 15.0
    chunk_length: int = 3


@contextlib.contextmanager
def _rig(task: str, camera_size: tuple[int, int] | None) -> Iterator[_Rig]:
    """The workcell `dv-robot run TASK --sim` opens (`open_workcell`): default cameras without depth (or
    `camera_size` (h, w)), the sim's frame-age limits, franky with realtime off."""
    from robot.workcell import open_workcell, plan_workcell

    plan = plan_workcell(task, sim=True, seed=0)
    if camera_size is not None:
        size = {"height": camera_size[0], "width": camera_size[1]}
        plan = dataclasses.replace(plan, cameras=tuple(c.model_copy(update=size) for c in plan.cameras))
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        yield _Rig(cell.sim, cell.arm, cell.gripper, cell.cameras, plan.safety, task)


def _scripted_policy(rig: _Rig) -> ScriptedPolicy:
    """The sim's expert as `dv-robot --policy scripted` runs it (kept under the envelope's caps)."""
    from robot.sim.experts import scripted_policy

    return scripted_policy(rig.cell, RunnerConfig(rate_hz=rig.rate_hz, chunk_length=rig.chunk_length), rig.safety)


@dataclass
class _Episode:
    """One episode's summary and what the probes saw."""

    summary: RunSummary
    arm: _ArmProbe
    policy: _PolicyProbe


def _episode(rig: _Rig, policy: Policy, mode: Mode, seconds: float, estop: Any = None,
             during: Callable[[_ArmProbe], None] | None = None) -> _Episode:
    """One episode on layout seed 0 through an unchanged `Runner`; `during(arm)` runs beside it (e-stop trials)."""
    arm, probe = _ArmProbe(rig.arm), _PolicyProbe(policy)
    config = RunnerConfig(rate_hz=rig.rate_hz, chunk_length=rig.chunk_length, mode=mode, max_episode_s=seconds)
    runner = Runner(config, rig.safety, arm=arm, gripper=rig.gripper, cameras=rig.cameras, policy=probe,
                    scene=SimScene(rig.cell, arm, rig.gripper, first_seed=0), task=rig.task,
                    policy_name=type(policy).__name__, estop=estop)
    side = threading.Thread(target=during, args=(arm,), daemon=True) if during else None
    try:
        if side is not None:
            side.start()
        summary = runner.run(1)
    finally:
        runner.close()  # also closes the policy
        if side is not None:
            side.join(10.0)
    return _Episode(summary, arm, probe)


# ------------------------------------------------------------------------------------------------ phase 1: served


def _tick_jitter(ep: _Episode, dt_s: float) -> dict[str, Any]:
    """Loop periods from the per-tick state reads (the first read precedes the loop, so its gap is dropped)."""
    periods = np.diff(ep.arm.reads[1:]) / 1e6
    return {"period_ms": _stats(periods), "abs_error_ms": _stats(np.abs(periods - dt_s * 1e3)),
            "overruns": ep.summary.totals()["interventions"].get("overrun", 0)}


def _first_move_after(moves: list[tuple[int, np.ndarray]], t_ns: int) -> int | None:
    times = [t for t, _ in moves]
    i = int(np.searchsorted(times, t_ns))
    return times[i] if i < len(times) else None


def _stages(ep: _Episode) -> dict[str, dict[str, float]]:
    """obs→action split into capture → send → reply → first action commanded, plus the server's own stages and
    the runner's end-to-end `obs_to_action` (its t_obs is the state read, as here)."""
    capture_to_send, round_trip, reply_to_action, total = [], [], [], []
    for call in (c for c in ep.policy.calls if c.chunk):
        acted = _first_move_after(ep.arm.moves, call.replied_ns)
        capture_to_send.append(_ms(call.sent_ns - call.capture_ns["state"]))
        round_trip.append(_ms(call.replied_ns - call.sent_ns))
        if acted is not None:
            reply_to_action.append(_ms(acted - call.replied_ns))
            total.append(_ms(acted - call.capture_ns["state"]))
    out = {"1 capture→send": _stats(capture_to_send), "2 send→reply (round trip)": _stats(round_trip),
           "3 reply→first action": _stats(reply_to_action), "capture→first action": _stats(total)}
    for stage, s in ep.summary.latency_ms.items():
        if stage.startswith("server_") or stage in ("infer", "obs_to_action"):
            out[f"{'  ' if stage.startswith('server_') else 'runner '}{stage}"] = s
    return out


def _obs_age(ep: _Episode) -> dict[str, dict[str, float]]:
    """Age of each stream (state, each camera) when its request left the loop."""
    streams = sorted({s for c in ep.policy.calls for s in c.capture_ns})
    return {s: _stats([_ms(c.sent_ns - c.capture_ns[s]) for c in ep.policy.calls]) for s in streams}


@contextlib.contextmanager
def _served_policy(rig: _Rig, endpoint: str | None, ckpt: Path) -> Iterator[RemotePolicy]:
    """A `RemotePolicy` on `endpoint`, or on a `dv-serve` started on `ckpt` as `dv-robot --sim` starts it."""
    from robot.server_access import local_server

    with contextlib.ExitStack() as stack:
        if endpoint is None:
            endpoint = stack.enter_context(local_server(ckpt, Path("runs/robot/dv-bench-serve.log")))
        sizes = {n: (c.config.height, c.config.width) for n, c in rig.cameras.items()}
        contract = robot_contract(sizes, rig.rate_hz, rig.chunk_length)
        yield RemotePolicy(endpoint, contract, deadline_s=rig.safety.deadline_s(rig.chunk_length, rig.rate_hz),
                           client_id="dv-bench")


def _served_phase(rig: _Rig, seconds: float, endpoint: str | None, ckpt: Path) -> dict[str, Any]:
    with _served_policy(rig, endpoint, ckpt) as policy:
        ep = _episode(rig, policy, "chunk", seconds)
    return {"outcome": ep.summary.episodes[0].outcome, "requests": len(ep.policy.calls),
            "tick": _tick_jitter(ep, 1.0 / rig.rate_hz), "obs_age_at_send_ms": _obs_age(ep),
            "latency_ms": _stages(ep)}


# ------------------------------------------------------------------------------------------------ phase 2: modes


def _velocity_jumps(ep: _Episode, dt_s: float) -> dict[str, dict[str, float]]:
    """|v(n) − v(n−1)| of the commanded TCP velocity v(n) = (p(n) − p(n−1)) / dt, over three consecutive ticks;
    a boundary is the first command after a new reply arrived (every tick in receding/ensemble mode)."""
    times = np.array([t for t, _ in ep.arm.moves])
    pos = np.array([p for _, p in ep.arm.moves])
    replies = np.array(sorted(c.replied_ns for c in ep.policy.calls if c.chunk))
    boundary, within = [], []
    for n in range(2, len(times)):
        if np.any(np.abs(np.diff(times[n - 2:n + 1]) / 1e9 - dt_s) > dt_s / 2):
            continue  # a skipped tick or a hold: not consecutive commands
        jump = float(np.linalg.norm((pos[n] - 2 * pos[n - 1] + pos[n - 2]) / dt_s))
        new_reply = np.any((replies > times[n - 1]) & (replies <= times[n]))
        (boundary if new_reply else within).append(jump)
    return {"boundary": _stats(boundary), "within": _stats(within)}


def _modes_phase(rig: _Rig, seconds: float) -> dict[str, Any]:
    per_mode = {}
    for mode in MODES:
        ep = _episode(rig, _scripted_policy(rig), mode, seconds)
        per_mode[mode] = {"outcome": ep.summary.episodes[0].outcome, "steps": ep.summary.episodes[0].steps,
                          "jump_mps": _velocity_jumps(ep, 1.0 / rig.rate_hz)}
    return {"policy": "ScriptedPolicy (sim expert)", "modes": per_mode, "ratios": _mode_ratios(per_mode)}


def _mode_ratios(per_mode: dict[str, Any]) -> dict[str, dict[str, float]]:
    """chunk's boundary jump over each other mode's (p50, p95, max): how much smoother replanning makes it."""
    base = per_mode["chunk"]["jump_mps"]["boundary"]
    out = {}
    for mode in MODES[1:]:
        other = per_mode[mode]["jump_mps"]["boundary"]
        out[f"chunk / {mode}"] = {k: base[k] / other[k] for k in ("p50", "p95", "max")
                                  if min(base.get(k, 0), other.get(k, 0)) >= JUMP_RESOLUTION_MPS}
    return out


# ------------------------------------------------------------------------------------------------ phase 3: e-stop


class TcpSampler:
    """The measured TCP position at ~200 Hz on its own thread (the arm allows one reader besides the loop); the
    benchmark and the loop tests watch the arm through it."""

    def __init__(self, arm: Any) -> None:
        self.arm, self.samples = arm, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._done.wait(0.005):
            s = self.arm.read_state()
            self.samples.append((s.capture_ns, s.position.copy()))

    def rest_after(self, t_ns: int) -> float | None:
        """Seconds from `t_ns` until the TCP stays within REST_TOLERANCE_M of where it ends (the last sample);
        position, not the measured twist, which keeps a few cm/s of noise in the sim at standstill."""
        after = [(t, p) for t, p in self.samples if t >= t_ns]
        if len(after) < 2:
            return None
        times, pos = np.array([t for t, _ in after]), np.array([p for _, p in after])
        moving = np.flatnonzero(np.linalg.norm(pos - pos[-1], axis=1) > REST_TOLERANCE_M)
        return 0.0 if moving.size == 0 else (times[moving[-1] + 1] - t_ns) / 1e9

    def travel_after(self, t_ns: int) -> float | None:
        """Metres the TCP got from where it was at `t_ns` afterwards (the overtravel of a stop)."""
        pos = np.array([p for t, p in self.samples if t >= t_ns])
        return None if len(pos) == 0 else float(np.max(np.linalg.norm(pos - pos[0], axis=1)))


@dataclass
class _Trial:
    """One STOP: times from the console's `stop()` call (ms), the overtravel (mm), the episode's outcome."""

    sent_ns: int = 0
    detected_ms: float | None = None
    issued_ms: float | None = None
    rest_ms: float | None = None
    travel_mm: float | None = None
    outcome: str = ""


def _estop_trial(rig: _Rig, seconds: float) -> _Trial:
    """STOP from a console's `HeartbeatSender` once the arm is moving; the runner checks its listener every tick."""
    from robot.estop import EStopListener
    from robot.estop.heartbeat import HeartbeatSender

    trial = _Trial()
    with EStopListener("tcp://127.0.0.1:*", required=True) as listener, \
            HeartbeatSender(listener.endpoint) as sender, TcpSampler(rig.arm) as sampler:

        def press_when_moving(arm: _ArmProbe) -> None:
            deadline = time.monotonic() + seconds
            while len(arm.moves) < ESTOP_AFTER_MOVES and time.monotonic() < deadline:
                time.sleep(0.005)
            trial.sent_ns = time.monotonic_ns()
            sender.stop()

        ep = _episode(rig, _scripted_policy(rig), "chunk", seconds, estop=listener, during=press_when_moving)
        time.sleep(REST_WATCH_S)
        issued = next((t for t in ep.arm.stops if t >= trial.sent_ns), None)
        trial.outcome = ep.summary.episodes[0].outcome if ep.summary.episodes else ep.summary.stopped
        if issued is not None:
            trial.issued_ms = _ms(issued - trial.sent_ns)
            rest, travel = sampler.rest_after(issued), sampler.travel_after(issued)
            trial.rest_ms = None if rest is None else rest * 1e3
            trial.travel_mm = None if travel is None else travel * 1e3
        if listener.state.detected_ns:
            trial.detected_ms = _ms(listener.state.detected_ns - trial.sent_ns)
    return trial


def _estop_phase(rig: _Rig, trials: int, seconds: float) -> dict[str, Any]:
    results = [_estop_trial(rig, seconds) for _ in range(trials)]

    def stats(name: str) -> dict[str, float]:
        return _stats([v for t in results if (v := getattr(t, name)) is not None], (50,))

    return {"trials": trials, "outcomes": [t.outcome for t in results],
            "per_trial": [{k: v for k, v in asdict(t).items() if k != "sent_ns"} for t in results],
            "travel_after_stop_mm": stats("travel_mm"),
            "ms": {"STOP sent → latched by listener": stats("detected_ms"),
                   "STOP sent → stop issued to arm": stats("issued_ms"), "stop issued → at rest": stats("rest_ms")}}


# ------------------------------------------------------------------------------------------------ phase 4: soak


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssProbe:
    """A step sink that notes, at the end of every episode (the loop's own hook, after the arm is at rest), the
    process's RSS and the Python allocator's live blocks: RSS growth with flat blocks is native memory (renderer,
    allocator arenas), not Python objects piling up. Samples: (seconds since the soak began, MiB, blocks)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float, int]] = []
        self.ticks = 0

    def begin(self, episode: int, instruction: str) -> None:
        pass

    def record(self, tick: Any) -> None:
        self.ticks += 1

    def end(self, record: Any) -> None:
        self.samples.append((time.monotonic() - self.t0, rss_mb(), sys.getallocatedblocks()))


def _per_hour(times: Sequence[float], values: Sequence[float]) -> float | None:
    """The least-squares slope of `values` over `times` (seconds), per hour; None with too few points."""
    if len(times) < 3 or times[-1] <= times[0]:
        return None
    return float(np.polyfit(times, values, 1)[0] * 3600)


def rss_report(start_mb: float, samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    """Start (before the first episode), after the first episode (warmed up), end and peak in MiB, and the growth per
    hour of RSS and of live Python blocks from least-squares lines through the samples after the first episode."""
    mb = [m for _, m, _ in samples]
    later = samples[1:]
    times = [t for t, _, _ in later]
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"start_mb": start_mb, "after_first_episode_mb": mb[0] if mb else None, "end_mb": mb[-1] if mb else None,
            "peak_mb": max([start_mb, *mb]), "process_peak_mb": process_peak_mb,
            "samples": len(samples), "growth_mb_per_h": _per_hour(times, [m for _, m, _ in later]),
            "python_blocks_after_first_episode": samples[0][2] if samples else None,
            "python_blocks_end": samples[-1][2] if samples else None,
            "python_blocks_growth_per_h": _per_hour(times, [b for _, _, b in later])}


def _soak_phase(rig: _Rig, soak_s: float, episode_s: float) -> dict[str, Any]:
    """The scripted expert's episodes back to back on one unchanged `Runner` (its run-level statistics accumulate
    across them) until `soak_s` has passed; RSS at every episode's end."""
    probe = RssProbe()
    config = RunnerConfig(rate_hz=rig.rate_hz, chunk_length=rig.chunk_length, mode="chunk", max_episode_s=episode_s)
    runner = Runner(config, rig.safety, arm=rig.arm, gripper=rig.gripper, cameras=rig.cameras,
                    policy=_scripted_policy(rig), scene=SimScene(rig.cell, rig.arm, rig.gripper, first_seed=0),
                    task=rig.task, policy_name="ScriptedPolicy", steps=probe)
    start_mb, outcomes, latency_n = rss_mb(), [], 0
    try:
        while time.monotonic() - probe.t0 < soak_s:
            summary = runner.run(1)
            outcomes += [e.outcome for e in summary.episodes]
            latency_n = max((s["n"] for s in summary.latency_ms.values()), default=0)
            if summary.stopped or not summary.episodes:
                break
    finally:
        runner.close()
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    return {"seconds": time.monotonic() - probe.t0, "episodes": len(outcomes), "ticks": probe.ticks,
            "outcomes": counts, "run_latency_values_per_stage": latency_n, "rss": rss_report(start_mb, probe.samples)}


# ------------------------------------------------------------------------------------------------ the bench


def run_robot_bench(task: str = "pick_bottle", seconds: float = 20.0, estop_trials: int = 3,
                    endpoint: str | None = None, ckpt: Path | None = None,
                    camera_size: tuple[int, int] | None = None, phases: Sequence[str] = DEFAULT_PHASES,
                    soak_s: float = 300.0) -> dict[str, Any]:
    """The chosen phases in one run on one workcell (soak last); returns the JSON-able results (ratios included)."""
    from robot.server_access import DEFAULT_CKPT

    start = time.monotonic()
    out: dict[str, Any] = {}
    with _rig(task, camera_size) as rig:
        if "served" in phases:
            out["served"] = _served_phase(rig, seconds, endpoint, ckpt or DEFAULT_CKPT)
        if "modes" in phases:
            out["velocity_jump"] = _modes_phase(rig, seconds)
        if "estop" in phases:
            out["estop"] = _estop_phase(rig, estop_trials, min(seconds, 5.0))
        if "soak" in phases:
            out["soak"] = _soak_phase(rig, soak_s, seconds)
        cameras = {n: f"{c.config.width}x{c.config.height}" for n, c in rig.cameras.items()}
    return {"task": task, "rate_hz": rig.rate_hz, "chunk_length": rig.chunk_length, "episode_s": seconds,
            "cameras": cameras, "server": endpoint or f"local dv-serve on {ckpt or DEFAULT_CKPT}", **out,
            "wall_s": time.monotonic() - start}


# ------------------------------------------------------------------------------------------------ tables


def _table(title: str, first: str, keys: Sequence[str], rows: dict[str, dict[str, float]],
           fmt: str = "{:.1f}") -> Table:
    """One row per entry of `rows`, the columns `keys` (and n, where the rows count samples)."""
    counted = any("n" in s for s in rows.values())
    table = Table(title=title)
    table.add_column(first)
    for k in (*keys, "n") if counted else keys:
        table.add_column(k, justify="right")
    for name, s in rows.items():
        cells = [fmt.format(s[k]) if k in s else "-" for k in keys]
        table.add_row(name, *cells, *([str(s.get("n", 0))] if counted else []))
    return table


def print_tables(result: dict[str, Any], console: Console) -> None:
    console.print(f"[b]dv-bench robot[/b]: {result['task']} in the sim workcell (franky → franky-sim), "
                  f"{result['rate_hz']:g} Hz, chunks of {result['chunk_length']}, cameras {result['cameras']}, "
                  f"{result['episode_s']:g} s episodes; {result['wall_s']:.0f} s in all")
    if "served" in result:
        _print_served(result, console)
    if "estop" in result:
        _print_estop(result["estop"], console)
    if "velocity_jump" in result:
        _print_jumps(result["velocity_jump"], console)
    if "soak" in result:
        _print_soak(result["soak"], console)
    outcomes = {"served": result["served"]["outcome"]} if "served" in result else {}
    outcomes |= {m: v["outcome"] for m, v in result.get("velocity_jump", {}).get("modes", {}).items()}
    if "estop" in result:
        outcomes["e-stop"] = ", ".join(result["estop"]["outcomes"])
    if outcomes:
        console.print("episode outcomes: " + "; ".join(f"{k}: {v}" for k, v in outcomes.items()))


def _print_served(result: dict[str, Any], console: Console) -> None:
    served = result["served"]
    tick, dt_ms = served["tick"], 1e3 / result["rate_hz"]
    console.print(_table(f"tick period at {result['rate_hz']:g} Hz (served run, {tick['overruns']} overruns) [ms]",
                         "", ("p50", "p99", "max"),
                         {"period": tick["period_ms"], f"|period − {dt_ms:.1f}|": tick["abs_error_ms"]}))
    console.print(_table("observation age at send, per stream [ms]", "stream", ("p50", "p95", "max"),
                         served["obs_age_at_send_ms"]))
    console.print(_table(f"obs→action per stage, {result['server']}, chunk mode [ms]", "stage",
                         ("p50", "p95", "max"), served["latency_ms"]))


def _print_estop(estop: dict[str, Any], console: Console) -> None:
    console.print(_table(f"e-stop: STOP from a HeartbeatSender mid-motion, {estop['trials']} trials [ms]", "",
                         ("p50", "max"), estop["ms"]))
    travel = estop["travel_after_stop_mm"]
    console.print(f"overtravel after the stop was issued: p50 {travel.get('p50', float('nan')):.1f} mm, "
                  f"max {travel.get('max', float('nan')):.1f} mm; per trial (issued, at rest ms): "
                  + ", ".join(f"({t['issued_ms'] or float('nan'):.1f}, {t['rest_ms'] or float('nan'):.0f})"
                              for t in estop["per_trial"]))


def _print_jumps(jumps: dict[str, Any], console: Console) -> None:
    rows = {f"{m} {where}": v["jump_mps"][where] for m, v in jumps["modes"].items() for where in ("boundary", "within")}
    console.print(_table(f"commanded-velocity jump |Δv| at chunk boundaries, {jumps['policy']} [m/s]", "mode",
                         ("p50", "p95", "max"), rows, fmt="{:.4f}"))
    console.print(_table(f"boundary-jump ratios (same run; '-' where a jump is below {JUMP_RESOLUTION_MPS} m/s)", "",
                         ("p50", "p95", "max"), jumps["ratios"], fmt="{:.2f}x"))


def _print_soak(soak: dict[str, Any], console: Console) -> None:
    rss = soak["rss"]
    rows = {k.removesuffix("_mb").replace("_", " "): {"MiB": v} for k, v in rss.items()
            if k.endswith("_mb") and v is not None}
    console.print(f"soak: {soak['seconds'] / 60:.1f} min of back-to-back episodes ({soak['episodes']} episodes, "
                  f"{soak['ticks']} ticks); the run's latency statistics cover {soak['run_latency_values_per_stage']} "
                  f"values per stage and keep at most {RESERVOIR_SIZE}")
    console.print(_table("RSS at episode ends [MiB]", "", ("MiB",), rows))
    growth, blocks = rss["growth_mb_per_h"], rss["python_blocks_growth_per_h"]
    console.print(f"growth after the first episode ({rss['samples']} samples): RSS "
                  f"{'n/a' if growth is None else f'{growth:+.1f} MiB/h'}, live Python blocks "
                  f"{'n/a' if blocks is None else f'{blocks:+.0f}/h'} ({rss['python_blocks_after_first_episode']} → "
                  f"{rss['python_blocks_end']}); outcomes {soak['outcomes']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="pick_bottle", help="sim task")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured episode")
    parser.add_argument("--estop-trials", type=int, default=3, help="STOP trials")
    parser.add_argument("--server", help="dv-serve endpoint (default: start one on --ckpt, as dv-robot --sim does)")
    parser.add_argument("--ckpt", type=Path, help="checkpoint for the local dv-serve (default: dv-robot's)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    parser.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                        help=f"comma-separated, of {','.join(PHASES)} (default %(default)s; soak runs last)")
    parser.add_argument("--soak-s", type=float, default=300.0, help="soak: how long to run episodes back to back")


def command(args: argparse.Namespace) -> int:
    """`dv-bench robot`: with --json, anything the phases print (the server's start) goes to stderr."""
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if args.seconds <= 0 or args.estop_trials < 1 or args.soak_s <= 0:
        raise ValueError("--seconds and --soak-s must be > 0 and --estop-trials >= 1")
    if not phases or not set(phases) <= set(PHASES):
        raise ValueError(f"--phases must name some of {', '.join(PHASES)}, got {args.phases!r}")
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        result = run_robot_bench(args.task, args.seconds, args.estop_trials, args.server, args.ckpt,
                                 phases=phases, soak_s=args.soak_s)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result, Console())
    return 0
