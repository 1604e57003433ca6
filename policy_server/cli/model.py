"""`dv-model`: create, inspect, import and try DreamVLA checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from policy_server.cli.common import run_subcommand

console = Console()


def _cmd_init(args: argparse.Namespace) -> int:
    import torch

    from policy_server.model.checkpoint import save_checkpoint
    from policy_server.model.config import preset
    from policy_server.model.dreamvla import DreamVLA
    from policy_server.model.text import build_tokenizer

    cfg = preset(args.config)
    torch.manual_seed(args.seed)
    model = DreamVLA(cfg, with_decoders=True, load_pretrained=True)
    meta = save_checkpoint(model, args.out, source=f"init:{cfg.name}:seed{args.seed}",
                           tokenizer=build_tokenizer(cfg.text, None))
    console.print(f"wrote {args.out} ({cfg.name}, content hash {meta.content_hash[:12]})")
    return 0


def _info_table(info: dict) -> Table:
    table = Table(title=f"DreamVLA {info['config']}")
    for col in ("submodule", "trainable", "frozen", "at inference"):
        table.add_column(col, justify="left" if col == "submodule" else "right")
    for name, row in info["submodules"].items():
        table.add_row(name, f"{row['trainable']:,}", f"{row['frozen']:,}", "yes" if row["inference"] else "no")
    t = info["totals"]
    table.add_row("[b]total[/b]", f"[b]{t['trainable']:,}[/b]", f"[b]{t['frozen']:,}[/b]", "")
    table.add_row("[b]trainable used at inference[/b]", f"[b]{t['trainable_inference']:,}[/b]", "", "")
    return table


def _cmd_info(args: argparse.Namespace) -> int:
    from policy_server.model.checkpoint import read_meta
    from policy_server.model.config import preset
    from policy_server.model.summary import describe

    cfg = preset(args.config) if args.config else read_meta(Path(args.checkpoint)).model
    info = describe(cfg)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console.print(_info_table(info))
    tok = info["tokens"]
    console.print(f"tokens per step {tok['per_step']} (context {tok['context_per_step']}, queries "
                  f"{tok['queries_per_step']}); window {tok['sequence_length']} steps = {tok['sequence']} tokens")
    console.print(f"dream queries: {', '.join(info['dream'])}; cameras: {', '.join(info['inputs']['cameras'])}; "
                  f"state: {info['inputs']['state']}; actions {info['outputs']['actions']}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from policy_server.model.config import preset
    from policy_server.model.official_import import import_official

    target = preset(args.config) if args.config else None
    report = import_official(Path(args.ckpt), Path(args.mae), Path(args.out),
                             clip=Path(args.clip) if args.clip else None, target=target, trained_on=args.trained_on)
    console.print(report.summary())
    return 0


def _cmd_try(args: argparse.Namespace) -> int:
    """Run the policy on synthetic observations: the smallest end-to-end check of a checkpoint."""
    from dreamvla_client.protocol import WireObservation
    from policy_server.serving.engine import PolicyEngine

    engine = PolicyEngine.from_checkpoint(Path(args.checkpoint), device=args.device)
    rng = np.random.default_rng(args.seed)
    history = engine.start_episode(args.instruction)
    scale = np.asarray(engine.meta.normalization.action_scale, dtype=np.float32)
    state = np.array([0.45, 0.0, 0.40, np.pi, 0.0, 0.0, 1.0], dtype=np.float32)  # a home pose, gripper open
    table = Table(title=f"{engine.cfg.name} ({engine.meta.source}): '{args.instruction}' "
                        f"({engine.precision} on {engine.device}); robot units, before the safety envelope")
    for col in ("step", "k", "dx dy dz [mm]", "droll dpitch dyaw [mrad]", "gripper"):
        table.add_column(col, justify="right")
    for step in range(args.steps):
        images = {c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in engine.cfg.cameras}
        obs = WireObservation(images=images, state=state)
        chunk = engine.step(history, obs) * scale  # robot units (docs/conventions.md)
        for k, a in enumerate(chunk):
            table.add_row(str(step), str(k), " ".join(f"{v * 1e3:+.1f}" for v in a[:3]),
                          " ".join(f"{v * 1e3:+.1f}" for v in a[3:6]), "open" if a[6] >= 0.5 else "closed")
    console.print(table)
    return 0


def _cmd_dream(args: argparse.Namespace) -> int:
    from policy_server.training.dreams import write_dreams

    for path in write_dreams(Path(args.checkpoint), Path(args.dataset), args.episode, args.frames, Path(args.out)):
        console.print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a checkpoint from a named config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("info", help="parameter counts, token budget and expected inputs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("checkpoint", nargs="?", help="checkpoint directory")
    src.add_argument("--config", help="a named config instead of a checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("import-official", help="convert a released DreamVLA/Seer .pth into our format")
    p.add_argument("--ckpt", required=True, help="the authors' .pth (model_state_dict inside)")
    p.add_argument("--mae", required=True, help="mae_pretrain_vit_base.pth")
    p.add_argument("--clip", help="local CLIP directory (default: openai/clip-vit-base-patch32 in the HF cache)")
    p.add_argument("--config", help="retarget to a named config (default: inferred from the file)")
    p.add_argument("--trained-on", metavar="DATA",
                   help="calvin, libero or real: the data the file was trained on, which fixes its state, image and "
                        "action conventions (default: recognised from a released file's shapes; libero is refused, "
                        "docs/model.md)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("try", help="run a checkpoint on synthetic observations and print the actions")
    p.add_argument("checkpoint")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--instruction", default="pick up the bottle")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_try)

    p = sub.add_parser("dream", help="PNGs of the predicted dynamic region and depth at t+3 beside the teacher's")
    p.add_argument("checkpoint", help="a checkpoint trained with its decoders (dv-train without --action-only)")
    p.add_argument("--dataset", required=True, help="a recorded dataset with a dv-features cache for this config")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--frames", type=int, nargs="*", help="frame numbers (default: four spread over the episode)")
    p.add_argument("--out", default="dreams", help="output directory (default ./dreams)")
    p.set_defaults(func=_cmd_dream)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_subcommand(build_parser(), argv, console)


if __name__ == "__main__":
    sys.exit(main())
