"""The learning loop end to end, through the commands a user runs and nothing mocked: a 4-episode scripted sim
recording -> dv-features -> dv-train (the loss falls; a stopped run resumes to the same weights) -> dv-eval, which
serves the checkpoint with dv-serve and runs a closed-loop episode through the Runner, franky and franky-sim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = os.environ | {"MUJOCO_GL": "egl", "COLUMNS": "200"}
TRAIN = ["--config", "tiny", "--steps", "30", "--batch", "4", "--threads", "1", "--lr", "1e-3", "--save-every",
         "15", "--val-every", "0", "--log-every", "1", "--no-progress", "--seed", "3"]


def run(*cmd: str | Path, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    root = tmp / "pick_bottle"
    out = ok(run(BIN / "dv-teleop", "record", "--sim", "--launch", "sim_train", "--task", "pick_bottle", "--device",
                 "scripted", "--episodes", "4", "--keep", "all", "--seed", "0", "--root", root, cwd=tmp))
    # --keep all keeps every episode that was not aborted; the expert's own reliability is test_sim_workcell's
    # business (a starved machine can abort one), this test needs a dataset of a few real episodes
    assert any(f"{k} of 4 episodes kept" in out for k in (3, 4)), out[-2000:]
    ok(run(BIN / "dv-features", root, "--config", "tiny", cwd=tmp))
    return root


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/action"] for r in rows if r.get("split") == "train" and "loss/action" in r]


def test_record_features_train_resume_serve_and_evaluate(recorded: Path) -> None:
    work = recorded.parent
    ok(run(BIN / "dv-train", "--data", recorded, "--out", work / "straight", *TRAIN, "--eval-every", "30",
           "--eval-seeds", "5000", "--eval-max-episode-s", "3", cwd=work))
    ok(run(BIN / "dv-train", "--data", recorded, "--out", work / "stopped", *TRAIN, "--stop-at", "15", cwd=work))
    assert (work / "stopped" / "checkpoints" / "latest").read_text().strip() == "step_0000015"
    ok(run(BIN / "dv-train", "--data", recorded, "--out", work / "stopped", *TRAIN, "--resume", cwd=work))

    # the loss falls over the run (first five steps against the last five)
    losses = train_losses(work / "straight")
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    # stopped at 15 and resumed: the same weights as the run that never stopped (content hash of the safetensors)
    metas = [json.loads((work / r / "checkpoints" / "step_0000030" / "config.json").read_text())
             for r in ("straight", "stopped")]
    assert metas[0]["content_hash"] == metas[1]["content_hash"]
    ckpt = work / "straight" / "checkpoints" / "step_0000030"
    seeds = json.loads((ckpt / "trained_on.json").read_text())["datasets"][0]["seeds"]
    assert len(seeds) >= 3 and set(seeds) <= {0, 1, 2, 3}
    # dv-train's periodic closed-loop evaluation: dv-eval on the step-30 checkpoint, on an unseen seed, through
    # dv-serve, the Runner and franky-sim; its rate logged, its summary and episode video written
    rows = [json.loads(line) for line in (work / "straight" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [30] and 0.0 <= evals[0]["success_rate"] <= 1.0, evals
    out = work / "straight" / "eval" / "step_0000030"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"][0]["episodes"] == 1 and summary["seeds"] == [5000, 5000]
    assert Path(summary["checkpoint"]).resolve() == ckpt.resolve()
    low, high = summary["overall"]["wilson95"]
    assert low <= summary["overall"]["success_rate"] == evals[0]["success_rate"] <= high
    episode = summary["runs"][0]["episodes"][0]
    assert episode["steps"] > 0, episode  # the served policy's chunks were executed
    videos = list((out / "videos").glob("pick_bottle-episode*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000

    # a training seed is refused before anything starts
    refused = run(BIN / "dv-eval", ckpt, "--task", "pick_bottle", "--seeds", "0-5", cwd=work)
    assert refused.returncode == 2
    named = ", ".join(map(str, sorted(seeds)))
    assert f"seeds {named} were used to record training demos" in refused.stdout, refused.stdout

    # what the trained checkpoint dreams, from the recorded dataset's feature cache
    dreamt = run(BIN / "dv-model", "dream", ckpt, "--dataset", recorded, "--episode", "0", "--frames", "0", "5",
                 "--out", work / "dreams", cwd=work)
    ok(dreamt)
    pictures = sorted((work / "dreams").glob("dream_ep000_frame*.png"))
    assert [p.name for p in pictures] == ["dream_ep000_frame000.png", "dream_ep000_frame005.png"], dreamt.stdout
