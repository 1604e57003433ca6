"""Fixtures shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny DreamVLA checkpoint (random weights) written by `dv-model init`, once per module."""
    from policy_server.cli.model import main as dv_model

    out = tmp_path_factory.mktemp("serve") / "tiny"
    assert dv_model(["init", "--config", "tiny", "--out", str(out)]) == 0
    return out
