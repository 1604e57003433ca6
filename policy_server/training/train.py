"""The training loop behind `dv-train`: one function from feature caches to a run directory of checkpoints.

The optimisation is the released recipe (docs/model.md): AdamW (weight decay 1e-4) over the trainable
parameters, `transformers`' cosine schedule with linear warm-up, gradient-norm clipping (0.1), optional EMA,
bf16 autocast on CUDA and fp32 on CPU, gradient accumulation. Under torchrun every process runs this same
function (DDP); rank 0 alone logs, validates and writes checkpoints.

Determinism: the batch order and each window's augmentation are functions of (seed, step) (`loader.py`), and
the global torch RNG (diffusion timesteps and noise, condition dropout, dropout) is re-seeded from (seed,
step, micro-batch) before every forward. So a resumed run continues bit for bit, and one process that
accumulates k micro-batches computes what k DDP ranks compute, up to the order of floating-point sums.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.parallel import DistributedDataParallel
from transformers import get_cosine_schedule_with_warmup

from policy_server.model.checkpoint import (
    Normalization,
    default_normalization,
    fit_state_normalization,
    load_checkpoint,
    read_meta,
)
from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import Tokenizer, build_tokenizer
from policy_server.training import dist as D
from policy_server.training.data import CacheLike, WindowReader, build_index, split_episodes
from policy_server.training.loader import Shard, WindowBatches, collate, make_loader, to_train_batch
from policy_server.training.metrics import MetricsLog, format_losses, progress_bar, read_metrics, truncate_metrics
from policy_server.training.plot import plot_losses
from policy_server.training.state import (
    ResumeError,
    latest_checkpoint,
    load_training_state,
    remove_partial_checkpoints,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)

log = logging.getLogger(__name__)

# dv-eval (or any evaluator) as a hook: (servable checkpoint directory, step) -> numbers to log.
EvalHook = Callable[[Path, int], Mapping[str, float]]


class TrainOptions(BaseModel):
    """Everything about a run that is not the model config (the CLI's flags)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=1)
    batch: int = Field(8, ge=1, description="windows per micro-batch per process")
    accum: int = Field(1, ge=1, description="micro-batches accumulated per optimiser step")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int | None = Field(None, ge=0, description="default: 5% of the steps")
    weight_decay: float = 1e-4
    grad_clip: float | None = Field(0.1, gt=0, description="None: no clipping")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the served weights; None: off")
    seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_every: int = Field(200, ge=0)
    val_windows: int = Field(64, ge=1)
    save_every: int = Field(200, ge=1)
    keep: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    stop_at: int | None = Field(None, ge=1, description="end this session at that step (resume later)")
    eval_every: int = Field(0, ge=0)
    workers: int = Field(0, ge=0)
    decoders: bool = True
    augment: bool = True
    compile: bool = False
    threads: int | None = Field(None, ge=1)
    device: str | None = None
    progress: bool = True
    tensorboard: bool = True


@dataclass
class RunResult:
    run: Path
    step: int
    checkpoint: Path | None
    losses: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: ModelConfig, caches: list[CacheLike], *, decoders: bool,
                init: Path | None) -> tuple[DreamVLA, Normalization, Tokenizer]:
    """A fresh model (pretrained towers as the config names them) with the state statistics of `caches`, or one
    started from a checkpoint of ours, which keeps that checkpoint's normalisation (its weights expect it); an
    init checkpoint exported without decoders gets freshly initialised ones."""
    if init is None:
        model = DreamVLA(cfg, with_decoders=decoders, load_pretrained=True)
        mean, std = fit_state_normalization(np.concatenate([np.asarray(c.state) for c in caches]))
        norm = default_normalization(cfg).model_copy(update={"state_mean": mean, "state_std": std})
        return model, norm, build_tokenizer(cfg.text, None)
    source, meta, tokenizer = load_checkpoint(init, with_decoders=False)
    if meta.model != cfg:
        raise ValueError(f"--init {init} is config {meta.model.name!r}, which differs from the requested "
                         f"{cfg.name!r}: leave --config out to train the checkpoint's own config")
    model = DreamVLA(cfg, with_decoders=decoders, load_pretrained=False)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.startswith("decoders.") for k in missing):
        raise ValueError(f"{init} does not fit {cfg.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, meta.normalization, tokenizer


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused: one kernel over every parameter instead of a dozen small ops per tensor (tiny has 194
    tensors; its optimiser step falls from ~37 to ~6 ms on CPU, `dv-bench train`). Same update rule."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


class Ema:
    """Exponential moving average of the trainable parameters (the weights a run serves when enabled)."""

    def __init__(self, model: DreamVLA, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: DreamVLA) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters() if p.requires_grad],
                             1.0 - self.decay)

    def weights(self, model: DreamVLA) -> dict[str, torch.Tensor]:
        return model.state_dict() | dict(zip(self.names, self.shadow, strict=True))


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    train: WindowReader
    val: WindowReader | None


