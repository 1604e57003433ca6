"""Evaluation seeds never overlap the seeds the training demonstrations were recorded on: a policy scored on a
layout it was trained on measures memory, not skill."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

TRAIN_SEED_LIMIT = 1000  # training demos are recorded on sim seeds below this (scripts/record_sim_demos.py)
EVAL_SEED_START = 5000  # evaluation seeds start here (docs/recording.md)


class SeedOverlap(ValueError):
    """Evaluation seeds that a training demonstration was recorded on."""


def parse_seed_range(text: str) -> range:
    """'5000-5019' (inclusive) or '5000' -> a range; refuses anything else with the expected form."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected A-B (inclusive) or A, e.g. 5000-5019") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"--seeds {text!r}: expected 0 <= A <= B")
    return range(lo, hi + 1)


def dataset_seeds(dataset: Path) -> set[int]:
    """The sim seeds of every episode a dataset's sessions kept (`meta/dv_sessions/*.json`)."""
    sessions = sorted((dataset / "meta" / "dv_sessions").glob("*.json"))
    if not (dataset / "meta").is_dir():
        raise FileNotFoundError(f"{dataset}: not a dataset (no meta/ directory)")
    seeds: set[int] = set()
    for session in sessions:
        for episode in json.loads(session.read_text())["episodes"].values():
            if episode.get("seed") is not None:
                seeds.add(int(episode["seed"]))
    return seeds


def check_no_overlap(eval_seeds: Iterable[int], training_seeds: Iterable[int], source: str) -> None:
    """Raises SeedOverlap naming the first overlapping seeds and where the training seeds came from."""
    overlap = sorted(set(eval_seeds) & set(training_seeds))
    if overlap:
        shown = ", ".join(map(str, overlap[:8])) + (" ..." if len(overlap) > 8 else "")
        raise SeedOverlap(f"evaluation seeds {shown} were used to record training demos ({source}); evaluate on "
                          f"seeds from {EVAL_SEED_START} up")
