"""The tiny config trains, infers, and serves exactly like the full-window path, on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamvla_client.protocol import WireObservation
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import build_tokenizer
from policy_server.serving.engine import PolicyEngine


def _model(cfg, *, decoders: bool, seed: int = 0) -> DreamVLA:
    torch.manual_seed(seed)
    return DreamVLA(cfg, with_decoders=decoders, load_pretrained=False)


def _randomize_output_layer(model: DreamVLA) -> None:
    """The DiT's output layer starts at zero (as released); give it weights so actions depend on inputs."""
    torch.nn.init.normal_(model.action_head.net.final_layer.linear.weight, std=0.02)


def _observations(cfg, n: int, seed: int = 0) -> list[WireObservation]:
    rng = np.random.default_rng(seed)
    return [
        WireObservation(images={c: rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for c in cfg.cameras},
                        state=np.r_[rng.normal(size=6), float(i % 2)].astype(np.float32))
        for i in range(n)
    ]


def test_training_step_lowers_total_loss(tiny_cfg, batch_factory):
    model = _model(tiny_cfg, decoders=True)
    batch = batch_factory(tiny_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def evaluate() -> dict[str, float]:
        torch.manual_seed(123)  # same diffusion timesteps and noise for both evaluations
        model.eval()
        with torch.no_grad():
            return {k: v.item() for k, v in model(batch).items()}

    before = evaluate()
    assert set(before) == {"action", "dynamic", "depth", "total"}  # tiny has no semantic (SAM/DINO) head
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1 * 10)
        opt.step()
    after = evaluate()
    assert after["total"] < before["total"]


def test_diffusion_loss_falls_5x_in_200_steps(tiny_cfg, batch_factory):
    model = _model(tiny_cfg, decoders=False)
    batch = batch_factory(tiny_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def action_loss() -> float:
        torch.manual_seed(7)
        model.eval()
        with torch.no_grad():
            return model(batch)["action"].item()

    before = action_loss()
    model.train()
    for _ in range(200):
        opt.zero_grad()
        model(batch)["action"].backward()
        opt.step()
    after = action_loss()
    assert after * 5 <= before, (before, after)


def test_inference_is_finite_and_never_runs_decoders(tiny_cfg):
    model = _model(tiny_cfg, decoders=True)
    calls = []
    for dec in model.decoders.values():
        dec.register_forward_hook(lambda *_: calls.append(1))
    tok = build_tokenizer(tiny_cfg.text, None)
    cfg = tiny_cfg
    r = cfg.vision.image_size
    with torch.no_grad():
        text = model.encode_text(tok(["pick up the doll"]))
        images = {c: torch.randn(2, 3, r, r) for c in cfg.cameras}
        frames = model.encode_frame(torch.zeros(2, 7), images)[None]  # (1, 2, A-1, H)
        actions = model.predict(text, frames)
    assert actions.shape == (1, 3, 7) and torch.isfinite(actions).all()
    assert calls == []


def test_engine_is_built_without_decoders(tiny_cfg):
    with pytest.raises(ValueError, match="without knowledge decoders"):
        PolicyEngine(_model(tiny_cfg, decoders=True), None, build_tokenizer(tiny_cfg.text, None))


def test_cached_steps_equal_full_window_recompute(tiny_cfg):
    model = _model(tiny_cfg, decoders=False)
    _randomize_output_layer(model)
    engine = PolicyEngine(model, None, build_tokenizer(tiny_cfg.text, None))
    observations = _observations(tiny_cfg, tiny_cfg.sequence_length + 3)  # past the window: it slides
    history = engine.start_episode("place the banana")
    outputs = []
    for i, obs in enumerate(observations):
        noise = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(i))
        cached = engine.step(history, obs, noise=noise)
        full = engine.step_recompute("place the banana", observations[: i + 1], noise=noise)
        np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)  # batched vs single-frame encoding
        outputs.append(cached)
    assert len(history.frames) == tiny_cfg.sequence_length
    assert np.ptp(np.stack(outputs), axis=0).max() > 1e-3  # actions do depend on the observations


def test_bf16_autocast_agrees_with_fp32(tiny_cfg):
    """Same weights, same noise: bf16 (CPU autocast) within 1% of the largest fp32 action magnitude.

    bf16 keeps 8 mantissa bits (~0.4% per rounding); 1% of the output scale bounds the accumulated error.
    """
    observations = _observations(tiny_cfg, 3, seed=1)
    results = {}
    for precision in ("fp32", "bf16"):
        model = _model(tiny_cfg, decoders=False, seed=3)
        _randomize_output_layer(model)
        engine = PolicyEngine(model, None, build_tokenizer(tiny_cfg.text, None), precision=precision)
        history = engine.start_episode("close the drawer")
        noise = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(0))
        results[precision] = [engine.step(history, o, noise=noise) for o in observations]
    bf16, fp32 = np.stack(results["bf16"]), np.stack(results["fp32"])
    assert np.isfinite(bf16).all()
    diff, scale = np.abs(bf16 - fp32).max(), np.abs(fp32).max()
    assert 0 < diff <= 0.01 * scale, (diff, scale)  # > 0: bf16 really ran


