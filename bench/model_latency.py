"""Per-step latency of DreamVLA serving variants, measured side by side in one process.

Each variant is one steady-state serving step with a full window of `sequence_length` frames, fed the
same observations and the same diffusion noise. Variants are timed round-robin (the starting variant
rotates every round), so drift in clock speed or cache state hits all of them alike and the ratios
are comparable. Weights are random: latency depends on shapes, not on weight values.

Variants: `recompute` re-encodes the whole window (the released code's way); `cached` is the serving
engine's step (history cache, pruned sequence: every frame's context tokens, the newest frame's queries);
`cached-full-seq` the same step over the full window's tokens (what serving ran before pruning);
`cached+decoders` adds every knowledge decoder; `cached+flex` runs the backbone's attention through
FlexAttention (a compiled fused kernel on CUDA, its eager form on CPU). The code is the same on CPU and
CUDA; on CUDA each timed step ends with a synchronize.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from dreamvla_client.protocol import WireObservation
from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.knowledge import build_decoders
from policy_server.model.text import ByteTokenizer, Tokenizer, build_tokenizer
from policy_server.serving.engine import EpisodeHistory, PolicyEngine, Precision

PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
RECOMPUTE, CACHED, DECODERS = "recompute", "cached", "cached+decoders"
FULL_SEQ, FLEX = "cached-full-seq", "cached+flex"
VARIANTS = (RECOMPUTE, CACHED, FULL_SEQ, DECODERS, FLEX)
CAMERA_SHAPE = (480, 640, 3)  # a RealSense D415 colour frame
INSTRUCTION = "pick up the bottle"

Step = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    """Summary of one variant's timed steps, in milliseconds."""

    variant: str
    precision: Precision
    p50_ms: float
    p95_ms: float
    mean_ms: float

    @property
    def label(self) -> str:
        return f"{self.variant} {self.precision}"


@dataclass(frozen=True)
class Ratio:
    """p50 of `numerator` over p50 of `denominator` (labels of two timings of the same run)."""

    numerator: str
    denominator: str
    p50_ratio: float


@dataclass(frozen=True)
class BenchResult:
    config: str
    device: str
    threads: int
    iters: int
    warmup: int
    sequence_length: int
    full_tokens: int  # backbone tokens of a full window (cached-full-seq, recompute before pruning)
    serving_tokens: int  # backbone tokens of the pruned serving sequence (cached, cached+flex)
    tokenizer_note: str
    timings: list[Timing]
    ratios: list[Ratio]

    def to_json(self) -> dict:
        return asdict(self)


def bench_tokenizer(cfg: ModelConfig) -> tuple[Tokenizer, str]:
    """The config's own tokenizer where it needs no files; else bytes, since no CLIP vocab is guaranteed.

    Token ids only index the embedding table and the sequence length is the same (context_length),
    so the stand-in costs the same as CLIP BPE would.
    """
    if cfg.text.tokenizer == "bytes":
        return build_tokenizer(cfg.text, None), "config's byte tokenizer"
    note = f"ByteTokenizer({cfg.text.context_length}) stands in for CLIP BPE (no CLIP vocab needed; same length)"
    return ByteTokenizer(cfg.text.context_length), note


def synthetic_window(cfg: ModelConfig, seed: int) -> list[WireObservation]:
    """A full window of random camera frames (uint8, D415 size) and 7-D states."""
    rng = np.random.default_rng(seed)
    return [
        WireObservation(images={c: rng.integers(0, 256, CAMERA_SHAPE, dtype=np.uint8) for c in cfg.cameras},
                        state=np.r_[rng.normal(size=6), 1.0].astype(np.float32))
        for _ in range(cfg.sequence_length)
    ]


def step_with_decoders(engine: PolicyEngine, decoders: nn.ModuleDict, history: EpisodeHistory, obs: WireObservation,
                       noise: torch.Tensor) -> np.ndarray:
    """`engine.step` plus every knowledge decoder on the newest timestep's <dream> outputs of both views.

    This is what serving the training forward would cost; the engine refuses decoder models, so the
    step is spelled out here with the engine's own preprocessing and precision context.
    """
    model, k = engine.model, engine.cfg.dream_queries_per_view
    history.frames.append(engine.encode([obs])[0])
    with engine.inference_context():  # the same inference_mode/autocast policy as engine.step
        # the pruned serving sequence still computes the newest timestep's <dream> outputs, all a decoder reads
        outputs = model.split_queries(model.run_backbone_newest(history.text, torch.stack(list(history.frames))[None]))
        for modality, decoder in decoders.items():
            for view in range(len(engine.cfg.cameras)):
                decoder(outputs[modality][:, view * k : (view + 1) * k])
        actions = model.action_head.sample(outputs["action"].float(), noise=noise)
    return actions[0].float().cpu().numpy()


def _full_history(engine: PolicyEngine, window: list[WireObservation]) -> EpisodeHistory:
    """An episode whose cache already holds a full window, so every timed step is a steady-state one."""
    history = engine.start_episode(INSTRUCTION)
    history.frames.extend(engine.encode(window))  # one encoder pass; the deque keeps the newest S
    return history


