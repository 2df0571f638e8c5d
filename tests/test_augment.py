"""BYOL's views: per-image randomness, valid ranges, asymmetric settings, and the device they live on."""

from dataclasses import replace

import torch

from byol.augment import (
    CIFAR_MEAN,
    CIFAR_STD,
    VIEW1,
    VIEW2,
    ViewSettings,
    augment,
    byol_view_settings,
    byol_views,
    byol_views_batch,
    color_jitter,
    plain_view,
    random_grayscale,
    random_resized_crop_flip,
    random_solarize,
)


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def unnormalize(x):
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return x * std + mean


def test_views_have_right_shape_dtype_and_range():
    v1, v2 = byol_views(batch())
    for v in (v1, v2):
        assert v.shape == (64, 3, 32, 32) and v.dtype == torch.float32
        pixels = unnormalize(v)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_each_image_gets_its_own_draw():
    # The same image repeated 32 times must come out as 32 different views.
    same = batch(1).repeat(32, 1, 1, 1)
    v1, _ = byol_views(same)
    distinct = {tuple(v.flatten()[:64].tolist()) for v in v1}
    assert len(distinct) == 32


def test_two_views_differ_and_are_reproducible_with_a_generator():
    images = batch()
    a1, a2 = byol_views(images, generator=torch.Generator().manual_seed(3))
    b1, b2 = byol_views(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)


def test_full_crop_without_flip_is_identity():
    x = torch.rand(4, 3, 32, 32)
    s = ViewSettings(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(random_resized_crop_flip(x, 32, s), x, atol=1e-5, rtol=0)


def test_the_views_given_are_the_views_applied():
    images = batch(8)
    untouched = ViewSettings(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    both = byol_views_batch(images, views=(untouched, untouched))
    torch.testing.assert_close(both, plain_view(images).repeat(2, 1, 1, 1), atol=1e-5, rtol=0)


def test_crop_min_scale_sets_both_views_smallest_crop_and_nothing_else():
    view1, view2 = byol_view_settings(0.2)
    assert view1.crop_scale == view2.crop_scale == (0.2, 1.0)
    assert byol_view_settings() == (VIEW1, VIEW2)  # the default is BYOL's own 0.08
    assert view2.solarize_p == VIEW2.solarize_p and view1.jitter_p == VIEW1.jitter_p


def test_jitter_strength_scales_the_four_colour_ranges_of_both_views():
    half = byol_view_settings(jitter_strength=0.5)
    for view, field in zip(half, (VIEW1, VIEW2)):
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.2, 0.2, 0.1, 0.05)
        assert (view.crop_scale, view.jitter_p, view.grayscale_p, view.solarize_p) == (
            field.crop_scale,
            field.jitter_p,
            field.grayscale_p,
            field.solarize_p,
        )
    assert byol_view_settings(jitter_strength=1.0) == (VIEW1, VIEW2)


def test_jitter_strength_zero_leaves_colours_unchanged_and_strength_changes_them_more():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    always = {"jitter_p": 1.0}
    change = {}
    for strength in (0.0, 0.5, 1.0):
        view = replace(byol_view_settings(jitter_strength=strength)[0], **always)
        change[strength] = (color_jitter(x, view, torch.Generator().manual_seed(6)) - x).abs().mean().item()
    assert change[0.0] < 1e-5
    assert 0.005 < change[0.5] < change[1.0]


def test_flip_mirrors_the_image():
    x = torch.rand(4, 3, 32, 32)
    s = ViewSettings(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(random_resized_crop_flip(x, 32, s), x.flip(-1), atol=1e-5, rtol=0)


def test_grayscale_makes_channels_equal_and_p_zero_does_nothing():
    x = torch.rand(8, 3, 32, 32)
    gray = random_grayscale(x, 1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.equal(random_grayscale(x, 0.0), x)


def test_solarize_inverts_bright_pixels_only():
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    assert torch.allclose(random_solarize(x, 1.0).flatten(), torch.tensor([0.2, 0.5, 0.1]))


def test_only_second_view_solarizes():
    assert VIEW1.solarize_p == 0.0 and VIEW2.solarize_p == 0.2


def test_jitter_with_zero_strength_is_identity_and_stays_in_range():
    x = torch.rand(16, 3, 32, 32)
    none = ViewSettings(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    torch.testing.assert_close(color_jitter(x, none), x, atol=1e-4, rtol=0)
    strong = color_jitter(x, ViewSettings(jitter_p=1.0))
    assert strong.min() >= 0 and strong.max() <= 1 and not torch.allclose(strong, x)


def test_jitter_probability_is_per_image():
    x = torch.rand(400, 3, 8, 8)
    out = color_jitter(x, ViewSettings(jitter_p=0.8))
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-6
    assert 0.7 < changed.float().mean() < 0.9


def test_plain_view_is_normalised_input():
    images = batch(2)
    torch.testing.assert_close(unnormalize(plain_view(images)), images.float() / 255, atol=1e-5, rtol=0)


def test_view_keeps_device_and_output_size():
    out = augment(batch(4), VIEW1, size=24)
    assert out.shape == (4, 3, 24, 24) and out.device == torch.device("cpu")
