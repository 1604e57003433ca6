"""Runs `train` on the fake caches in a process of its own: `python train_worker.py RUN OPTIONS_JSON [--resume]`.

The kill -9 and DDP tests start it (under torchrun's environment variables for DDP)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_fakes import fake_caches  # noqa: E402

from policy_server.model.config import preset  # noqa: E402
from policy_server.training.train import TrainOptions, train  # noqa: E402

if __name__ == "__main__":
    cfg = preset("tiny")
    opts = TrainOptions.model_validate_json(sys.argv[2])
    train(fake_caches(cfg), cfg, Path(sys.argv[1]), opts, resume="--resume" in sys.argv)
