"""Small shared pieces for the engine tests: a tiny config and a helper to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from byol.config import TrainConfig, preset

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides) -> TrainConfig:
    """A config that trains a few steps on synthetic data in seconds (width-4 ResNet, small heads)."""
    values = dict(
        data="synthetic", epochs=2, width=4, projector_hidden=32, projector_dim=16, predictor_hidden=32,
        batch_size=64, subset=256, eval_bank_size=256, eval_query_size=100, knn_k=20, eval_every=1.0,
        warmup_epochs=0.0, log_every=1, precision="fp32",
    )
    values.update(overrides)
    return preset("cpu", **values)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m byol ARGS` in a subprocess, with the project's cache kept out of the way."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "byol", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
