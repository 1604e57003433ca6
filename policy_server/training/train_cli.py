"""`dv-train`: fine-tune (or train) DreamVLA on one or more feature-cached datasets, resumably, under torchrun.

    dv-train --data DS1 DS2 --config tiny --out runs/tiny --steps 2000 --batch 8
    dv-train --data DS1 --out runs/tiny --steps 2000 --resume          # continue after a stop or a kill
    torchrun --nproc-per-node 8 -m policy_server.training.train_cli --data DS1 --config paper-real ...

Every dataset needs its `dv-features` cache for the chosen config. The run directory gets checkpoints
(servable by `dv-serve --ckpt RUN/checkpoints/step_N`), metrics.jsonl, losses.png and TensorBoard files when
tensorboard is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler

from policy_server.cli.common import run_subcommand
from policy_server.model.config import DREAM_ORDER, ModelConfig

if TYPE_CHECKING:
    from policy_server.training.train import EvalHook

console = Console()
log = logging.getLogger("dv-train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dv-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset directories (one task each)")
    p.add_argument("--config", help="tiny | paper-real | paper-calvin (default: the --init checkpoint's)")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--init", type=Path, help="start from one of our checkpoints")
    init.add_argument("--init-official", type=Path, metavar="FILE", help="start from a released DreamVLA .pth")
    p.add_argument("--mae", type=Path, help="MAE ViT-B/16 weights, with --init-official")
    p.add_argument("--clip", type=Path, help="CLIP text directory, with --init-official")
    p.add_argument("--out", type=Path, help="run directory (default runs/train-<config>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps of the whole run")
    p.add_argument("--stop-at", type=int, help="end this session at that step (resume later)")
    p.add_argument("--batch", type=int, default=8, help="windows per micro-batch per process")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default 5%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=0.1, help="gradient-norm clip; 0 = off")
    p.add_argument("--ema", type=float, help="EMA decay of the saved weights (e.g. 0.999); default off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="episodes held out per dataset")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-windows", type=int, default=64)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--action-only", action="store_true", help="no knowledge decoders (action loss only)")
    p.add_argument("--dream", nargs="*", choices=list(DREAM_ORDER), metavar="MODALITY",
                   help="the <dream> modalities of a fresh --config model (default: the config's), e.g. "
                        "`--dream dynamic`; `--dream` alone trains the vanilla model: no <dream> queries and no "
                        "knowledge losses (the ablation of docs/training.md)")
    p.add_argument("--no-augment", action="store_true", help="no random shifts")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--flow", choices=["dis", "cotracker"], help="which cached tracks (default: the one there)")
    p.add_argument("--gap", type=int, help="which cached track gap (default: the one there)")
    p.add_argument("--eval-every", type=int, default=0, help="closed-loop dv-eval every N steps (0 = never)")
    p.add_argument("--eval-tasks", nargs="+", help="tasks dv-eval runs (default: every dataset's folder name)")
    p.add_argument("--eval-seeds", default="5000-5002", help="sim seeds of the periodic dv-eval (A-B inclusive)")
    p.add_argument("--eval-max-episode-s", type=float, help="episode time limit of the periodic dv-eval")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=command)
    return p


def options(args: argparse.Namespace):
    from policy_server.training.train import TrainOptions

    return TrainOptions(
        steps=args.steps, batch=args.batch, accum=args.accum, lr=args.lr, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip or None, ema=args.ema, seed=args.seed,
        val_fraction=args.val_fraction, val_every=args.val_every, val_windows=args.val_windows,
        save_every=args.save_every, keep=args.keep, log_every=args.log_every, stop_at=args.stop_at,
        workers=args.workers, decoders=not args.action_only, augment=not args.no_augment, compile=args.compile,
        threads=args.threads, device=args.device, progress=not args.no_progress, eval_every=args.eval_every,
    )


def closed_loop_eval(tasks: list[str], seeds: str, run: Path, extra: tuple[str, ...] = ()) -> EvalHook:
    """The periodic evaluation: `dv-eval` in a subprocess (the robot side never shares a process with training),
    into RUN/eval/step_N (summary and videos), its overall success rate and interval logged as split 'eval'.
    `extra`: more dv-eval arguments (e.g. --max-episode-s)."""

    def evaluate(ckpt: Path, step: int) -> dict[str, float]:
        out = run / "eval" / f"step_{step:07d}"
        cmd = [sys.executable, "-m", "robot.evaluation.cli", str(ckpt), "--task", *tasks, "--seeds", seeds,
               "--out", str(out), "--log-level", "ERROR", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("dv-eval at step %d failed (exit %d): %s", step, done.returncode,
                        (done.stdout + done.stderr).strip().splitlines()[-1:])
            return {}
        overall = json.loads((out / "summary.json").read_text())["overall"]
        return {"success_rate": overall["success_rate"], "wilson_low": overall["wilson95"][0],
                "wilson_high": overall["wilson95"][1]}

    return evaluate


def resolve_init(args: argparse.Namespace, run: Path) -> Path | None:
    """--init as given, or --init-official imported once into RUN/init (our format)."""
    if args.init_official is None:
        return args.init
    target = run / "init"
    if not (target / "config.json").is_file():
        from policy_server.model.config import preset
        from policy_server.model.official_import import import_official

        if args.mae is None:
            raise ValueError("--init-official needs --mae (the MAE ViT-B/16 file the released models were built on)")
        report = import_official(args.init_official, args.mae, target, clip=args.clip,
                                 target=preset(args.config) if args.config else None)
        console.print(report.summary())
    return target


def with_dream(cfg: ModelConfig, modalities: list[str]) -> ModelConfig:
    """`cfg` with only these <dream> modalities, validated as a whole. The name stays (the feature caches are
    keyed by it); config.json records `dream`."""
    return ModelConfig.model_validate({**cfg.model_dump(), "dream": tuple(m for m in DREAM_ORDER if m in modalities)})


def command(args: argparse.Namespace, evaluate: EvalHook | None = None) -> int:
    """Run `dv-train` from parsed arguments; `evaluate` is the periodic evaluation hook (see train.EvalHook)."""
    from policy_server.model.checkpoint import read_meta
    from policy_server.model.config import preset
    from policy_server.training.features_cache import FeatureCache, FeatureCacheError
    from policy_server.training.train import train

    logging.basicConfig(level=args.log_level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)])
    opts = options(args)
    if args.dream is not None and (args.resume or args.init or args.init_official):
        raise ValueError("--dream changes the model's queries: it applies to a fresh --config model, not to "
                         "--resume or --init (they keep their checkpoint's)")
    if args.config is None and args.init is None and args.init_official is None and not args.resume:
        raise ValueError("--config is required unless --init, --init-official or --resume names the model")
    run = args.out or Path("runs") / f"train-{args.config or 'init'}"
    init = None if args.resume else resolve_init(args, run)
    if args.resume:
        from policy_server.training.state import latest_checkpoint

        latest = latest_checkpoint(run)
        if latest is None:
            raise ValueError(f"--resume: {run} has no checkpoint")
        cfg = read_meta(latest).model
    elif init is not None:
        cfg = read_meta(init).model
    else:
        cfg = preset(args.config)
    if args.dream is not None:
        cfg = with_dream(cfg, args.dream)
    try:
        caches = [FeatureCache.open(d, cfg, flow=args.flow, gap=args.gap) for d in args.data]
    except FeatureCacheError as exc:
        raise ValueError(str(exc)) from exc
    trained_on = {"datasets": [{"path": str(d), "episodes": len(c.episodes), "seeds": c.seeds}
                               for d, c in zip(args.data, caches, strict=True)]}
    if evaluate is None and args.eval_every:
        evaluate = closed_loop_eval(args.eval_tasks or [Path(d).name for d in args.data], args.eval_seeds, run,
                                    ("--max-episode-s", str(args.eval_max_episode_s)) if args.eval_max_episode_s
                                    else ())
    result = train(caches, cfg, run, opts, init=init, resume=args.resume, evaluate=evaluate,
                   source=f"dv-train:{','.join(str(d) for d in args.data)}", trained_on=trained_on)
    if result.checkpoint is not None:
        losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in result.losses.items() if k.startswith("loss/"))
        console.print(f"step {result.step}: {losses}\ncheckpoint {result.checkpoint}"
                      + (f"\nloss curves {result.plot}" if result.plot else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_subcommand(build_parser(), argv, console)


if __name__ == "__main__":
    sys.exit(main())
