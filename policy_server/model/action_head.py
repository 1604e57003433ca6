"""DiT action head: denoises a 3-step chunk of 7-D actions conditioned in-context on the <action> queries.

The released code (CogACT-style DiT, OpenAI guided-diffusion) conditions by prepending 3 condition
tokens (projected <action> outputs + timestep embedding) to the 3 noisy action tokens; no adaLN, no
cross-attention. Here the noise schedules come from `diffusers` with the same numbers: 100-step
`squaredcos_cap_v2`, epsilon prediction, fixed-small variance; DDIM 10 steps, eta 0, CFG 1.5.

Sampling runs the DiT once per DDIM step on the conditional and unconditional halves stacked into one
batch. Everything that does not depend on the noisy chunk is done once per call, before the loop (the
condition tokens of every step), or once per device (the timesteps and each step's DDIM update, read off
diffusers' scheduler as two numbers), so a step is one DiT forward and three in-place updates. The loop
makes no host round trip and builds no tensor from host data, which lets serving capture it whole in a
CUDA graph (`policy_server/serving/sampler_graph.py`, installed through `ActionHead.denoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from policy_server.model.config import ActionHeadConfig
from policy_server.model.layers import Block


class TimestepEmbedder(nn.Module):
    """Diffusion step -> sinusoidal 256-D -> MLP (SiLU) -> width."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class ConditionEmbedder(nn.Module):
    """<action> outputs (B, 3, H) -> (B, 3, width); a learned null condition stands in for dropped ones."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, width)
        self.uncondition = nn.Parameter(torch.randn(1, hidden) * hidden**-0.5)

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            cond = torch.where(drop[:, None, None], self.uncondition.to(cond.dtype), cond)
        return self.linear(cond)


class ActionEmbedder(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class FinalLayer(nn.Module):
    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class DiT(nn.Module):
    """noisy chunk (B, K, 7), step (B,), condition (B, K, H) -> predicted noise (B, K, 7)."""

    def __init__(self, hidden: int, chunk: int, dim: int, cfg: ActionHeadConfig) -> None:
        super().__init__()
        self.x_embedder = ActionEmbedder(dim, cfg.width)
        self.t_embedder = TimestepEmbedder(cfg.width)
        self.z_embedder = ConditionEmbedder(hidden, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(2 * chunk, cfg.width) * cfg.width**-0.5)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, affine=False, gelu="tanh") for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(cfg.width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        c = self.z_embedder(cond, drop) + self.t_embedder(t)[:, None]  # (B, K, W): condition tokens
        h = torch.cat([c, self.x_embedder(x)], dim=1) + self.positional_embedding  # (B, 2K, W)
        return self.noise_from_tokens(h, x.shape[1])

    def noise_from_tokens(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Embedded tokens (B, 2K, W), positions added -> predicted noise (B, K, 7) of the last K (the chunk)."""
        for block in self.blocks:
            h = block(h)
        return self.final_layer(h[:, -k:])  # per-token layers: the K condition outputs are never read


@dataclass(frozen=True)
class DDIMPlan:
    """One device's DDIM schedule as the sampler runs it.

    With eta 0 and no clipping, diffusers' `DDIMScheduler.step` is affine in (sample, eps):
    x_prev = x_coef * x + eps_coef * eps. The coefficients are Python floats, so one plan serves every
    dtype (each update rounds once, in the tensor's own arithmetic) and a CUDA graph bakes them in.
    """

    timesteps: torch.Tensor  # (steps,) int64 on the device: the DiT's timestep input, all steps at once
    x_coef: tuple[float, ...]
    eps_coef: tuple[float, ...]


def ddim_plan(schedule: DDIMScheduler, device: torch.device) -> DDIMPlan:
    """Read each step's update off `schedule.step` itself, in float64, so the plan follows diffusers'
    own timestep spacing and final-alpha rule instead of restating them."""
    if schedule.config.clip_sample or schedule.config.thresholding or schedule.num_inference_steps is None:
        raise ValueError("ddim_plan needs a DDIMScheduler with clip_sample and thresholding off and "
                         "set_timesteps called")
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    x_coef = tuple(float(schedule.step(zero, t, one, eta=0.0).prev_sample) for t in schedule.timesteps)
    eps_coef = tuple(float(schedule.step(one, t, zero, eta=0.0).prev_sample) for t in schedule.timesteps)
    return DDIMPlan(schedule.timesteps.to(device=device, dtype=torch.int64), x_coef, eps_coef)


