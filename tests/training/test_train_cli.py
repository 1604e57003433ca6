"""`dv-train` from the command line on real recordings: two tasks written by the recorder's writer, their feature
caches built by dv-features, a short run, a resume, and the one-line refusals."""

from __future__ import annotations

import json

import pytest

from policy_server.model.checkpoint import read_meta
from policy_server.model.config import preset
from policy_server.training.features import build
from policy_server.training.features_cache import feature_spec
from policy_server.training.state import latest_checkpoint
from policy_server.training.train_cli import main

CFG = preset("tiny")
COMMON = ["--config", "tiny", "--batch", "2", "--threads", "1", "--no-progress", "--lr", "1e-3", "--log-every", "1"]


@pytest.fixture
def datasets(dataset_factory):
    dirs = [dataset_factory([8, 8, 7], name="push", instructions=["push the bottle"] * 3),
            dataset_factory([8, 9], name="pick", instructions=["pick up the banana"] * 2)]
    for d in dirs:
        build(d, feature_spec(CFG))
    return dirs


def test_two_tasks_train_resume_and_serve_ready(datasets, tmp_path):
    run = tmp_path / "run"
    data = ["--data", *map(str, datasets)]
    assert main([*data, *COMMON, "--out", str(run), "--steps", "6", "--stop-at", "3", "--save-every", "3",
                 "--val-every", "3", "--val-fraction", "0.3"]) == 0
    assert latest_checkpoint(run).name == "step_0000003"
    assert main([*data, "--out", str(run), "--steps", "6", "--resume", "--batch", "2", "--threads", "1",
                 "--no-progress", "--save-every", "3", "--log-every", "1", "--lr", "1e-3"]) == 0
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_0000006" and read_meta(ckpt).model == CFG
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss/depth"] > 0 for r in rows if r["split"] == "train")  # the cache's depth is a target
    assert (run / "losses.png").is_file()


def test_refusals_are_one_line(datasets, tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), *COMMON, "--out", str(tmp_path / "a")]) == 2
    assert "error" in capsys.readouterr().out
    assert main(["--data", str(datasets[0]), "--out", str(tmp_path / "b"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().out
    assert main(["--data", str(datasets[0]), "--out", str(tmp_path / "c")]) == 2
    assert "--config is required" in capsys.readouterr().out


@pytest.mark.parametrize(("dream", "heads"), [([], set()), (["dynamic"], {"dynamic"})])
def test_the_ablation_variants_train_only_their_dream_queries(datasets, tmp_path, dream, heads):
    run = tmp_path / "run"
    assert main(["--data", str(datasets[0]), *COMMON, "--out", str(run), "--steps", "2", "--save-every", "2",
                 "--dream", *dream]) == 0
    meta = read_meta(latest_checkpoint(run))
    assert meta.model.dream == tuple(dream) and meta.model.name == "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = {k[5:] for r in rows if r["split"] == "train" for k in r if k.startswith("loss/")}
    assert trained == {"action", "total"} | heads


def test_dream_is_refused_on_resume(datasets, tmp_path, capsys):
    assert main(["--data", str(datasets[0]), "--out", str(tmp_path / "r"), "--resume", "--dream", "dynamic"]) == 2
    assert "--dream changes the model's queries" in capsys.readouterr().out
