"""Run checkpoints: a servable model directory plus the state that resumes training bit for bit.

RUN/checkpoints/step_000100/ holds our checkpoint format (config.json + model.safetensors, what `dv-serve`
loads), `trained_on.json` (the datasets and the sim seeds of their episodes) and `training_state.pt`:
optimizer, scheduler, step, EMA, and the RNG states of torch, numpy and Python. That file is a `torch.save` of
tensors, numbers, strings, lists and dicts only, so it loads with `weights_only=True` (nothing in it is
unpickled as code). A checkpoint is written under a temporary name and renamed into place, then
`RUN/checkpoints/latest` is replaced to name it: a run killed at any moment leaves the previous checkpoint
intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from policy_server.model.checkpoint import Normalization, save_checkpoint
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import Tokenizer

STATE_FILE = "training_state.pt"
TRAINED_ON_FILE = "trained_on.json"  # read by dv-eval (robot/evaluation/cli.py), which never imports this module
LATEST = "latest"


class ResumeError(ValueError):
    """A run directory that cannot be resumed, with the reason."""


def rng_state() -> dict[str, object]:
    """Every global RNG as tensors and plain lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_write(path: Path, write) -> None:
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _fsync_write(tmp, lambda f: f.write(text.encode()))
    os.replace(tmp, path)


def save_run_checkpoint(run: Path, step: int, model: DreamVLA, training: dict[str, object], *, source: str,
                        tokenizer: Tokenizer, normalization: Normalization,
                        weights: dict[str, torch.Tensor] | None = None, keep: int = 3,
                        trained_on: dict[str, object] | None = None) -> Path:
    """Write RUN/checkpoints/step_N atomically and point `latest` at it; keep the newest `keep` checkpoints.

    `weights` replaces the model's own tensors in model.safetensors (the EMA weights, which serving should
    get); the raw weights then travel in the training state. `trained_on` (the datasets and the sim seeds of
    their episodes) goes into trained_on.json beside config.json, so that `dv-eval` refuses to score the
    checkpoint on a layout it was trained on."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if weights is not None:
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        training = training | {"model": raw}
        model.load_state_dict(weights)
    try:
        save_checkpoint(model, tmp, source=source, tokenizer=tokenizer, normalization=normalization)
    finally:
        if weights is not None:
            model.load_state_dict(training["model"])
    _fsync_write(tmp / STATE_FILE, lambda f: torch.save(training | {"step": step}, f))
    if trained_on is not None:
        _fsync_write(tmp / TRAINED_ON_FILE, lambda f: f.write(json.dumps(trained_on, indent=1).encode()))
    if final.exists():  # a re-save of the same step (a resumed run that stops where it started)
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(run: Path) -> None:
    """Delete checkpoints a killed run left half-written (never named by `latest`, never read)."""
    for tmp in (run / "checkpoints").glob(".step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(run: Path) -> Path | None:
    pointer = run / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = run / "checkpoints" / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"{pointer} names {path.name}, which has no {STATE_FILE}")
    return path


def load_training_state(checkpoint: Path) -> dict[str, object]:
    try:
        return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ResumeError(f"{checkpoint / STATE_FILE} cannot be read as a weights-only training state: {exc}") from exc
