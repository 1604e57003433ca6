"""The DDIM+CFG sampler: the same numbers as diffusers' scheduler loop, one batched DiT forward per step, nothing
rebuilt per step, and the serving switch that captures it in a CUDA graph (here its CPU path; the graphs
themselves are replayed in test_sampler_cuda.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from policy_server.model.action_head import ActionHead
from policy_server.model.config import ModelConfig, preset
from policy_server.serving.sampler_graph import (
    GraphedSampler,
    autocast_dtype,
    capture_precision,
    install_sampler_graphs,
)


def _head(cfg: ModelConfig, seed: int = 0) -> ActionHead:
    """A head whose output layer is not zero (as released it starts at zero, which would hide the DiT)."""
    torch.manual_seed(seed)
    head = ActionHead(cfg.backbone.hidden, cfg.action.chunk, cfg.action.dim, cfg.action_head).eval()
    torch.nn.init.normal_(head.net.final_layer.linear.weight, std=0.02)
    return head


def _inputs(head: ActionHead, batch: int, hidden: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, head.chunk, hidden, generator=g), torch.randn(batch, head.chunk, head.dim, generator=g))


def test_float64_sampler_is_the_scheduler_loop_exactly(tiny_cfg):
    """In float64 rounding vanishes, so what is left is the algebra: the plan's two coefficients per step and
    the folded guidance are diffusers' `step` and the released CFG, to 1e-12 (seen: 1e-14)."""
    head = _head(tiny_cfg).double()
    cond, noise = (t.double() for t in _inputs(head, 3, tiny_cfg.backbone.hidden))
    ours, reference = head.sample(cond, noise), head.sample_reference(cond, noise)
    assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


@pytest.mark.parametrize("name", ["tiny", "paper-calvin"])
def test_fp32_sampler_matches_the_scheduler_loop(name):
    """fp32, same noise: within 2e-6 of the output's scale (seen: up to 7e-7). Each path alone is 1e-7 to 4e-7
    of the scale away from the float64 result (they round in different places), so 2e-6 bounds their sum.
    The paper head keeps its widths and heads but 2 of its 12 blocks: the same shapes, a sixth of the time."""
    cfg = preset(name)
    cfg = cfg.model_copy(update={"action_head": cfg.action_head.model_copy(update={"depth": 2})})
    head = _head(cfg)
    cond, noise = _inputs(head, 2, cfg.backbone.hidden)
    before = noise.clone()
    ours, reference = head.sample(cond, noise), head.sample_reference(cond, noise)
    assert torch.equal(noise, before)  # the caller's noise is read, never written
    assert (ours - reference).abs().max() <= 2e-6 * reference.abs().max()


