"""The shipped cards, the registry's duplicate/unknown-name behaviour and the family plug-ins."""

from __future__ import annotations

import pytest

from histovl.errors import UnknownNameError
from histovl.models import get_card, list_models, load_model, register_card, register_family
from histovl.models.card import OPENAI_MEAN, OPENAI_STD
from histovl.models.registry import get_family, read_card_file

REQUIRED = [
    "openai-vit-b-16", "openai-vit-b-32", "openai-vit-l-14", "plip", "biomedclip",
    "quiltnet-b-32", "quiltnet-b-16", "conch",
]


def test_every_required_model_is_registered_with_a_parsable_card() -> None:
    names = list_models()
    for name in REQUIRED:
        assert name in names
        card = get_card(name)
        assert card.name == name
        assert card.licence and card.citation, name
        get_family(card.family)  # every shipped card names a registered family


@pytest.mark.parametrize(
    ("name", "size", "ctx", "dim", "causal", "family"),
    [
        ("openai-vit-b-16", 224, 77, 512, True, "open_clip"),
        ("openai-vit-b-32", 224, 77, 512, True, "open_clip"),
        ("openai-vit-l-14", 224, 77, 768, True, "open_clip"),
        ("plip", 224, 77, 512, True, "hf_clip"),
        ("biomedclip", 224, 256, 512, False, "open_clip"),
        ("quiltnet-b-32", 224, 77, 512, True, "open_clip"),
        ("quiltnet-b-16", 224, 77, 512, True, "open_clip"),
        ("conch", 448, 128, 512, False, "conch"),
    ],
)
def test_card_settings_match_the_published_models(name, size, ctx, dim, causal, family) -> None:
    card = get_card(name)
    assert (card.image_size, card.context_length, card.embed_dim, card.text_causal, card.family) == (
        size, ctx, dim, causal, family,
    )
    # All eight use OpenAI's statistics, bicubic resize of the short side and a centre crop
    # (CONCH's own factory sets OPENAI_DATASET_MEAN/STD too).
    assert card.mean == OPENAI_MEAN and card.std == OPENAI_STD
    assert (card.interpolation, card.resize_mode) == ("bicubic", "shortest")


def test_openai_cards_use_quick_gelu_and_conch_card_carries_its_architecture() -> None:
    for name in ("openai-vit-b-16", "openai-vit-b-32", "openai-vit-l-14"):
        assert get_card(name).extra["quick_gelu"] is True
    cfg = get_card("conch").extra["model_cfg"]
    assert cfg["vision_cfg"]["image_size"] == 448 and cfg["text_cfg"]["context_length"] == 128
    assert cfg["text_cfg"]["vocab_size"] == 32007 and cfg["embed_dim_caption"] == 768


@pytest.mark.parametrize("typo", ["quiltnet-b32", "QuiltNet-B-32", "conhc", "openai-vit-b16"])
def test_unknown_name_suggests_close_matches_and_how_to_list(typo: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        get_card(typo)
    message = str(info.value)
    assert "Did you mean" in message and "histovl models" in message
    with pytest.raises(UnknownNameError, match="histovl models"):
        load_model(typo)


def test_unknown_name_without_close_matches_still_says_how_to_list() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_model("zzzz")
    assert "Did you mean" not in str(info.value) and "histovl models" in str(info.value)


def test_duplicates_are_errors(scratch_cards) -> None:
    card = get_card("plip")
    with pytest.raises(ValueError, match="registered twice"):
        register_card(card)
    register_card(card.replace(name="plip-copy"))
    assert "plip-copy" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_family("open_clip", lambda request: None)  # type: ignore[arg-type,return-value]


def test_unknown_family_is_reported_with_suggestions() -> None:
    with pytest.raises(UnknownNameError, match="open_clip"):
        get_family("open-clip")


def test_card_files_reject_unknown_fields(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nfamily: open_clip\narchitecture: a\nsource: s\nimage_size: 1\nmean: [0,0,0]\nstd: [1,1,1]\nimgsize: 3\n")
    with pytest.raises(ValueError, match="imgsize"):
        read_card_file(path)
