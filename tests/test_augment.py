"""The training augmentation against the libraries whose ops it stands for: torchvision's resized crop,
ColorJitter functionals and flips, kornia's rotation, PIL's JPEG round trip."""

import io
import math

import numpy as np
import pytest
import torch
from kornia.geometry.transform import rotate
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from streetvision.config.schema import AugmentConfig
from streetvision.training.augment import BatchAugment

# Everything off and the crop the whole image: each test turns on what it checks.
OFF = dict(
    plain_share=0.0,  # each test below sets the ops it checks, and they apply to every sample
    rotation_degrees=0.0,
    crop_scale_min=1.0,
    crop_ratio_max=1.0,
    hflip_p=0.0,
    vflip_p=0.0,
    color_jitter_p=0.0,
    jpeg_p=0.0,
    blur_p=0.0,
    noise_p=0.0,
)


def _augment(size=16, **changes):
    return BatchAugment(size, AugmentConfig(**{**OFF, **changes}))


def _picture(size=32, n=1):
    """A smooth, detailed RGB test image (JPEG behaves on it as on photos, unlike uniform noise)."""
    rgb = Image.effect_mandelbrot((size, size), (-2.0, -1.5, 1.0, 1.5), 60).convert("RGB")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div(255.0)[None].repeat(n, 1, 1, 1)


def test_identity_settings_leave_images_unchanged_and_flips_are_exact():
    x = torch.rand(6, 3, 16, 16)
    assert torch.allclose(_augment()(x.clone()), x, atol=1e-6)
    assert torch.allclose(_augment(hflip_p=1.0)(x.clone()), x.flip(-1), atol=1e-6)
    assert torch.allclose(_augment(vflip_p=1.0)(x.clone()), x.flip(-2), atol=1e-6)
    assert torch.allclose(_augment(hflip_p=1.0, vflip_p=1.0)(x.clone()), x.flip(-1, -2), atol=1e-6)


def test_crop_matches_torchvision_resized_crop():
    aug = _augment(crop_scale_min=0.2, crop_ratio_max=4 / 3)
    # Draws that put the crop box at rows 10-24, columns 6-24 of a 32 px image.
    half_w, half_h = 18 / 32, 14 / 32
    centre_x, centre_y = (6 + 9) / 16 - 1, (10 + 7) / 16 - 1
    draws = torch.tensor(
        [
            [
                (half_w * half_h - 0.2) / 0.8,
                (math.log(half_w / half_h) / math.log(4 / 3) + 1) / 2,
                (centre_x / (1 - half_w) + 1) / 2,
                (centre_y / (1 - half_h) + 1) / 2,
                0.5,
                1.0,
                1.0,
                1.0,
            ]
        ]
    )
    x = torch.rand(1, 3, 32, 32)
    ours = aug.geometry(x, draws)
    reference = TF.resized_crop(x, 10, 6, 14, 18, [16, 16], antialias=False)
    # Inside, the same bilinear samples; on the edge row the reference clamps to the crop, we read past it.
    assert torch.allclose(ours[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1], atol=1e-5)


def test_crop_boxes_stay_inside_the_image_with_the_configured_area_and_ratio():
    aug = _augment(crop_scale_min=0.2, crop_ratio_max=4 / 3)
    theta = aug.affine(torch.rand(2000, 8))
    half_w, half_h = theta[:, 0, 0].abs(), theta[:, 1, 1].abs()
    assert (theta[:, 0, 2].abs() + half_w <= 1 + 1e-6).all() and (theta[:, 1, 2].abs() + half_h <= 1 + 1e-6).all()
    area, ratio = half_w * half_h, half_w / half_h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1 + 1e-6 and area.max() > 0.95
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5


def test_rotation_matches_kornia_rotate_and_stays_within_its_range():
    aug = _augment(size=16, rotation_degrees=20.0)
    draws = torch.rand(8, 8)
    draws[:, 5] = 0.0  # every sample rotates
    theta = aug.affine(draws)
    degrees = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert degrees.abs().max() <= 20 + 1e-4 and degrees.abs().min() >= 0 and degrees.std() > 1
    x = torch.rand(8, 3, 16, 16)
    assert torch.allclose(aug.geometry(x, draws), rotate(x, degrees), atol=1e-5)