def test_bf16_sampler_stays_as_close_to_fp32_as_the_scheduler_loop(tiny_cfg):
    """Under CPU bf16 autocast (the engine's bf16 context) within 1% of the fp32 result's scale, the bound the
    engine's bf16 test uses. Guidance is now combined in fp32 rather than bf16, so it may only be closer."""
    head = _head(tiny_cfg)
    cond, noise = _inputs(head, 2, tiny_cfg.backbone.hidden)
    fp32 = head.sample(cond, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, reference = head.sample(cond, noise), head.sample_reference(cond, noise)
    scale = fp32.abs().max()
    assert ours.dtype == torch.float32
    assert 0 < (ours - fp32).abs().max() <= 0.01 * scale  # > 0: bf16 really ran
    assert (ours - reference).abs().max() <= 0.01 * scale


def test_each_step_is_one_dit_forward_on_both_halves(tiny_cfg):
    """10 steps, 10 DiT forwards, each on 2B rows: the conditional rows first and the unconditional ones after,
    both holding the same noisy chunk. The condition and timestep embeddings run once per call, not per step."""
    head, b, k = _head(tiny_cfg), 3, tiny_cfg.action.chunk
    cond, noise = _inputs(head, b, tiny_cfg.backbone.hidden)
    calls: dict[str, list[torch.Tensor]] = {"blocks": [], "condition": [], "timestep": [], "chunk": []}

    def record(name: str):
        return lambda module, args: calls[name].append(args[0].clone())

    net = head.net
    hooks = [net.blocks[0].register_forward_pre_hook(record("blocks")),
             net.z_embedder.register_forward_pre_hook(record("condition")),
             net.t_embedder.register_forward_pre_hook(record("timestep")),
             net.x_embedder.register_forward_pre_hook(record("chunk"))]
    try:
        head.sample(cond, noise)
    finally:
        for h in hooks:
            h.remove()

    steps = tiny_cfg.action_head.inference_steps
    assert len(calls["blocks"]) == steps and len(calls["chunk"]) == steps
    for tokens in calls["blocks"]:
        assert tokens.shape == (2 * b, 2 * k, tiny_cfg.action_head.width)
        assert torch.equal(tokens[:b, k:], tokens[b:, k:])  # one noisy chunk, seen by both halves
        assert not torch.equal(tokens[:b, :k], tokens[b:, :k])  # under different conditions
    for chunk in calls["chunk"]:
        assert chunk.shape == (b, k, head.dim)  # embedded once, not once per half
    (condition,) = calls["condition"]
    assert torch.equal(condition[:b], cond)
    assert torch.equal(condition[b:], net.z_embedder.uncondition.expand(b, k, -1))
    (timesteps,) = calls["timestep"]
    assert timesteps.tolist() == head.sample_schedule.timesteps.tolist()


def test_the_plan_is_built_once_and_no_step_calls_the_scheduler(tiny_cfg, monkeypatch):
    """The DDIM coefficients and the timestep tensor are made at the first call on a device and reused: with
    the scheduler's `step` broken afterwards, sampling still runs and gives the same chunk."""
    head = _head(tiny_cfg)
    cond, noise = _inputs(head, 1, tiny_cfg.backbone.hidden)
    first = head.sample(cond, noise)
    plan = head.plan(cond.device)

    def broken(*args, **kwargs):
        raise AssertionError("scheduler.step called while sampling")

    monkeypatch.setattr(head.sample_schedule, "step", broken)
    assert torch.equal(head.sample(cond, noise), first)
    assert head.plan(cond.device) is plan
    assert len(plan.x_coef) == len(plan.eps_coef) == tiny_cfg.action_head.inference_steps


def test_generator_draws_the_same_noise_as_before(tiny_cfg):
    """Without explicit noise, the chunk is drawn from the generator as `torch.randn((B, K, 7))` always was."""
    head = _head(tiny_cfg)
    cond, _ = _inputs(head, 2, tiny_cfg.backbone.hidden)
    drawn = head.sample(cond, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((2, head.chunk, head.dim), generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, head.sample(cond, noise))


def test_graphed_sampler_cpu_path_keeps_one_buffer_set_per_shape(tiny_cfg):
    """`GraphedSampler(capture=False)` runs the buffers and copies a CUDA graph uses: it equals the eager
    sampler, keeps one set per batch size, and hands out results that a later call does not overwrite."""
    head = _head(tiny_cfg)
    sampler = GraphedSampler(head, capture=False)
    head.denoiser = sampler
    results = []
    for batch, seed in ((1, 1), (2, 2), (1, 3)):
        cond, noise = _inputs(head, batch, tiny_cfg.backbone.hidden, seed)
        out = head.sample(cond, noise)
        assert torch.equal(out, head.denoise(cond, noise))
        results.append((out, out.clone()))
    assert sampler.prepared == 2  # batch 1 came back and reused its buffers
    for out, kept in results:
        assert torch.equal(out, kept)
    assert not torch.equal(results[0][0], results[2][0])  # different inputs did reach the buffers


def test_capture_precision_follows_the_caller():
    """Graphs are keyed on, and captured under, the caller's autocast dtype, with the weight-cast cache on."""
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with capture_precision(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        amp = autocast_dtype(cpu)
        assert amp == torch.bfloat16
        with capture_precision(cpu, amp):
            assert torch.is_autocast_enabled("cpu") and torch.is_autocast_cache_enabled()


def test_switch_is_off_on_cpu_and_refuses_to_be_forced_on(tiny_cfg):
    head = _head(tiny_cfg)
    head.denoiser = GraphedSampler(head, capture=False)
    assert install_sampler_graphs(head, torch.device("cpu")) is False
    assert head.denoiser is None
    with pytest.raises(ValueError, match="sampler_graphs=True needs a CUDA device"):
        install_sampler_graphs(head, torch.device("cpu"), enabled=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            GraphedSampler(head)


def test_copy_of_a_head_samples_alike(tiny_cfg):
    """The plan cache is plain data: a deep copy (as EMA or a second engine makes) samples the same."""
    head = _head(tiny_cfg)
    cond, noise = _inputs(head, 1, tiny_cfg.backbone.hidden)
    first = head.sample(cond, noise)
    assert torch.equal(copy.deepcopy(head).sample(cond, noise), first)


def test_engine_switch_defaults_off_on_cpu_and_routes_sampling_through_the_denoiser(tiny_cfg):
    """`PolicyEngine(sampler_graphs=None)` leaves CPU eager, refuses True on CPU, and a step taken through an
    installed denoiser (the graph's buffers, not captured) gives the same chunk as the eager step."""
    import numpy as np

    from dreamvla_client.protocol import WireObservation
    from policy_server.model.dreamvla import DreamVLA
    from policy_server.model.text import build_tokenizer
    from policy_server.serving.engine import PolicyEngine

    torch.manual_seed(0)
    model = DreamVLA(tiny_cfg, with_decoders=False, load_pretrained=False)
    torch.nn.init.normal_(model.action_head.net.final_layer.linear.weight, std=0.02)
    tokenizer = build_tokenizer(tiny_cfg.text, None)
    with pytest.raises(ValueError, match="sampler_graphs=True needs a CUDA device"):
        PolicyEngine(model, None, tokenizer, sampler_graphs=True)
    engine = PolicyEngine(model, None, tokenizer)
    assert engine.sampler_graphs is False and model.action_head.denoiser is None

    rng = np.random.default_rng(0)
    obs = WireObservation(images={c: rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for c in tiny_cfg.cameras},
                          state=np.r_[rng.normal(size=6), 1.0].astype(np.float32))
    noise = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(0))
    eager = engine.step(engine.start_episode("open the drawer"), obs, noise=noise)
    sampler = model.action_head.denoiser = GraphedSampler(model.action_head, capture=False)
    routed = engine.step(engine.start_episode("open the drawer"), obs, noise=noise)
    assert sampler.prepared == 1
    np.testing.assert_array_equal(routed, eager)


def test_sampler_bench_times_every_variant_and_its_ratios_are_its_p50s():
    from bench.sampler_latency import run_sampler_bench

    result = run_sampler_bench("tiny", batch=1, iters=2, warmup=1, device="cpu", seed=0)
    p50 = {t.label: t.p50_ms for t in result.timings}
    assert set(p50) == {f"{v} {p}" for v in ("scheduler", "planned") for p in ("fp32", "bf16")}  # CPU: no graph
    assert all(ms > 0 for ms in p50.values())
    assert {(r.numerator, r.denominator) for r in result.ratios} == {
        ("scheduler fp32", "planned fp32"), ("scheduler bf16", "planned bf16")}
    for r in result.ratios:
        assert r.p50_ratio == pytest.approx(p50[r.numerator] / p50[r.denominator], rel=1e-9)
