"""Pure schedule functions: learning rate (linear warm-up, an optional hold at the peak, then cosine) and the target EMA rate tau.

They take the current step and the total and raise on nonsense, so a resumed run that was extended
to more epochs simply calls them with the new total (the schedules are recomputed from the current
step, they do not restart).
"""

from __future__ import annotations

import math


def _check(step: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from `start` at step 0 to `end` at `total_steps` (and `end` beyond it)."""
    _check(step, total_steps)
    progress = min(step / total_steps, 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def learning_rate(step: int, total_steps: int, peak_lr: float, warmup_steps: int, decay_share: float = 1.0) -> float:
    """Linear warm-up from ~0 to `peak_lr` over `warmup_steps`, then cosine decay to 0.

    The decay takes the last `decay_share` of the steps after the warm-up; the rate holds its peak
    before it (1 = the plain cosine from the end of the warm-up).
    """
    _check(step, total_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
    if not 0.0 < decay_share <= 1.0:
        raise ValueError(f"decay_share must be in (0, 1], got {decay_share}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    after_warmup = max(total_steps - warmup_steps, 1)
    decay_steps = max(round(after_warmup * decay_share), 1)
    decay_start = warmup_steps + after_warmup - decay_steps
    if step < decay_start:
        return peak_lr
    return cosine_schedule(step - decay_start, decay_steps, peak_lr, 0.0)


def target_tau(step: int, total_steps: int, tau_base: float, schedule: str = "cosine") -> float:
    """BYOL's target EMA rate: `tau_base` rising to 1 on a cosine (or fixed at `tau_base`)."""
    _check(step, total_steps)
    if not 0.0 <= tau_base <= 1.0:
        raise ValueError(f"tau_base must be in [0, 1], got {tau_base}")
    if schedule == "fixed":
        return tau_base
    if schedule == "cosine":
        return cosine_schedule(step, total_steps, tau_base, 1.0)
    raise ValueError(f"unknown tau schedule {schedule!r}")
