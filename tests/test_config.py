"""Config presets and validation: every bad value gets a sentence naming the field and the range."""

import math

import pytest

from byol.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    check_against_data,
    config_errors,
    preset,
    source_kind,
    step_plan,
    validate,
    with_epochs,
)


def test_presets_are_valid_and_no_bn_differs_only_in_heads():
    for name, config in PRESETS.items():
        assert validate(config) is config, name
    gpu, no_bn = PRESETS["gpu"].to_dict(), PRESETS["no-bn"].to_dict()
    assert {k for k in gpu if gpu[k] != no_bn[k]} == {"head_bn", "preset"}
    assert PRESETS["gpu"].width == 64 and PRESETS["gpu"].epochs == 100
    cpu, cpu_no_bn = PRESETS["cpu"].to_dict(), PRESETS["cpu-no-bn"].to_dict()
    assert {k for k in cpu if cpu[k] != cpu_no_bn[k]} == {"head_bn", "preset"}


def test_a_shorter_schedule_keeps_the_warm_up_as_its_share_and_a_longer_one_its_length():
    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    assert with_epochs(cpu, 1).warmup_epochs == pytest.approx(cpu.warmup_epochs / cpu.epochs)
    assert with_epochs(gpu, 10).warmup_epochs == pytest.approx(gpu.warmup_epochs / 10)
    assert with_epochs(cpu, 40).warmup_epochs == cpu.warmup_epochs
    for epochs in (1, 3, cpu.epochs, 40):
        shortened = validate(with_epochs(cpu, epochs))
        assert shortened.epochs == epochs and shortened.replace(epochs=cpu.epochs, warmup_epochs=cpu.warmup_epochs) == cpu
    # A bad number of epochs is left for validation to name.
    assert "Epochs (epochs) must be from 1 to 10000; got 0." in config_errors(with_epochs(cpu, 0))


def test_round_trip_through_dict_ignores_unknown_keys():
    config = preset("cpu", epochs=3)
    assert TrainConfig.from_dict({**config.to_dict(), "from_the_future": 1}) == config


def test_lr_scales_with_batch_size():
    assert preset("gpu", batch_size=512).effective_lr == pytest.approx(2 * preset("gpu").effective_lr)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("epochs", 0, "Epochs (epochs) must be from 1 to 10000; got 0."),
        ("epochs", 2.5, "Epochs (epochs) must be a whole number"),
        ("batch_size", -8, "Batch size (batch_size) must be from 2 to 65536; got -8."),
        ("lr", math.nan, "Learning rate (lr) must be a finite number"),
        ("lr", "fast", "Learning rate (lr) must be a number from"),
        ("lr", 1e6, "Learning rate (lr) must be from 1e-07 to 100; got 1e+06."),
        ("tau_base", 1.5, "Target EMA rate τ at the start (tau_base) must be from 0 to 1; got 1.5."),
        ("crop_min_scale", 0.0, "Smallest crop share (crop_min_scale) must be from 0.01 to 1; got 0."),
        ("jitter_strength", 3.0, "Colour jitter strength (jitter_strength) must be from 0 to 2; got 3."),
        ("predictor_lr_scale", 0.0, "Predictor learning-rate multiple (predictor_lr_scale) must be from 0.01 to 100; got 0."),
        ("lr_decay_share", 0.0, "Learning-rate decay share (lr_decay_share) must be from 0.01 to 1; got 0."),
        ("width", 0, "Backbone width (width)"),
        (
            "view_resolution",
            0.2,
            "Training view resolution (view_resolution) must leave views of at least 8 pixels; 0.2 × 32 pixels gives 6.",
        ),
        ("view_resolution", 1.5, "Training view resolution (view_resolution) must be from 0.1 to 1; got 1.5."),
        ("knn_k", 0, "kNN neighbours (knn_k)"),
        ("optimizer", "rmsprop", "Optimizer (optimizer) must be one of lars, sgd, adamw, adam"),
        ("precision", "fp8", "Precision (precision) must be one of auto, fp32, bf16"),
        ("device", "tpu", "Device (device) must be auto, cpu, cuda or cuda:N"),
        ("data", "", "Data source (data)"),
        ("head_bn", "yes", "Batch norm in the heads (head_bn) must be true or false"),
        ("cuda_graph", 1, "CUDA graph of the step (cuda_graph) must be true or false"),
    ],
)
def test_bad_values_give_a_plain_sentence(field, value, words):
    errors = config_errors(preset("cpu", **{field: value}))
    assert any(words in e for e in errors), errors
    with pytest.raises(ConfigError, match=field):
        validate(preset("cpu", **{field: value}))


