"""The action head's whole DDIM+CFG sampler captured as one CUDA graph, replayed at every serving step.

On a GPU the eager sampler is bound by kernel launches, not arithmetic: 10 DiT forwards of a handful of
tokens are a few hundred small kernels, each a few microseconds of CPU work to launch. A CUDA graph
launches them all at once. `ActionHead.denoise` is written to be capturable (no host round trip, no
tensor built from host data, the DDIM plan and timesteps made before capture), so this module only
keeps static buffers per input shape, captures once, and copies in and out around each replay.

One graph per (shapes, dtypes, autocast dtype, device): `step_batch` batches vary in size, and a graph
replays the precision it was captured under, whatever the caller's context is then.

Autocast caches each weight's bf16 copy until the outermost autocast context exits. A cached copy made
before capture (outside the graph's memory) must not be read under capture, where the graph would keep
its address after the cache frees it; a copy made under capture lives in the graph's memory and must not
be read outside it. So the cache is cleared on both sides of the capture: each replay then casts each
weight once, inside the graph.

A graph reads the weights' storage as it was at capture: copying new values into the parameters in place
(`load_state_dict`) is seen by the next replay, moving or replacing them is not (build a new engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy_server.model.action_head import ActionHead

WARMUP_RUNS = 3  # eager runs on a side stream before capture (lazy initialisations), as torch's docs do


@dataclass
class _Static:
    """One input shape's buffers: the caller's tensors are copied into `cond` and `noise`, `out` is read back."""

    cond: torch.Tensor
    noise: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None
    out: torch.Tensor | None = None  # rewritten by every replay (the graph's own memory)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs `device`'s ops in here, or None where it is off."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def capture_precision(device: torch.device, amp: torch.dtype | None) -> torch.autocast:
    """Autocast to `amp` (None: off) with the weight-cast cache on, whatever the enclosing context says."""
    return torch.autocast(device.type, dtype=amp, enabled=amp is not None, cache_enabled=True)


class GraphedSampler:
    """`ActionHead.denoise` replayed from a CUDA graph: a `Denoiser` for `ActionHead.denoiser`.

    `capture=False` runs the same buffers and calls without a graph (the path the CPU tests take).
    """

    def __init__(self, head: ActionHead, *, capture: bool = True) -> None:
        if capture and not torch.cuda.is_available():
            raise ValueError("GraphedSampler(capture=True) needs CUDA; this torch build has none")
        self.head, self.capture = head, capture
        self._static: dict[tuple, _Static] = {}

    @property
    def prepared(self) -> int:
        """Input shapes prepared so far (one graph each when capturing)."""
        return len(self._static)

    @torch.inference_mode()
    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """cond (B, K, H), noise (B, K, 7) -> denoised chunk (B, K, 7), a fresh tensor owned by the caller."""
        if self.capture and cond.device.type != "cuda":
            raise ValueError(f"the sampler graph runs on CUDA tensors, got cond on {cond.device}")
        amp = autocast_dtype(cond.device)
        key = (tuple(cond.shape), tuple(noise.shape), cond.dtype, noise.dtype, amp, cond.device)
        static = self._static.get(key)
        if static is None:
            static = self._static[key] = self._prepare(cond, noise, amp)
        static.cond.copy_(cond)
        static.noise.copy_(noise)
        if static.graph is None:
            return self.head.denoise(static.cond, static.noise)  # a fresh tensor already
        static.graph.replay()
        assert static.out is not None
        return static.out.clone()  # the next replay overwrites `out`

    def _prepare(self, cond: torch.Tensor, noise: torch.Tensor, amp: torch.dtype | None) -> _Static:
        device = cond.device
        static = _Static(torch.zeros(cond.shape, dtype=cond.dtype, device=device),
                         torch.zeros(noise.shape, dtype=noise.dtype, device=device))
        if not self.capture:
            return static
        self.head.plan(device)  # the timesteps' host-to-device copy happens here, not under capture
        with capture_precision(device, amp):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.head.denoise(static.cond, static.noise)
            torch.cuda.current_stream(device).wait_stream(side)
            torch.clear_autocast_cache()  # no cast made outside the graph's memory is read under capture
            static.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(static.graph):
                static.out = self.head.denoise(static.cond, static.noise)
            torch.clear_autocast_cache()  # and none made under capture is read outside it
        return static


def install_sampler_graphs(head: ActionHead, device: torch.device, enabled: bool | None = None) -> bool:
    """The serving switch: route `head.sample` through a `GraphedSampler` or not; returns whether it does.

    `enabled=None` (the default) turns it on exactly when `device` is CUDA; True on another device is
    refused, since there is no graph to capture there.
    """
    on = device.type == "cuda" if enabled is None else enabled
    if on and device.type != "cuda":
        raise ValueError(f"sampler_graphs=True needs a CUDA device; the engine runs on {device}")
    head.denoiser = GraphedSampler(head) if on else None
    return on
