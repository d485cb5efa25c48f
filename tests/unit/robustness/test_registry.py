"""Registry behaviour: namespaced keys, duplicates, suggestions, user corruptions."""

from __future__ import annotations

import pytest
import torch

from histovl.errors import UnknownNameError
from histovl.robustness import (
    get_corruption,
    list_corruptions,
    register_corruption,
    unregister_corruption,
)


def test_builtins_are_namespaced_and_short_names_resolve():
    assert get_corruption("blur") is get_corruption("histovl/blur")
    assert set(list_corruptions("histovl")) == {"brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup"}


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="Did you mean 'blur'"):
        get_corruption("blurr")


def test_user_corruption_registration_duplicates_and_ambiguity():
    @register_corruption("vignette", levels=(1, 2), parameters={1: 0.2, 2: 0.4}, namespace="lab")
    def vignette(images, level, seeds):
        h, w = images.shape[-2:]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return images * (1 - 0.2 * level * (xx**2 + yy**2) / 2)

    try:
        c = get_corruption("vignette")
        assert c.key == "lab/vignette" and "lab/vignette" in list_corruptions()
        y = c.apply(torch.ones(3, 9, 9), 2)
        assert float(y[:, 4, 4].min()) == 1.0 and float(y[:, 0, 0].max()) < 1.0
        assert c.transform(1).key == "lab/vignette:1"
        with pytest.raises(ValueError, match="already registered"):
            register_corruption("vignette", levels=(1,), namespace="lab")(vignette)
        register_corruption("vignette", levels=(1,), namespace="other")(vignette)
        with pytest.raises(UnknownNameError, match="several namespaces"):
            get_corruption("vignette")
        assert get_corruption("other/vignette").levels == (1,)
    finally:
        for key in ("lab/vignette", "other/vignette"):
            try:
                unregister_corruption(key)
            except UnknownNameError:
                pass


def test_a_corruption_that_changes_the_shape_is_caught():
    @register_corruption("crop", levels=(1,), namespace="bad")
    def crop(images, level, seeds):
        return images[..., 1:, 1:]

    try:
        with pytest.raises(ValueError, match="changed the shape"):
            get_corruption("bad/crop").apply(torch.rand(3, 8, 8), 1)
    finally:
        unregister_corruption("bad/crop")


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="may not"):
        register_corruption("a/b", levels=(1,))(lambda x, lv, s: x)
    with pytest.raises(ValueError, match="at least one level"):
        register_corruption("nolevels", levels=())(lambda x, lv, s: x)
