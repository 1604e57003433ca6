"""The pieces of dv-eval that need no robot: the interval, the seed guard, the episode video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from robot.evaluation.episode_video import EpisodeVideo
from robot.evaluation.seeds import SeedOverlap, check_no_overlap, dataset_seeds, parse_seed_range
from robot.evaluation.wilson import wilson_interval
from robot.runner import EpisodeRecord


def test_wilson_interval_matches_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 81 of 263 -> 0.2553..0.3662; 0 of 20 -> 0..0.1611; 20 of 20 -> 0.8389..1
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-4)
    assert wilson_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=5e-4)


@pytest.mark.parametrize("k,n", [(1, 0), (-1, 5), (6, 5)])
def test_wilson_interval_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_seed_ranges_parse_inclusively_and_refuse_junk() -> None:
    assert parse_seed_range("5000-5019") == range(5000, 5020)
    assert parse_seed_range("7") == range(7, 8)
    for bad in ("5000:5019", "b-c", "9-3", "1-2-3"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seed_range(bad)


def _dataset_with_seeds(root: Path, seeds: list[int]) -> Path:
    sessions = root / "meta" / "dv_sessions"
    sessions.mkdir(parents=True)
    episodes = {str(i): {"seed": s, "outcome": "success"} for i, s in enumerate(seeds)}
    (sessions / "a.json").write_text(json.dumps({"episodes": episodes}))
    return root


def test_an_evaluation_on_a_training_seed_is_refused(tmp_path: Path) -> None:
    seeds = dataset_seeds(_dataset_with_seeds(tmp_path / "ds", [0, 1, 2, 5003]))
    assert seeds == {0, 1, 2, 5003}
    check_no_overlap(range(5000, 5003), seeds, "ds")  # disjoint: fine
    with pytest.raises(SeedOverlap, match="5003.*ds"):
        check_no_overlap(range(5000, 5020), seeds, "ds")


def test_a_directory_that_is_no_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        dataset_seeds(tmp_path)


class _Frame:
    def __init__(self, color: np.ndarray) -> None:
        self.color = color


class _Tick:
    def __init__(self, tick: int, color: np.ndarray) -> None:
        self.tick, self.frames = tick, {"static": _Frame(color)}


def test_the_episode_video_holds_every_frame_and_names_the_outcome(tmp_path: Path) -> None:
    video = EpisodeVideo(tmp_path, "static", fps=15, task="pick_bottle")
    video.begin(0, "pick up the bottle")
    for t in range(12):
        video.record(_Tick(t, np.full((96, 128, 3), 20 * t, np.uint8)))  # type: ignore[arg-type]
    record = EpisodeRecord(index=0, task="pick_bottle", instruction="pick up the bottle", outcome="success",
                           success=True, steps=12, ticks=12, duration_s=0.8, interventions={}, latency_ms={})
    video.end(record)
    path = video.paths[0]
    assert path.name == "pick_bottle-episode000-success.mp4"
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    assert len(frames) == 12 and frames[0].shape == (96, 128, 3)
    # the caption band is drawn (dark background, bright text) and the picture below it is the recorded one
    assert frames[11][60:, :, :].mean() == pytest.approx(220, abs=6)
    assert frames[11][:8].mean() < 120
