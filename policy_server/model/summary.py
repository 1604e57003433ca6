"""What a model is made of: parameter counts per submodule and the token budget, for `dv-model info`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dreamvla_client.conventions import STATE_LAYOUT
from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import DreamVLA

# Built and run only in training; the serving engine never constructs them.
TRAINING_ONLY = ("decoders.",)


def _groups(model: DreamVLA) -> dict[str, list[nn.Parameter]]:
    """Top-level submodules, with the per-modality dicts split one level further."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        depth = 2 if parts[0] in ("decoders", "dream_queries", "patch_projectors", "cls_projectors") else 1
        groups.setdefault(".".join(parts[:depth]), []).append(param)
    return groups


def parameter_report(model: DreamVLA) -> dict[str, Any]:
    """Counts (trainable / frozen) per submodule and in total; works on the meta device."""
    rows = {}
    for name, params in _groups(model).items():
        rows[name] = {
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "frozen": sum(p.numel() for p in params if not p.requires_grad),
            "inference": not name.startswith(TRAINING_ONLY),
        }
    trainable = sum(r["trainable"] for r in rows.values())
    frozen = sum(r["frozen"] for r in rows.values())
    return {
        "submodules": rows,
        "totals": {
            "trainable": trainable,
            "frozen": frozen,
            "all": trainable + frozen,
            "trainable_inference": sum(r["trainable"] for r in rows.values() if r["inference"]),
            "all_inference": sum(r["trainable"] + r["frozen"] for r in rows.values() if r["inference"]),
        },
    }


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """Token budget and the inputs/outputs a client must provide/expect."""
    with torch.device("meta"):
        model = DreamVLA(cfg, with_decoders=True, load_pretrained=False)
    r = cfg.vision.image_size
    return {
        "config": cfg.name,
        **parameter_report(model),
        "tokens": {
            "context_per_step": cfg.context_tokens,
            "queries_per_step": cfg.query_tokens,
            "per_step": cfg.tokens_per_step,
            "sequence_length": cfg.sequence_length,
            "sequence": cfg.sequence_tokens,
        },
        "inputs": {
            "instruction": "text",
            "cameras": {c: {"shape": [r, r, 3], "dtype": "uint8", "color_order": "rgb",
                            "note": "any resolution; resized and centre-cropped on the server"} for c in cfg.cameras},
            "state": list(STATE_LAYOUT),
        },
        "outputs": {"actions": [cfg.action.chunk, cfg.action.dim], "convention": cfg.action.model_dump()},
        "dream": list(cfg.dream_order),
    }
