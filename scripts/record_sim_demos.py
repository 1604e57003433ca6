"""Record the sim training demonstrations: N kept scripted episodes per task, resumable across sessions.

Why a driver and not one `dv-teleop record --episodes N`: recording is real time (~10 s an episode), so 600
episodes span sessions, and a killed run must continue where it stopped without recording a seed twice. The
driver reads what each dataset already holds (the seeds in its session files), and records the rest through the
real `dv-teleop record --device scripted`, starting one seed above the highest seed already recorded. A seed that
the expert failed is skipped rather than retried (after a kill, the failed seeds above the highest kept one get one
more try). It goes round the tasks in rounds, so that an interrupted run leaves every task with about as many
episodes. Training seeds stay below 1000;
evaluation uses seeds from 5000 up.

    python scripts/record_sim_demos.py --root ~/.cache/dreamvla/datasets/sim --per-task 100
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from robot.evaluation.seeds import TRAIN_SEED_LIMIT, dataset_seeds
from robot.tasks import TASKS


def record_task(task: str, dataset: Path, per_task: int, launch: Path) -> int:
    """Records until `dataset` holds `per_task` kept episodes; returns the number it holds."""
    seeds = dataset_seeds(dataset) if dataset.exists() else set()
    start = max(seeds, default=-1) + 1
    while len(seeds) < per_task:
        count = per_task - len(seeds)
        if start + count > TRAIN_SEED_LIMIT:
            raise SystemExit(f"{task}: seeds {start}..{start + count - 1} would reach {TRAIN_SEED_LIMIT}, the end of "
                             "the training seeds; the expert fails too often on this task")
        dv_teleop = shutil.which("dv-teleop") or str(Path(sys.executable).with_name("dv-teleop"))
        cmd = [dv_teleop, "record", "--sim", "--launch", str(launch), "--task", task, "--device", "scripted",
               "--keep", "success", "--seed", str(start), "--episodes", str(count), "--root", str(dataset)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        seeds = dataset_seeds(dataset) if dataset.exists() else set()
        start += count  # past every seed tried: one the expert failed stays failed (it once retried 53-54 forever)
    return len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache/dreamvla/datasets/sim")
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--launch", type=Path, default=Path("launch/sim_train.yaml"))
    parser.add_argument("--round", type=int, default=20, help="episodes per task per round (tasks stay balanced)")
    args = parser.parse_args()
    for target in [*range(args.round, args.per_task, args.round), args.per_task]:
        for task in args.tasks:
            held = record_task(task, args.root.expanduser() / task, target, args.launch)
            print(f"{task}: {held} episodes in {args.root / task}", flush=True)


if __name__ == "__main__":
    main()