# (cond (B, K, H), noise (B, K, 7)) -> denoised chunk (B, K, 7); the noise is read, never written.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ActionHead(nn.Module):
    """Training loss and DDIM+CFG sampling around the DiT."""

    def __init__(self, hidden: int, chunk: int, dim: int, cfg: ActionHeadConfig) -> None:
        super().__init__()
        self.cfg, self.chunk, self.dim = cfg, chunk, dim
        self.net = DiT(hidden, chunk, dim, cfg)
        schedule = dict(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                        prediction_type="epsilon", clip_sample=False)
        self.train_schedule = DDPMScheduler(variance_type="fixed_small", **schedule)
        self.sample_schedule = DDIMScheduler(set_alpha_to_one=True, **schedule)
        self.sample_schedule.set_timesteps(cfg.inference_steps)  # stateless after this: safe to share
        self._plans: dict[torch.device, DDIMPlan] = {}  # see `plan`
        # Where `sample` sends (cond, noise) instead of `denoise`: serving installs a CUDA-graph replay here.
        self.denoiser: Denoiser | None = None

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """cond (B, K, H), target chunk (B, K, 7) -> epsilon MSE over `repeat_train` noised copies."""
        r = self.cfg.repeat_train
        cond, actions = cond.repeat_interleave(r, 0), actions.repeat_interleave(r, 0)  # (B*r, ...)
        b = actions.shape[0]
        t = torch.randint(0, self.cfg.train_timesteps, (b,), device=actions.device)
        noise = torch.randn_like(actions)
        noisy = self.train_schedule.add_noise(actions, noise, t)
        drop = torch.rand(b, device=actions.device) < self.cfg.cond_dropout if self.training else None
        return F.mse_loss(self.net(noisy, t, cond, drop), noise)

    def plan(self, device: torch.device) -> DDIMPlan:
        """The DDIM plan on `device`, built at its first use there and reused by every later call."""
        if device not in self._plans:
            self._plans[device] = ddim_plan(self.sample_schedule, device)
        return self._plans[device]

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """cond (B, K, H) -> denoised chunk (B, K, 7) by DDIM (eta 0) with classifier-free guidance."""
        x = noise if noise is not None else torch.randn(
            (cond.shape[0], self.chunk, self.dim), generator=generator, device=cond.device, dtype=cond.dtype)
        return (self.denoise if self.denoiser is None else self.denoiser)(cond, x)

    @torch.no_grad()
    def denoise(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The whole guided DDIM loop from `noise` (B, K, 7), left unchanged; one DiT forward on 2B rows per step.

        Equal to `sample_reference` (diffusers' `step` at every step) up to float rounding. Rows [:B] of
        the DiT batch are conditional and [B:] unconditional, as in the released code.
        """
        net, k, b = self.net, self.chunk, cond.shape[0]
        plan = self.plan(cond.device)
        pos = net.positional_embedding
        null = net.z_embedder.uncondition.to(cond.dtype)[:, None].expand(b, cond.shape[1], -1)
        z = net.z_embedder(torch.cat([cond, null]))  # (2B, K, W): the same at every step
        # Every step's condition tokens in one go, summed as DiT.forward sums them: (steps, 2B, K, W)
        context = (z[None] + net.t_embedder(plan.timesteps)[:, None, None]) + pos[:k]
        tokens = context.new_empty((2, b, 2 * k, context.shape[-1]))  # the DiT's input, rewritten each step
        x = noise.clone()  # updated in place from here on
        guide = self.cfg.cfg_scale
        for i, (x_coef, eps_coef) in enumerate(zip(plan.x_coef, plan.eps_coef, strict=True)):
            tokens[:, :, :k] = context[i].view(2, b, k, -1)
            tokens[:, :, k:] = net.x_embedder(x) + pos[k:]  # one chunk embedding, written to both halves
            eps = net.noise_from_tokens(tokens.view(2 * b, 2 * k, -1), k)  # (2B, K, 7)
            # x <- x_coef*x + eps_coef*(eps_u + guide*(eps_c - eps_u)), in x's dtype
            x.mul_(x_coef).add_(eps[:b], alpha=eps_coef * guide).add_(eps[b:], alpha=eps_coef * (1 - guide))
        return x

    @torch.no_grad()
    def sample_reference(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The released loop, diffusers' `step` at every step: kept for the equality tests and `dv-bench sampler`."""
        b, x, sched = cond.shape[0], noise, self.sample_schedule
        null = self.net.z_embedder.uncondition.to(cond.dtype)[:, None].expand(b, cond.shape[1], -1)
        both = torch.cat([cond, null])  # (2B, K, H): conditional then unconditional
        for t in sched.timesteps:
            steps = torch.full((2 * b,), int(t), device=cond.device)
            eps_c, eps_u = self.net(torch.cat([x, x]), steps, both).chunk(2)
            eps = eps_u + self.cfg.cfg_scale * (eps_c - eps_u)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x