def serving_steps(cfg: ModelConfig, tokenizer: Tokenizer, device: torch.device, seed: int,
                  variants: Sequence[str] = VARIANTS,
                  precisions: Sequence[Precision] = PRECISIONS) -> dict[tuple[str, Precision], Step]:
    """One zero-argument step per (variant, precision), all sharing the same model weights and inputs.

    The decoders are built exactly as `DreamVLA(with_decoders=True)` builds them; they read only the
    backbone's outputs, so pairing them with the serving model costs what a decoder model would.
    """
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown benchmark variant or precision {unknown}; variants: {list(VARIANTS)}, "
                         f"precisions: {list(PRECISIONS)}")
    torch.manual_seed(seed)
    model = DreamVLA(cfg, with_decoders=False, load_pretrained=False)
    decoders = build_decoders(cfg).to(device).eval() if DECODERS in variants else None
    window = synthetic_window(cfg, seed)
    noise = torch.randn((1, cfg.action.chunk, cfg.action.dim), generator=torch.Generator().manual_seed(seed))
    noise = noise.to(device)
    steps: dict[tuple[str, Precision], Step] = {}
    for precision in precisions:
        engines = {CACHED: PolicyEngine(model, None, tokenizer, device=device, precision=precision),
                   FULL_SEQ: PolicyEngine(model, None, tokenizer, device=device, precision=precision, prune=False),
                   FLEX: PolicyEngine(model, None, tokenizer, device=device, precision=precision, attention="flex")}
        for variant in variants:
            engine = engines.get(variant, engines[CACHED])  # recompute and decoders: the serving engine
            if variant == RECOMPUTE:
                steps[variant, precision] = partial(engine.step_recompute, INSTRUCTION, window, noise=noise)
            elif variant == DECODERS:
                steps[variant, precision] = partial(step_with_decoders, engine, decoders,
                                                    _full_history(engine, window), window[-1], noise)
            else:  # each cached variant steps its own history
                steps[variant, precision] = partial(engine.step, _full_history(engine, window), window[-1], noise=noise)
    return steps


def time_interleaved(steps: dict[tuple[str, Precision], Step], iters: int, warmup: int,
                     device: torch.device) -> dict[tuple[str, Precision], list[float]]:
    """Milliseconds per call of each step over `iters` rounds after `warmup` untimed rounds.

    Round-robin with a rotating start so no variant always runs first (cold caches) or after the same
    neighbour.
    """
    keys = list(steps)
    samples: dict[tuple[str, Precision], list[float]] = {key: [] for key in keys}
    for round_ in range(warmup + iters):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            steps[key]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = (time.perf_counter() - start) * 1e3
            if round_ >= warmup:
                samples[key].append(elapsed)
    return samples


def summarize(samples: dict[tuple[str, Precision], list[float]]) -> list[Timing]:
    timings = []
    for (variant, precision), ms in samples.items():
        p50, p95 = np.percentile(ms, [50, 95])
        timings.append(Timing(variant, precision, float(p50), float(p95), float(np.mean(ms))))
    return timings


def ratios(timings: list[Timing]) -> list[Ratio]:
    """The comparisons the benchmark exists for, each from p50s of the same run (those whose two variants ran).

    Each ratio reads as a speed-up: today's or the costlier way over the serving step (cached over flex:
    what FlexAttention gains).
    """
    p50 = {t.label: t.p50_ms for t in timings}
    pairs = [(f"{v} {p}", f"{CACHED} {p}") for v in (RECOMPUTE, FULL_SEQ, DECODERS) for p in PRECISIONS]
    pairs += [(f"{CACHED} {p}", f"{FLEX} {p}") for p in PRECISIONS]
    pairs += [(f"{v} fp32", f"{v} bf16") for v in VARIANTS]
    return [Ratio(num, den, p50[num] / p50[den]) for num, den in pairs if num in p50 and den in p50]


def run_model_bench(cfg: ModelConfig, *, iters: int, warmup: int, device: str = "cpu", seed: int = 0,
                    variants: Sequence[str] = VARIANTS, precisions: Sequence[Precision] = PRECISIONS) -> BenchResult:
    """Build the model once, time the variants in this process, and derive the ratios."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    tokenizer, tokenizer_note = bench_tokenizer(cfg)
    steps = serving_steps(cfg, tokenizer, dev, seed, variants, precisions)
    timings = summarize(time_interleaved(steps, iters, warmup, dev))
    return BenchResult(
        config=cfg.name, device=str(dev), threads=torch.get_num_threads(), iters=iters, warmup=warmup,
        sequence_length=cfg.sequence_length, full_tokens=cfg.sequence_tokens,
        serving_tokens=cfg.sequence_length * cfg.context_tokens + cfg.query_tokens, tokenizer_note=tokenizer_note,
        timings=timings, ratios=ratios(timings),
    )
