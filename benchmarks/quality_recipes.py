"""The quality benchmark's recipes: its modes (schedule, data and evaluation of each) and the variants
each compares, as `NAME:FIELD=VALUE,...` overrides of the mode's base recipe (benchmarks/quality.py runs them).

Each variant that departs from a preset says why it is here: what it was measured to do, or the question
it asks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol import runs  # noqa: E402
from byol.cli import apply_overrides  # noqa: E402
from byol.config import PRESETS, TrainConfig, validate, with_epochs  # noqa: E402

# Each mode: the preset its base recipe starts from and the benchmark's own schedule and evaluation.
# The base keeps the preset's warm-up as the same share of a shorter schedule (config.with_epochs).
# width 16 (the cpu preset's network) on a fixed 10k of the training images, 5k bank / 1k queries.
# 8 epochs (312 steps). Measured at 4 and at 8 epochs (benchmarks/README.md): the recipes end within a
# few points of the random-init network, so read differences under ~3 points as noise here.
_CPU_MODE: dict[str, Any] = dict(
    preset="cpu",
    epochs=8,
    subset=10_000,
    eval_every=1.0,
    eval_bank_size=5000,
    eval_query_size=1000,
    lightly_workers=0,
    lightly_hidden=1024,
)
MODES: dict[str, dict[str, Any]] = {
    "cpu": _CPU_MODE,
    # the cpu preset exactly as a user runs it: all 50k images, its own schedule (about 15 minutes alone
    # on 2 cores). What the preset's choices are measured with.
    "cpu-full": {**_CPU_MODE, "subset": 0, "epochs": PRESETS["cpu"].epochs},
    # the standard network on all 50k images, full bank (50k) and queries (10k)
    "gpu": dict(
        preset="gpu",
        epochs=10,
        subset=0,
        eval_every=2.0,
        eval_bank_size=0,
        eval_query_size=0,
        lightly_workers=6,
        lightly_hidden=1024,
    ),
}

# The built-in variants of each mode, "NAME:overrides" (an empty override list = the base recipe).
VARIANTS: dict[str, list[str]] = {
    "cpu": [
        "cpu-preset:",  # SGD lr 0.12 wd 5e-4, a fixed tau of 0.97, batch 256, heads 1024/128
        "lr0.24:lr=0.24",
        "batch128:batch_size=128",
        "tau0.99:tau_base=0.99",
    ],
    "cpu-full": [
        "cpu-preset:",
        # the same recipe with AdamW: 44.1% kNN at seed 0 against SGD's 50.4%, and without batch norm it
        # climbs back out of its collapse
        "adamw:optimizer=adamw,lr=4e-3,weight_decay=0.05",
        "no-bn:head_bn=false",  # the collapse pair: with SGD it stays collapsed (32.6% at seed 0)
        "lr0.06:lr=0.06",
        "lr0.24:lr=0.24",
        # the field's warm-up, cosine and tau climbing to 1 (with AdamW, the preset's schedule was +5.6 points at seed 0)
        "field-schedule:warmup_epochs=0.5,lr_decay_share=1.0,tau_schedule=cosine",
        "tau0.99:tau_base=0.99",
        "batch128:batch_size=128",
        "crop0.2:crop_min_scale=0.2",  # solo-learn's CIFAR crop is 0.08; 0.2 (SimSiam's) may suit short runs
        "views32:view_resolution=1.0",  # whole 32-pixel views: more per image, 1.6x slower a step
        "predictor-lr1:predictor_lr_scale=1",  # with AdamW: 2.7 and 4.2 kNN points behind
        "predictor-lr10:predictor_lr_scale=10",  # with AdamW: +3.0 at seed 0, but no collapse without BN
        "jitter0.5:jitter_strength=0.5",  # half BYOL's colour jitter: with AdamW level with the preset
    ],
    "gpu": [
        "gpu-preset:",  # LARS lr 1.0 per 256, wd 1e-5, warm-up a tenth of the schedule
        "sgd-lr0.12:optimizer=sgd,lr=0.12,weight_decay=5e-4",
        # at width 16 on a CPU, plain SGD without batch norm in the heads stays collapsed (kNN under the
        # random init) where AdamW and LARS climb back out: is it the same at full width?
        "sgd-lr0.12-nobn:optimizer=sgd,lr=0.12,weight_decay=5e-4,head_bn=false",
        "adamw-lr2e-3:optimizer=adamw,lr=2e-3,weight_decay=1e-4",
        # the cpu preset's recipe (SGD, its schedule, a fixed tau of 0.97, the 3x predictor) at full width
        "sgd-cpu-recipe:optimizer=sgd,lr=0.12,weight_decay=5e-4,warmup_epochs=2,lr_decay_share=0.3,tau_base=0.97,tau_schedule=fixed,predictor_lr_scale=3",
        "sgd-cpu-recipe-nobn:optimizer=sgd,lr=0.12,weight_decay=5e-4,warmup_epochs=2,lr_decay_share=0.3,tau_base=0.97,tau_schedule=fixed,predictor_lr_scale=3,head_bn=false",
        # the same schedule with AdamW (at width 16 on a CPU: +7.7 kNN points over 4 seeds against AdamW with
        # the field's schedule, and the 3x predictor +2.7 and +4.2 more)
        "adamw-lr2e-3-cpu-schedule-predlr3:optimizer=adamw,lr=2e-3,weight_decay=0.05,warmup_epochs=2,lr_decay_share=0.3,tau_base=0.97,tau_schedule=fixed,predictor_lr_scale=3",
        "adamw-lr2e-3-proj1024-128:optimizer=adamw,lr=2e-3,weight_decay=1e-4,projector_hidden=1024,projector_dim=128,predictor_hidden=1024",
        # the collapse pair of the best measured recipe: AdamW without batch norm in the heads
        "adamw-lr2e-3-nobn:optimizer=adamw,lr=2e-3,weight_decay=1e-4,head_bn=false",
    ],
}

# --dry-run: every variant at this tiny size for a handful of steps (checks the script, measures nothing).
DRY_RUN = dict(
    width=4, subset=128, batch_size=32, epochs=1, eval_every=0.5, eval_bank_size=128, eval_query_size=50, knn_k=10, log_every=2
)


# --- variants ------------------------------------------------------------------------------
def parse_variant(text: str) -> tuple[str, list[str]]:
    """ "NAME:FIELD=VALUE,FIELD=VALUE" -> (NAME, ["FIELD=VALUE", ...]); ValueError when malformed."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"a variant is NAME:FIELD=VALUE,FIELD=VALUE (overrides may be empty); got {text!r}")
    runs.check_run_name(name)  # it names the variant's scratch folder
    return name, [item.strip() for item in rest.split(",") if item.strip()]


def base_config(mode: str, data: str, epochs: int | None, device: str, seed: int) -> TrainConfig:
    """The mode's base recipe: its preset on the mode's schedule, subset, bank and queries."""
    settings = MODES[mode]
    preset = PRESETS[settings["preset"]]
    epochs = epochs or settings["epochs"]
    return with_epochs(preset, epochs).replace(
        data=data,
        subset=settings["subset"],
        eval_every=min(settings["eval_every"], epochs),
        eval_bank_size=settings["eval_bank_size"],
        eval_query_size=settings["eval_query_size"],
        device=device,
        seed=seed,
        log_every=max(preset.log_every, 10),
        checkpoint_minutes=10_000.0,
        notes="quality benchmark",
    )


def variant_config(base: TrainConfig, name: str, overrides: list[str], dry_run: bool) -> TrainConfig:
    config = apply_overrides(base, overrides).replace(preset=name)
    if dry_run:
        config = with_epochs(config, DRY_RUN["epochs"]).replace(**DRY_RUN)
    return validate(config)