def test_batched_step_equals_each_episode_alone(tiny_cfg):
    """Micro-batching different episodes (different window lengths) changes no episode's chunk."""
    model = _model(tiny_cfg, decoders=False)
    _randomize_output_layer(model)
    engine = PolicyEngine(model, None, build_tokenizer(tiny_cfg.text, None))
    instructions = ["pick up the bottle", "open the drawer", "place the chili"]
    observations = [_observations(tiny_cfg, 6, seed=s) for s in range(3)]
    batched = [engine.start_episode(i) for i in instructions]
    alone = [engine.start_episode(i) for i in instructions]
    for step in range(6):
        # episode 2 starts later, so its window is shorter than the others' in the same batch
        members = [0, 1] + ([2] if step >= 2 else [])
        noises = [torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(10 * e + step)) for e in members]
        chunks, timing = engine.step_batch([batched[e] for e in members],
                                           [observations[e][step] for e in members], noises)
        assert set(timing) == {"encode", "backbone", "diffusion"}
        for e, chunk, noise in zip(members, chunks, noises, strict=True):
            reference = engine.step(alone[e], observations[e][step], noise=noise)
            np.testing.assert_allclose(chunk, reference, rtol=1e-4, atol=1e-5)


def test_backbone_starts_from_a_local_gpt2(tiny_cfg, tmp_path):
    """backbone.pretrained loads GPT-2 blocks (Conv1D transposed) and computes what GPT-2's blocks do."""
    from transformers import GPT2Config, GPT2Model

    from policy_server.model.text import MissingWeightsError

    b = tiny_cfg.backbone
    gpt2 = GPT2Model(GPT2Config(n_embd=b.hidden, n_layer=b.layers, n_head=b.heads, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    cfg = tiny_cfg.model_copy(update={"backbone": b.model_copy(update={"pretrained": str(tmp_path / "gpt2")})})
    model = DreamVLA(cfg, with_decoders=False, load_pretrained=True).eval()
    x = torch.randn(2, 5, b.hidden)
    with torch.no_grad():
        ours = model.backbone(x, torch.ones(5, 5, dtype=torch.bool).tril())  # GPT-2's own causal pattern
        h = x
        for block in gpt2.h:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        theirs = gpt2.ln_f(h)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    missing = cfg.model_copy(update={"backbone": b.model_copy(update={"pretrained": str(tmp_path / "none")})})
    with pytest.raises(MissingWeightsError, match="gpt2-medium"):
        DreamVLA(missing, with_decoders=False, load_pretrained=True)


@pytest.mark.parametrize("cameras", [("static",), ("static", "wrist", "left")])
def test_the_number_of_views_follows_the_config(tiny_cfg, batch_factory, cameras):
    """One view or three: the token layout, the training losses and the sampled chunk all follow cfg.cameras."""
    cfg = tiny_cfg.model_copy(update={"cameras": cameras})
    model = _model(cfg, decoders=True)
    v = len(cameras)
    assert cfg.context_tokens == 2 + v * (cfg.resampler.num_queries + 1)
    assert model.dream_queries["dynamic"].shape[0] == v * cfg.dream_queries_per_view
    losses = model(batch_factory(cfg))
    assert set(losses) == {"action", "dynamic", "depth", "total"} and torch.isfinite(losses["total"])
    frames = model.encode_frame(torch.zeros(2, 7), {c: torch.zeros(2, 3, 64, 64) for c in cameras})
    assert frames.shape == (2, cfg.context_tokens - 1, cfg.backbone.hidden)
    text = model.encode_text(build_tokenizer(cfg.text, None)(["pick up the bottle"] * 2))
    chunk = model.predict(text, frames[:, None])
    assert chunk.shape == (2, cfg.action.chunk, cfg.action.dim)


def test_released_initialisation(tiny_cfg):
    """Xavier-uniform on every Linear (the DiT's last layer included: not zero), zero biases, null condition 0.02."""
    model = _model(tiny_cfg, decoders=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 + 1e-6
        assert layer.bias is None or not layer.bias.any()
    big = max(linears, key=lambda m: m.weight.numel())
    fan_out, fan_in = big.weight.shape
    assert big.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.1)
    assert model.action_head.net.final_layer.linear.weight.abs().sum() > 0
    assert model.action_head.net.z_embedder.uncondition.std().item() == pytest.approx(0.02, rel=0.25)


def test_queries_without_targets_are_warned_about_once(tiny_cfg, batch_factory, caplog):
    model = _model(tiny_cfg, decoders=True)
    batch = batch_factory(tiny_cfg)
    batch.future_depth = None
    with caplog.at_level("WARNING", logger="policy_server.model.dreamvla"):
        losses = model(batch)
        model(batch)
    assert "depth" not in losses
    warned = [r for r in caplog.records if "'depth'" in r.getMessage()]
    assert len(warned) == 1 and "never computed" in warned[0].getMessage()
