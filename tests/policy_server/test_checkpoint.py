"""Checkpoint directories: round trip, integrity, and clear errors for what cannot be loaded."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from policy_server.cli.model import main as dv_model
from policy_server.model.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from policy_server.model.config import ModelConfig, VisionConfig
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import MissingWeightsError


@pytest.fixture
def tiny_ckpt(tmp_path):
    out = tmp_path / "tiny"
    assert dv_model(["init", "--config", "tiny", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_round_trip_reproduces_every_tensor(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = DreamVLA(tiny_cfg, with_decoders=True, load_pretrained=False)
    meta = save_checkpoint(model, tmp_path / "ck", source="test")
    loaded, meta2, _ = load_checkpoint(tmp_path / "ck", with_decoders=True)
    assert meta2 == meta and meta.model == tiny_cfg
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_serving_load_skips_decoders(tiny_ckpt):
    model, meta, _ = load_checkpoint(tiny_ckpt)
    assert model.decoders is None
    assert meta.normalization.action_scale == [0.02] * 3 + [0.05] * 3 + [1.0]
    assert [c.name for c in meta.cameras] == ["static", "wrist"]


def test_edited_weights_are_refused(tiny_ckpt):
    weights = tiny_ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(tiny_ckpt)


def test_invalid_config_json_names_the_field(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    cfg["model"]["backbone"]["hiddden"] = 3
    (tiny_ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hiddden"):
        read_meta(tiny_ckpt)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)


def test_refuses_to_overwrite(tiny_ckpt, tiny_cfg):
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(DreamVLA(tiny_cfg, with_decoders=False, load_pretrained=False), tiny_ckpt, source="x")


def test_weights_of_another_config_are_refused(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    cfg["model"]["backbone"]["layers"] = 3
    (tiny_ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tiny_ckpt, verify=False)


def test_missing_pretrained_weights_name_what_to_download(tmp_path):
    cfg = ModelConfig(name="mae-missing", vision=VisionConfig(pretrained=str(tmp_path / "mae.pth")),
                      text={"pretrained": None, "frozen": False})
    with pytest.raises(MissingWeightsError, match="mae_pretrain_vit_base.pth"):
        DreamVLA(cfg, with_decoders=False, load_pretrained=True)
    cfg = ModelConfig(name="clip-missing", text={"pretrained": str(tmp_path / "clip")})
    with pytest.raises(MissingWeightsError, match="openai/clip-vit-base-patch32"):
        DreamVLA(cfg, with_decoders=False, load_pretrained=True)


def test_frozen_encoder_without_weights_is_a_config_error():
    with pytest.raises(ValidationError, match="frozen vision encoder needs pretrained weights"):
        ModelConfig(name="bad", vision=VisionConfig(pretrained=None, frozen=True))


def test_cli_try_prints_a_chunk(tiny_ckpt, capsys):
    assert dv_model(["try", str(tiny_ckpt), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("open") + out.count("closed") == 6  # 2 steps x 3 actions


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert dv_model(["info", str(tmp_path)]) == 2
    assert "config.json is missing" in capsys.readouterr().out
