"""DiT action head: denoises a 3-step chunk of 7-D actions conditioned in-context on the <action> queries.

The released code (CogACT-style DiT, OpenAI guided-diffusion) conditions by prepending 3 condition
tokens (projected <action> outputs + timestep embedding) to the 3 noisy action tokens; no adaLN, no
cross-attention. Here the noise schedules come from `diffusers` with the same numbers: 100-step
`squaredcos_cap_v2`, epsilon prediction, fixed-small variance; DDIM 10 steps, eta 0, CFG 1.5.
"""

from __future__ import annotations

import math

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
        k = x.shape[1]
        c = self.z_embedder(cond, drop) + self.t_embedder(t)[:, None]  # (B, K, W): condition tokens
        h = torch.cat([c, self.x_embedder(x)], dim=1) + self.positional_embedding  # (B, 2K, W)
        for block in self.blocks:
            h = block(h)
        return self.final_layer(h)[:, -k:]


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

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """cond (B, K, H) -> denoised chunk (B, K, 7) by DDIM (eta 0) with classifier-free guidance."""
        b = cond.shape[0]
        x = noise if noise is not None else torch.randn(
            (b, self.chunk, self.dim), generator=generator, device=cond.device, dtype=cond.dtype)
        sched = self.sample_schedule
        null = self.net.z_embedder.uncondition.to(cond.dtype)[:, None].expand(b, cond.shape[1], -1)
        both = torch.cat([cond, null])  # (2B, K, H): conditional then unconditional
        for t in sched.timesteps:
            steps = torch.full((2 * b,), int(t), device=cond.device)
            eps_c, eps_u = self.net(torch.cat([x, x]), steps, both).chunk(2)
            eps = eps_u + self.cfg.cfg_scale * (eps_c - eps_u)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x
