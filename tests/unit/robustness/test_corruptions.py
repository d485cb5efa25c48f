"""Built-in corruptions: the study's parameters, determinism, size independence, dtype/range safety."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from histovl.robustness import BUILTIN_CORRUPTIONS, get_corruption
from histovl.robustness.corruptions import (
    BLUR_SIGMA,
    COLOUR_FACTORS,
    RESOLUTION_SHRINK,
    blur_kernel,
    hue_rotation,
)
from histovl.robustness.markup import plan_strokes


def _tiles(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth, tissue-like random images (structure at several scales, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    fine = torch.rand(n, 3, size, size, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.75 * img + 0.25 * fine).clamp(0, 1)


def test_the_seven_corruptions_and_their_levels():
    assert BUILTIN_CORRUPTIONS == ("brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup")
    for name in ("brightness", "contrast", "saturation", "hue"):
        c = get_corruption(name)
        assert c.levels == (-2, -1, 1, 2)
        assert dict(c.parameters) == {-2: 0.4, -1: 0.8, 1: 1.2, 2: 1.6}
    for name in ("blur", "resolution", "markup"):
        assert get_corruption(name).levels == (1, 2, 3, 4)
    assert BLUR_SIGMA == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    assert RESOLUTION_SHRINK == {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8}
    assert [len(plan_strokes(7, n)) for n in (1, 2, 3, 4)] == [1, 2, 3, 4]


@pytest.mark.parametrize("name,op", [
    ("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast), ("saturation", TF.adjust_saturation),
])
def test_colour_corruptions_equal_torchvision_with_the_paper_factor(name, op):
    x = _tiles()
    for level, factor in COLOUR_FACTORS.items():
        torch.testing.assert_close(get_corruption(name).apply(x, level), op(x, factor).clamp(0, 1))


def test_brightness_is_a_plain_scale():
    x = _tiles()
    torch.testing.assert_close(get_corruption("brightness").apply(x, -2), (x * 0.4).clamp(0, 1))


def test_hue_rotation_mapping_and_effect():
    assert [hue_rotation(COLOUR_FACTORS[lv]) for lv in (-2, -1, 1, 2)] == pytest.approx([-0.15, -0.05, 0.05, 0.15])
    x = _tiles()
    hue = get_corruption("hue")
    torch.testing.assert_close(hue.apply(x, 2), TF.adjust_hue(x, 0.15))
    # A rotation keeps the value channel (max over RGB) and opposite levels move hue apart.
    torch.testing.assert_close(hue.apply(x, 2).amax(dim=1), x.amax(dim=1), atol=2e-6, rtol=0)
    assert not torch.allclose(hue.apply(x, 1), hue.apply(x, -1))


def test_blur_sigma_and_kernel_at_224():
    x = _tiles(1, 224)
    for level in (1, 4):
        sigma = float(level)
        k = blur_kernel(sigma)
        assert k == 2 * (3 * level) + 1
        torch.testing.assert_close(get_corruption("blur").apply(x, level), TF.gaussian_blur(x, [k, k], [sigma, sigma]))


def test_severity_grows_with_level():
    x = _tiles()
    for name in ("blur", "resolution", "markup"):
        c = get_corruption(name)
        err = [float((c.apply(x, lv, [1, 2, 3]) - x).abs().mean()) for lv in c.levels]
        assert err == sorted(err), (name, err)


def test_resolution_equals_down_then_up():
    x = _tiles(2, 100)
    y = get_corruption("resolution").apply(x, 3)
    low = TF.resize(x, [40, 40], antialias=True)
    torch.testing.assert_close(y, TF.resize(low, [100, 100], antialias=True).clamp(0, 1))


@pytest.mark.parametrize("name", BUILTIN_CORRUPTIONS)
def test_deterministic_batch_equals_single(name):
    c = get_corruption(name)
    x = _tiles(3, 48)
    seeds = [11, 12, 13]
    for level in c.levels:
        batch = c.apply(x, level, seeds)
        torch.testing.assert_close(batch, c.apply(x, level, seeds), rtol=0, atol=0)
        singles = torch.stack([c.apply(x[i], level, seeds[i]) for i in range(3)])
        torch.testing.assert_close(batch, singles, rtol=0, atol=1e-6)


def test_markup_depends_on_seed_and_nests_across_levels():
    c = get_corruption("markup")
    x = torch.full((1, 3, 96, 96), 0.9)
    a, b = c.apply(x, 2, [1]), c.apply(x, 2, [2])
    assert not torch.equal(a, b)
    inked = [(c.apply(x, lv, [5]) < 0.89).any(dim=1) for lv in (1, 2, 3, 4)]
    for low, high in zip(inked, inked[1:], strict=False):
        assert bool((high | ~low).all())  # a higher level only adds ink
    assert 0.005 < float(inked[0].float().mean()) < 0.2  # a stroke, not a dot or a flood


@pytest.mark.parametrize("name", BUILTIN_CORRUPTIONS)
def test_independent_of_the_source_image_size(name):
    """The same tile stored at 96 px and at 240 px gives the same corrupted model input."""
    from PIL import Image

    from histovl.models.preprocess import Preprocess

    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    arr = (TF.resize(_tiles(1, 128, seed=5), [240, 240], antialias=True)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    large = Image.fromarray(arr)
    small = large.resize((96, 96), Image.Resampling.LANCZOS)
    c = get_corruption(name)
    level = c.levels[-1]
    a = c.apply(pre.to_unnormalised(small), level, 9)
    b = c.apply(pre.to_unnormalised(large), level, 9)
    clean_gap = float((pre.to_unnormalised(small) - pre.to_unnormalised(large)).abs().mean())
    assert float((a - b).abs().mean()) < clean_gap + 0.01, name


@pytest.mark.parametrize("name", [n for n in BUILTIN_CORRUPTIONS if n != "resolution"])
def test_parameters_scale_with_the_input_size(name):
    """Corrupting at 2x size then downscaling ~ corrupting at 1x: blur sigma, stroke widths and
    positions are relative to the side. (Resolution is excluded by definition: it keeps a
    fraction of whatever resolution it is given, as the study specifies.)"""
    c = get_corruption(name)
    big = TF.resize(_tiles(2, 64, seed=3), [128, 128], antialias=True).clamp(0, 1)
    small = TF.resize(big, [64, 64], antialias=True).clamp(0, 1)
    level = c.levels[-1]
    at_small = c.apply(small, level, [4, 5])
    from_big = TF.resize(c.apply(big, level, [4, 5]), [64, 64], antialias=True)
    change = float((at_small - small).abs().mean())
    assert float((at_small - from_big).abs().mean()) < 0.25 * change, name


@pytest.mark.parametrize("name", BUILTIN_CORRUPTIONS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
def test_dtype_and_range_safe(name, dtype):
    c = get_corruption(name)
    x = _tiles(2, 32)
    inp = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    y = c.apply(inp, c.levels[-1], [0, 1])
    assert y.dtype == dtype and y.shape == inp.shape
    yf = y.float() / 255 if dtype == torch.uint8 else y.float()
    assert float(yf.min()) >= 0 and float(yf.max()) <= 1


def test_out_of_range_input_is_clamped_and_nan_rejected():
    c = get_corruption("contrast")
    x = _tiles(1, 16) * 3 - 1
    y = c.apply(x, 2)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        c.apply(x, 2)


def test_bad_level_shape_and_seed_count():
    with pytest.raises(ValueError, match=r"levels \[1, 2, 3, 4\]"):
        get_corruption("blur").apply(_tiles(1, 16), 5)
    with pytest.raises(ValueError, match="RGB"):
        get_corruption("blur").apply(torch.rand(1, 16, 16), 1)
    with pytest.raises(ValueError, match="one seed per image"):
        get_corruption("markup").apply(_tiles(2, 16), 1, [1])


def test_transform_keys():
    assert get_corruption("blur").transform(3).key == "blur:3"
    assert get_corruption("hue").transform(-2).key == "hue:-2"
    assert get_corruption("markup").transform(2, seed=7).key == "markup:2/seed=7"
    with pytest.raises(ValueError):
        get_corruption("hue").transform(3)
