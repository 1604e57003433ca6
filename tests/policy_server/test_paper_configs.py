"""Paper-size configs build on the meta device with the released code's parameter counts, and run on CPU."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from policy_server.cli.model import main as dv_model
from policy_server.model.config import preset

# Released DreamVLA CALVIN finetune (official_checkpoints/NOTES.md), our name -> trainable parameters.
# action_head drops the saved-but-unused history_embedder (6,144); the dynamic decoder gathers the
# official image_decoder + its projector, norm, prediction layer and mask token.
CALVIN_SUBMODULES = {
    "backbone": 302_311_424,
    "action_head": 86_616_071 - 6_144,
    "decoders.dynamic": 25_192_448 + 1_049_600 + 2_048 + 787_200 + 1_024,
    "decoders.depth": 25_192_448 + 1_049_600 + 2_048 + 262_400 + 1_024,
    "decoders.sam": 25_192_448 + 1_049_600 + 2_048 + 262_400 + 1_024,
    "perceiver_resampler": 18_902_016,
    "state_projector": 2_098_176,
    "patch_projectors.static": 787_456,
    "patch_projectors.wrist": 787_456,
    "cls_projectors.static": 787_456,
    "cls_projectors.wrist": 787_456,
    "text_projector": 525_312,
    "arm_state_encoder": 7_168,
    "gripper_state_encoder": 3_072,
    "embedding_layer_norm": 2_048,
    "dream_queries.dynamic": 18_432,
    "dream_queries.depth": 18_432,
    "dream_queries.sam": 18_432,
    "action_queries": 3_072,
    "time_embedding": 10_240,
    "text_encoder": 0,  # frozen CLIP
    "vision_encoder": 0,  # frozen MAE
}


def _info(args: list[str], capsys) -> dict:
    assert dv_model(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_calvin_counts_equal_released_code(capsys):
    info = _info(["--config", "paper-calvin"], capsys)
    got = {name: row["trainable"] for name, row in info["submodules"].items()}
    assert got == CALVIN_SUBMODULES
    assert info["totals"]["trainable"] == 493_724_935 == 496_630_542 - 2_905_607
    assert info["totals"]["trainable_inference"] == 413_677_575
    assert info["tokens"] == {"context_per_step": 36, "queries_per_step": 57, "per_step": 93,
                              "sequence_length": 10, "sequence": 930}


def test_paper_real_shares_seer_droid_widths(capsys):
    """Seer's DROID pretrain (H384, 24 layers, Q=6): the parts it shares with us have its sizes."""
    info = _info(["--config", "paper-real"], capsys)
    rows = {name: row["trainable"] for name, row in info["submodules"].items()}
    assert rows["backbone"] == 42_587_904
    assert rows["perceiver_resampler"] == 18_894_336
    assert rows["state_projector"] == 295_296
    assert rows["patch_projectors.static"] == 295_296
    assert rows["text_projector"] == 196_992
    assert rows["time_embedding"] == 7 * 384  # history 7 (Seer's real loop), truncated from 11 on import
    assert info["tokens"]["per_step"] == 16 + 54 + 3


def test_paper_calvin_bf16_step_on_cpu():
    """One full-window (10 frames) serving step of paper-calvin, random weights, bf16 autocast on CPU."""
    from dreamvla_client.protocol import WireObservation
    from policy_server.model.dreamvla import DreamVLA
    from policy_server.model.text import ByteTokenizer
    from policy_server.serving.engine import PolicyEngine

    cfg = preset("paper-calvin")
    model = DreamVLA(cfg, with_decoders=False, load_pretrained=False)
    # No CLIP vocabulary here: byte ids are valid CLIP token ids, enough to exercise the text tower.
    engine = PolicyEngine(model, None, ByteTokenizer(77), precision="bf16")
    rng = np.random.default_rng(0)
    obs = [WireObservation(images={c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in cfg.cameras},
                           state=np.zeros(7, np.float32)) for _ in range(cfg.sequence_length)]
    history = engine.start_episode("push the blue block")
    history.frames.extend(engine.encode(obs[:-1]))
    start = time.perf_counter()
    actions = engine.step(history, obs[-1])
    print(f"paper-calvin bf16 CPU step: {time.perf_counter() - start:.2f} s")
    assert actions.shape == (3, 7) and np.isfinite(actions).all()
    assert len(history.frames) == 10


def test_unknown_config_is_named():
    with pytest.raises(ValueError, match="unknown model config 'paper-xl'.*paper-calvin"):
        preset("paper-xl")
