"""dv-train's loop on small fake caches: the loss falls, a stopped run resumes bit for bit, checkpoints carry the
normalisation that serving reports, the run writes its metrics and loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fakes import fake_caches

from policy_server.model.checkpoint import default_normalization, read_meta
from policy_server.model.config import preset
from policy_server.training.state import STATE_FILE, ResumeError, latest_checkpoint
from policy_server.training.train import TrainOptions, train

CFG = preset("tiny")
FAST = dict(batch=2, threads=1, progress=False, tensorboard=False, lr=1e-3, grad_clip=1.0, log_every=1,
            val_every=0, seed=0)


def options(**kw) -> TrainOptions:
    return TrainOptions(**(FAST | kw))


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """30 steps with decoders and validation: shared by the checks on what a run leaves behind."""
    run = tmp_path_factory.mktemp("train") / "run"
    result = train(fake_caches(CFG), CFG, run, options(steps=30, val_every=15, save_every=15, val_windows=8))
    return run, result


def rows(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_loss_falls_on_a_small_cache(trained):
    run, result = trained
    train_rows = rows(run, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    first = sum(r["loss/total"] for r in train_rows[:5]) / 5
    last = sum(r["loss/total"] for r in train_rows[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert {"loss/action", "loss/dynamic", "loss/depth", "lr", "steps_per_s", "data_share"} <= set(train_rows[-1])
    val = rows(run, "val")
    assert [r["step"] for r in val] == [15, 30] and val[1]["loss/total"] < val[0]["loss/total"] * 1.5
    assert result.step == 30 and result.plot == run / "losses.png" and result.plot.stat().st_size > 1000


def test_checkpoint_carries_the_normalisation_and_serving_reports_it(trained):
    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    run, result = trained
    ckpt = latest_checkpoint(run)
    assert ckpt == result.checkpoint == run / "checkpoints" / "step_0000030"
    meta = read_meta(ckpt)
    scale = [0.02] * 3 + [0.05] * 3 + [1.0]
    assert meta.normalization.action_scale == scale == default_normalization(CFG).action_scale
    backend = EngineBackend(PolicyEngine.from_checkpoint(ckpt))
    assert backend.identity()[2] == meta.normalization.digest()  # hello_ack's normalization_hash
    want = [[-100 * s, 100 * s] for s in scale]  # robot units: the model's range times the scale
    assert backend.contract().action_range == [pytest.approx(r, rel=1e-6) for r in want]
    state = torch.load(ckpt / STATE_FILE, weights_only=True)
    assert state["step"] == 30 and {"optimizer", "scheduler", "rng", "data"} <= set(state)


def test_a_stopped_run_resumes_bit_for_bit(tmp_path):
    """Stop at step 3 of 6, resume: the same parameters (torch.equal) as one uninterrupted run, with gradient
    accumulation and EMA on (the served weights are the EMA's, the raw ones travel in the training state)."""
    kw = dict(steps=6, accum=2, ema=0.9, save_every=100, augment=True)
    whole = train(fake_caches(CFG), CFG, tmp_path / "whole", options(**kw))
    train(fake_caches(CFG), CFG, tmp_path / "split", options(stop_at=3, **kw))
    assert latest_checkpoint(tmp_path / "split").name == "step_0000003"
    resumed = train(fake_caches(CFG), CFG, tmp_path / "split", options(**kw), resume=True)
    assert resumed.step == 6
    a, b = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw_a = torch.load(whole.checkpoint / STATE_FILE, weights_only=True)["model"]
    raw_b = torch.load(resumed.checkpoint / STATE_FILE, weights_only=True)["model"]
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert not all(torch.equal(a[k], raw_a[k]) for k in a)  # EMA weights differ from the raw ones
    steps = [r["step"] for r in rows(tmp_path / "split", "train")]
    assert steps == list(range(1, 7))  # one history in the metrics, no duplicate rows


def test_resume_and_fresh_runs_refuse_the_wrong_directory(tmp_path):
    with pytest.raises(ResumeError, match="no checkpoint"):
        train(fake_caches(CFG), CFG, tmp_path / "none", options(steps=2), resume=True)
    train(fake_caches(CFG), CFG, tmp_path / "run", options(steps=1, decoders=False))
    with pytest.raises(ValueError, match="--resume"):
        train(fake_caches(CFG), CFG, tmp_path / "run", options(steps=2, decoders=False))


def test_init_from_a_checkpoint_starts_from_its_weights(tmp_path, trained):
    """--init: an exported (decoder-free) start gets fresh decoders; everything else starts from the file."""
    run, _ = trained
    start = weights(latest_checkpoint(run))
    result = train(fake_caches(CFG), CFG, tmp_path / "ft", options(steps=1, lr=1e-12, grad_clip=None),
                   init=latest_checkpoint(run))
    after = weights(result.checkpoint)
    for k, v in start.items():
        if not k.startswith("decoders."):
            torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)


def test_the_evaluation_hook_gets_a_servable_checkpoint_every_n_steps(tmp_path):
    """dv-eval plugs in here: called with a saved checkpoint directory and the step, its numbers are logged."""
    calls = []

    def evaluate(ckpt: Path, step: int) -> dict[str, float]:
        calls.append((ckpt.name, step, read_meta(ckpt).model.name))
        return {"success_rate": step / 10}

    train(fake_caches(CFG), CFG, tmp_path / "run", options(steps=4, eval_every=2, save_every=100, decoders=False),
          evaluate=evaluate)
    assert calls == [("step_0000002", 2, "tiny"), ("step_0000004", 4, "tiny")]
    assert [(r["step"], r["success_rate"]) for r in rows(tmp_path / "run", "eval")] == [(2, 0.2), (4, 0.4)]