def test_training_views_are_a_share_of_the_image_size():
    assert preset("gpu").training_view_size == 32
    assert preset("cpu").training_view_size == 24
    assert preset("cpu", view_resolution=0.5).training_view_size == 16
    assert preset("cpu", image_size=64).training_view_size == 48


def test_every_problem_is_listed_at_once():
    assert len(config_errors(preset("cpu", epochs=0, lr=-1, batch_size=1))) == 3


def test_the_cuda_graph_and_compiling_are_not_both_asked_for():
    assert config_errors(preset("gpu", cuda_graph=True)) == []
    errors = config_errors(preset("gpu", cuda_graph=True, compile=True))
    assert errors == [
        "CUDA graph of the step (cuda_graph) and compiling the networks (compile) cannot both be on: "
        "choose one of the two ways to cut the GPU's launch overhead."
    ]


def test_checks_that_need_the_data_size():
    with pytest.raises(ConfigError, match=r"Batch size \(batch_size\) must be at most the number of training images \(100\)"):
        check_against_data(preset("cpu", batch_size=256), train_size=100, test_size=10)
    with pytest.raises(ConfigError, match=r"kNN k"):
        check_against_data(preset("cpu", batch_size=8, knn_k=200, eval_bank_size=0), train_size=100, test_size=10)


def test_gpu_recipe_on_cpu_is_the_wide_presets_on_a_machine_without_gpu():
    from byol.device import gpu_recipe_on_cpu

    assert gpu_recipe_on_cpu(PRESETS["gpu"], machine_is_cpu=True)
    assert not gpu_recipe_on_cpu(PRESETS["gpu"], machine_is_cpu=False)
    assert not gpu_recipe_on_cpu(PRESETS["cpu"], machine_is_cpu=True)
    assert not gpu_recipe_on_cpu(PRESETS["gpu"].replace(device="cuda"), machine_is_cpu=True)  # refused elsewhere


def test_step_plan_shares_the_images_evenly_and_drops_partial_batches():
    config = preset(
        "cpu", batch_size=32, epochs=3, subset=1000, warmup_epochs=1, eval_every=0.5, eval_bank_size=0, eval_query_size=300
    )
    plan = step_plan(config, train_size=5000, test_size=1000, world_size=3)
    assert (plan.images, plan.images_per_process) == (1000, 333)  # the subset, then a third each (one left over)
    assert (plan.steps_per_epoch, plan.total_steps) == (10, 30)  # 333 // 32: the last 13 images of a share wait
    assert (plan.warmup_steps, plan.eval_interval) == (10, 5)
    assert (plan.bank, plan.queries) == (5000, 300)  # bank size 0 = every training image
    alone = step_plan(config.replace(subset=0), train_size=5000, test_size=1000)
    assert (alone.images, alone.steps_per_epoch) == (5000, 156)


@pytest.mark.parametrize(
    "source, kind",
    [
        ("cifar10", "cifar10"),
        (" CIFAR-10 ", "cifar10"),
        ("synthetic", "synthetic"),
        ("./synthetic", "path"),
        ("/data/c.tar.gz", "path"),
    ],
)
def test_a_data_source_is_a_name_or_a_path(source, kind):
    assert source_kind(source) == kind


@pytest.mark.parametrize("epochs, eval_every", [(10, 1.0), (3, 0.4), (5, 2.0), (1, 0.01)])
def test_the_plan_counts_the_evaluations_training_makes(epochs, eval_every):
    plan = step_plan(preset("cpu", epochs=epochs, eval_every=eval_every), 50_000, 10_000)
    measured_after = [step for step in range(1, plan.total_steps + 1) if plan.evaluates_at(step)]
    assert measured_after[-1] == plan.total_steps  # the finished network is always measured
    assert plan.evaluations == 1 + len(measured_after)  # and the untrained one at step 0
