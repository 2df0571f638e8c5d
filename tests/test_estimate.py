"""The time estimate: real measured steps, cached speed, honest arithmetic, a capped CPU measurement."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from PIL import Image

from byol import estimate
from byol.config import ConfigError, preset
from byol.device import resolve_device, use_bf16
from byol.estimate import data_sizes, estimate_time, measure_speed, speed_key


def test_measures_once_then_reads_the_cache(runs_dir, tmp_path, tiny_config):
    cache = tmp_path / "cache"
    config = tiny_config(batch_size=16)
    assert estimate_time(config, measure=False, cache_dir=cache) is None
    first = estimate_time(config, cache_dir=cache)
    assert first is not None and not first.from_cache
    assert first.seconds > 0 and first.images_per_s > 0
    assert first.seconds == pytest.approx(first.train_seconds + first.eval_seconds)
    assert "Measured" in first.assumptions and "not included" in first.assumptions
    table = json.loads((cache / "speed.json").read_text())
    assert list(table) == [speed_key(config, torch.device("cpu"), use_bf16("auto", torch.device("cpu")))]

    started = time.perf_counter()
    second = estimate_time(config, measure=False, cache_dir=cache)
    assert time.perf_counter() - started < 1.0
    assert second.from_cache and second.images_per_s == pytest.approx(first.images_per_s, rel=1e-3)
    # A different network shape is a different measurement.
    assert estimate_time(config.replace(width=8), measure=False, cache_dir=cache) is None


def test_arithmetic_from_a_known_speed(tmp_path, tiny_config):
    config = tiny_config(subset=0, epochs=3, batch_size=64, eval_every=1.0, eval_bank_size=0, eval_query_size=0)
    device = resolve_device(config.device)
    key = speed_key(config, device, use_bf16(config.precision, device))
    (tmp_path / "speed.json").write_text(json.dumps({key: {"images_per_s": 100.0, "batch": 64}}))
    result = estimate_time(config, measure=False, cache_dir=tmp_path)
    # synthetic: 4,000 train / 1,000 test; 62 steps of 64 per epoch (the last partial batch is dropped).
    train_images = 62 * 64 * 3
    evaluations = 1 + 3  # step 0, then once per epoch
    eval_images = evaluations * (4000 + 1000) * estimate.EVAL_COST_PER_IMAGE
    assert result.train_seconds == pytest.approx(train_images / 100)
    assert result.eval_seconds == pytest.approx(eval_images / 100)
    assert result.hours == pytest.approx((train_images + eval_images) / 100 / 3600)
    assert result.from_cache


def test_heavy_cpu_measurement_is_capped(tiny_config):
    """With too small a budget for the full batch, one step is timed on a smaller batch."""
    config = tiny_config(width=8, batch_size=256, device="cpu")
    started = time.perf_counter()
    images_per_s, batch = measure_speed(config, budget_s=0.2)
    assert time.perf_counter() - started < 20
    assert images_per_s > 0
    assert estimate.PROBE_BATCH <= batch < 256


def test_data_sizes(tmp_path):
    assert data_sizes("synthetic") == (4000, 1000)
    assert data_sizes("cifar10") == (50_000, 10_000)
    assert data_sizes(str(tmp_path / "missing")) is None
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "set" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    assert data_sizes(str(tmp_path / "set")) == (6, 4)


def test_unknown_size_is_assumed_and_said(tmp_path, tiny_config):
    folder = tmp_path / "odd"
    folder.mkdir()
    config = tiny_config(data=str(folder))
    device = resolve_device(config.device)
    key = speed_key(config, device, use_bf16(config.precision, device))
    (tmp_path / "speed.json").write_text(json.dumps({key: {"images_per_s": 50.0, "batch": 64}}))
    result = estimate_time(config, measure=False, cache_dir=tmp_path)
    assert "could not be read" in result.assumptions
    assert math.isfinite(result.seconds)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_device_on_a_cpu_machine_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        estimate_time(preset("cpu", data="synthetic", device="cuda"), cache_dir=tmp_path)