def prepare_data(caches: list[CacheLike], cfg: ModelConfig, tokenizer: Tokenizer, norm: Normalization,
                 opts: TrainOptions) -> Data:
    """Check the caches against the config, split episodes, index windows, tokenise every instruction once."""
    r = cfg.vision.image_size
    for i, cache in enumerate(caches):
        missing = [c for c in cfg.cameras if c not in cache.images]
        if missing:
            raise ValueError(f"dataset {i} has no cached images for camera(s) {missing} (it has {cache.cameras})")
        shape = cache.images[cfg.cameras[0]].shape[1:]
        if shape != (r, r, 3):
            raise ValueError(f"dataset {i} caches images of {shape}, config {cfg.name!r} needs ({r}, {r}, 3): "
                             "rebuild its features for this config")
    text_ids = [tokenizer(list(c.instructions)).numpy() for c in caches]
    train_eps, val_eps = split_episodes(caches, opts.val_fraction, opts.seed)
    dynamic = opts.decoders and "dynamic" in cfg.dream
    depth = opts.decoders and "depth" in cfg.dream
    kw = dict(cfg=cfg, text_ids=text_ids, norm=norm, depth=depth, tracks=dynamic, future_images=dynamic)
    train = WindowReader(caches, build_index(caches, train_eps, cfg.sequence_length), augment=opts.augment, **kw)
    val_index = build_index(caches, val_eps, cfg.sequence_length)
    if len(val_index) > opts.val_windows:
        val_index = val_index.subset(np.sort(np.random.default_rng(opts.seed).choice(
            len(val_index), opts.val_windows, replace=False)))
    val = WindowReader(caches, val_index, augment=False, **kw) if len(val_index) else None
    return Data(train, val)


def supplied_targets(reader: WindowReader) -> set[str]:
    return {"dynamic"} | ({"depth"} if reader.depth else set())


# ---------------------------------------------------------------------------------------------- loop


def cpu_threads(d: D.Dist) -> int:
    """This process's share of the CPU cores it may run on: torch's default is every core per process, so N
    torchrun processes on one CPU host would oversubscribe N-fold (`dv-bench train` shows what an oversubscribed
    core costs: several times the step time)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local))


def micro_seed(seed: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def validate(model: DreamVLA, reader: WindowReader, opts: TrainOptions, device: torch.device) -> dict[str, float]:
    """Mean per-head loss over the held-out windows, with fixed diffusion noise (comparable across steps)."""
    was = model.training
    model.eval()
    torch.manual_seed(opts.seed + 1)
    sums: dict[str, float] = {}
    n = 0
    for start in range(0, len(reader), opts.batch):
        items = list(range(start, min(start + opts.batch, len(reader))))
        batch = to_train_batch(collate([reader.read(i) for i in items]), model.cfg, device)
        with autocast(device):
            losses = model(batch)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(items)
        n += len(items)
    model.train(was)
    return {f"loss/{k}": v / n for k, v in sums.items()}


def accumulate_gradients(net: torch.nn.Module, batches: Iterator[dict], cfg: ModelConfig, opts: TrainOptions,
                         shard: Shard, step: int, d: D.Dist) -> tuple[dict[str, float], float]:
    """Forward and backward this rank's `accum` micro-batches of `step` (DDP syncs gradients on the last one);
    returns the step's mean loss per head and the seconds spent loading."""
    net.zero_grad(set_to_none=True)
    sums: torch.Tensor | None = None
    keys: list[str] = []
    loading_s = 0.0
    for a in range(opts.accum):
        t0 = time.perf_counter()
        batch = to_train_batch(next(batches), cfg, d.device)
        loading_s += time.perf_counter() - t0
        torch.manual_seed(micro_seed(opts.seed, step, shard.micro_index(a)))
        sync = net.no_sync() if d.enabled and a < opts.accum - 1 else contextlib.nullcontext()
        with sync, autocast(d.device):
            losses = net(batch)
            (losses["total"] / opts.accum).backward()
        keys = list(losses)
        vals = torch.stack([v.detach().float() for v in losses.values()]) / opts.accum
        sums = vals if sums is None else sums + vals
    return dict(zip(keys, sums.tolist(), strict=True)), loading_s