def test_colour_matches_torchvision_color_jitter_functionals():
    aug = _augment(color_jitter_p=1.0, color_jitter=0.3, color_jitter_hue=0.05)
    x, draws = torch.rand(4, 3, 16, 16), torch.rand(4, 5)
    ours = aug.colour(x.clone(), draws)
    for i in range(4):
        brightness, contrast, saturation = (1 + (2 * draws[i, 1:4] - 1) * 0.3).tolist()
        expected = TF.adjust_brightness(x[i], brightness)
        expected = TF.adjust_contrast(expected, contrast)
        expected = TF.adjust_saturation(expected, saturation)
        expected = TF.adjust_hue(expected, float((2 * draws[i, 4] - 1) * 0.05))
        assert torch.allclose(ours[i], expected, atol=1e-4)


def _pil_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.array(Image.open(buffer).convert("RGB")))


def test_jpeg_recompression_is_a_real_round_trip_at_a_quality_in_range():
    x = _picture(n=4).mul(255).round().byte().permute(0, 2, 3, 1).contiguous()  # uint8 (N, H, W, 3), as cached
    out = _augment(jpeg_p=1.0, jpeg_quality_min=95.0).recompress(x.clone(), [0, 0, 0, 0])
    for i in range(4):
        assert torch.equal(out[i], _pil_round_trip(x[i], 95))  # the same libjpeg round trip as PIL's
    out = _augment(jpeg_p=1.0, jpeg_quality_min=30.0).recompress(x.clone(), [0, 0, 1, 0])
    qualities = [next(q for q in range(30, 96) if torch.equal(out[i], _pil_round_trip(x[i], q))) for i in range(4)]
    assert len(set(qualities)) > 1  # drawn per sample
    assert not torch.equal(out, x)


def test_jpeg_draws_follow_the_batch_seed_and_touch_about_their_share():
    x = _picture(size=16, n=400).mul(255).round().byte().permute(0, 2, 3, 1).contiguous()
    aug = _augment(jpeg_p=0.3)
    first = aug.recompress(x.clone(), [7, 2, 5, 0])
    assert torch.equal(aug.recompress(x.clone(), [7, 2, 5, 0]), first)  # same batch, same draws, any thread
    changed = (first != x).flatten(1).any(1)
    assert 0.2 < changed.float().mean() < 0.4
    other = (aug.recompress(x.clone(), [7, 2, 6, 0]) != x).flatten(1).any(1)
    assert not torch.equal(changed, other)  # the next batch draws anew
    assert torch.equal(_augment().recompress(x.clone(), [7, 2, 5, 0]), x)  # jpeg_p = 0: nothing


@pytest.mark.parametrize("op", ["blur_p", "noise_p", "color_jitter_p"])
def test_ops_touch_about_their_share_of_samples_and_leave_the_rest_exact(op):
    torch.manual_seed(1)
    x = _picture(size=16, n=400)
    out = _augment(**{op: 0.3})(x.clone())
    changed = (out - x).flatten(1).abs().amax(1) > 1e-6
    assert 0.2 < changed.float().mean() < 0.4


def test_draws_follow_the_seed_and_strength_scales_them():
    x = torch.rand(8, 3, 16, 16)
    aug = BatchAugment(16, AugmentConfig())
    torch.manual_seed(3)
    first = aug(x.clone())
    torch.manual_seed(3)
    assert torch.equal(aug(x.clone()), first)
    assert not torch.equal(aug(x.clone()), first)
    challenge = dict(rotation_degrees=20.0, crop_scale_min=0.2, jpeg_p=0.3, noise_p=0.2)  # as `training=gpu`
    half = BatchAugment(16, AugmentConfig(strength=0.5, **challenge))
    assert half.rotation_rad == pytest.approx(math.radians(10)) and half.crop_scale_min == pytest.approx(0.6)
    assert half.jpeg_p == pytest.approx(0.15) and half.noise_std == pytest.approx(0.015)
    off = BatchAugment(16, AugmentConfig(strength=0.0))
    assert off(x) is x and off.jpeg_p == 0


def test_plain_share_leaves_about_its_share_exactly_plain_and_augments_the_rest():
    torch.manual_seed(2)
    x = _picture(size=16, n=400)
    full = dict(rotation_degrees=20.0, crop_scale_min=0.2, hflip_p=0.5, vflip_p=0.5, color_jitter_p=0.5)
    full |= dict(blur_p=0.2, noise_p=0.2)
    out = BatchAugment(16, AugmentConfig(**{**OFF, **full, "plain_share": 0.4}))(x.clone())
    plain = (out - x).flatten(1).abs().amax(1) < 1e-5
    assert 0.3 < plain.float().mean() < 0.5  # the rest: almost every draw of these ops changes pixels
    torch.manual_seed(2)
    everything = BatchAugment(16, AugmentConfig(**{**OFF, **full}))(x.clone())
    assert ((everything - x).flatten(1).abs().amax(1) < 1e-5).float().mean() < 0.05