def train(caches: list[CacheLike], cfg: ModelConfig, run: Path, opts: TrainOptions, *, init: Path | None = None,
          resume: bool = False, evaluate: EvalHook | None = None, source: str = "dv-train",
          trained_on: dict[str, object] | None = None) -> RunResult:
    """Train `cfg` on the caches into `run`; with `resume`, continue from run's latest checkpoint. `trained_on`
    (datasets and seeds) is written into every checkpoint for dv-eval's seed guard."""
    d = D.init_distributed(opts.device)
    threads = torch.get_num_threads()
    try:
        return _train(caches, cfg, Path(run), opts, d, init=init, resume=resume, evaluate=evaluate, source=source,
                      trained_on=trained_on)
    finally:
        torch.set_num_threads(threads)  # the setting is process-wide: a caller (a test, a notebook) gets its own back
        D.shutdown(d)


def _train(caches: list[CacheLike], cfg: ModelConfig, run: Path, opts: TrainOptions, d: D.Dist, *,
           init: Path | None, resume: bool, evaluate: EvalHook | None, source: str,
           trained_on: dict[str, object] | None) -> RunResult:
    torch.set_num_threads(opts.threads or cpu_threads(d))
    ckpt = latest_checkpoint(run) if resume else None
    if resume and ckpt is None:
        raise ResumeError(f"--resume: {run} has no checkpoint to resume from")
    if not resume and latest_checkpoint(run) is not None:  # every rank raises: none waits for the others
        raise ValueError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    torch.manual_seed(opts.seed)
    model, norm, tokenizer = build_model(cfg, caches, decoders=opts.decoders, init=init)
    if ckpt is not None:
        norm = read_meta(ckpt).normalization  # the run's own, whatever the data or the code computes today
    data = prepare_data(caches, cfg, tokenizer, norm, opts)
    shard = Shard(opts.batch, opts.accum, d.rank, d.world)
    model.to(d.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, opts.lr, opts.weight_decay)
    warmup = opts.warmup_steps if opts.warmup_steps is not None else max(1, opts.steps // 20)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, opts.steps)
    ema = Ema(model, opts.ema) if opts.ema else None
    step = 0
    if ckpt is not None:
        state = load_training_state(ckpt)
        step = _restore(model, optimizer, scheduler, ema, ckpt, state)
        log.info("resuming %s at step %d", ckpt, step)
        now = {"seed": opts.seed, "global_batch": shard.global_batch}
        if state.get("data") != now:
            log.warning("resuming with %s where the run had %s: the data order changes from here on (the run "
                        "continues, but not bit for bit)", now, state.get("data"))
    untaught = opts.decoders and bool(set(cfg.dream) - supplied_targets(data.train))
    net: torch.nn.Module = model
    if d.enabled:
        net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                      find_unused_parameters=untaught)
    if opts.compile:
        net = torch.compile(net)
    stop = min(opts.steps, opts.stop_at or opts.steps)
    if d.main and ckpt is not None:
        truncate_metrics(run, step)  # before the log opens: it rewrites the file
        remove_partial_checkpoints(run)
    metrics = MetricsLog(run, tensorboard=opts.tensorboard) if d.main else None
    saved: Path | None = ckpt

    def save(at: int) -> Path | None:
        training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "data": {"seed": opts.seed, "global_batch": shard.global_batch}, "options": opts.model_dump_json()}
        path = None
        if d.main:
            if ema is not None:
                training["ema"] = list(ema.shadow)
            path = save_run_checkpoint(run, at, model, training, source=f"{source}:step{at}", tokenizer=tokenizer,
                                       normalization=norm, weights=ema.weights(model) if ema else None,
                                       keep=opts.keep, trained_on=trained_on)
        D.barrier(d)
        return path

    sampler = WindowBatches(len(data.train), shard, opts.seed, step, stop)
    loader = make_loader(data.train, sampler, workers=opts.workers, pin=d.device.type == "cuda")
    batches = iter(loader)
    model.train()
    window: dict[str, float] = {}
    last: dict[str, float] = {}
    t_window, data_s = time.perf_counter(), 0.0
    with progress_bar(opts.progress and d.main) as bar:
        task = bar.add_task("train", total=stop, completed=step, rate="", losses="")
        while step < stop:
            losses, loading_s = accumulate_gradients(net, batches, cfg, opts, shard, step, d)
            data_s += loading_s
            losses["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, opts.grad_clip or float("inf")))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            bar.update(task, completed=step)
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + v
            window["_n"] = window.get("_n", 0) + 1
            if step % opts.log_every == 0 or step == stop:
                last = _log_window(window, t_window, data_s, step, shard, scheduler, metrics, bar, task, d)
                window, t_window, data_s = {}, time.perf_counter(), 0.0
            if data.val is not None and opts.val_every and (step % opts.val_every == 0 or step == stop):
                if d.main:
                    metrics.write("val", step, validate(model, data.val, opts, d.device))
                D.barrier(d)
            do_eval = evaluate is not None and opts.eval_every and step % opts.eval_every == 0
            if step % opts.save_every == 0 or step == stop or do_eval:
                saved = save(step)
            if do_eval and d.main:
                metrics.write("eval", step, dict(evaluate(saved, step)))
    png = None
    if d.main:
        metrics.close()
        png = plot_losses(read_metrics(run), run / "losses.png")
    return RunResult(run=run, step=step, checkpoint=saved, losses=last, plot=png)


def _restore(model: DreamVLA, optimizer: torch.optim.Optimizer, scheduler, ema: Ema | None, ckpt: Path,
             state: dict) -> int:
    """Load a run checkpoint's weights and training state in place; returns its step."""
    from safetensors.torch import load_file

    weights = state.get("model") or load_file(str(ckpt / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ResumeError(f"{ckpt} does not fit this run's model (decoders on/off changed?): missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        if "ema" not in state:
            raise ResumeError(f"{ckpt} was trained without --ema: resume it without --ema")
        for dst, src in zip(ema.shadow, state["ema"], strict=True):
            dst.copy_(src)
    set_rng_state(state["rng"])
    return int(state["step"])


def _log_window(window: dict[str, float], t_window: float, data_s: float, step: int, shard: Shard, scheduler,
                metrics: MetricsLog | None, bar, task, d: D.Dist) -> dict[str, float]:
    n = window.pop("_n")
    keys = list(window)
    mean = D.all_mean(torch.tensor([window[k] / n for k in keys], dtype=torch.float64), d).tolist()
    elapsed = max(time.perf_counter() - t_window, 1e-9)
    values = {("grad_norm" if k == "grad_norm" else f"loss/{k}"): v for k, v in zip(keys, mean, strict=True)}
    lr = scheduler.get_last_lr()[0]
    values |= {"lr": lr, "steps_per_s": n / elapsed, "samples_per_s": n * shard.global_batch / elapsed,
               "data_share": data_s / elapsed}
    if metrics is not None:
        metrics.write("train", step, values)
        bar.update(task, completed=step, rate=f"{values['steps_per_s']:.2f} it/s", losses=format_losses(values, lr))
    return values
