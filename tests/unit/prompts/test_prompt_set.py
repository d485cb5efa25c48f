"""PromptSet validation, prompt expansion, hashing, and loading by name or path."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.errors import UnknownNameError
from histovl.prompts import PromptSet, PromptSetError, list_prompt_sets, load_prompt_set

BASE = {"name": "t", "classes": {"a": ["alpha", "A"], "b": "beta"}, "templates": ["x {}.", "{} y"]}


def test_expansion_order_and_single_string_description() -> None:
    ps = PromptSet.model_validate(BASE)
    assert ps.classes["b"] == ["beta"]
    assert ps.class_names == ["a", "b"]
    assert ps.prompts_for("a") == ["x alpha.", "alpha y", "x A.", "A y"]
    assert ps.prompts_by_description("a") == [["x alpha.", "alpha y"], ["x A.", "A y"]]
    assert ps.all_prompts() == ["x alpha.", "alpha y", "x A.", "A y", "x beta.", "beta y"]
    assert ps.negative_prompts() == []


def test_description_with_braces_is_literal_text() -> None:
    ps = PromptSet(name="t", classes={"a": ["CD{3}"]}, templates=["an image of {}."])
    # descriptions are inserted verbatim, not through str.format
    with pytest.raises(ValueError, match="contains"):
        PromptSet(name="t", classes={"a": ["has {} inside"]}, templates=["{}"])
    assert ps.prompts_for("a") == ["an image of CD{3}."]


def test_unknown_class() -> None:
    ps = PromptSet.model_validate(BASE)
    with pytest.raises(UnknownNameError, match="Did you mean 'a'"):
        ps.prompts_for("A")


def test_hash_is_stable_and_sensitive() -> None:
    ps = PromptSet.model_validate(BASE)
    assert ps.content_hash() == PromptSet.model_validate(dict(BASE)).content_hash()
    assert len(ps.content_hash()) == 64
    changed = PromptSet.model_validate({**BASE, "templates": ["x {}.", "{} z"]})
    reordered = PromptSet.model_validate({**BASE, "classes": {"b": "beta", "a": ["alpha", "A"]}})
    with_negative = PromptSet.model_validate({**BASE, "negative": "nothing"})
    hashes = {ps.content_hash(), changed.content_hash(), reordered.content_hash(), with_negative.content_hash()}
    assert len(hashes) == 4  # class order is part of the classifier, so it is part of the hash


def test_to_dict_round_trip() -> None:
    ps = PromptSet.model_validate({**BASE, "version": 2, "negative": "none"})
    d = ps.to_dict()
    assert d["version"] == "2" and "citation" not in d
    assert PromptSet.model_validate(d) == ps


@pytest.mark.parametrize(
    "change, message",
    [
        ({"templates": ["no placeholder"]}, r"templates: template 'no placeholder' must contain exactly one"),
        ({"templates": ["{} and {}"]}, "exactly one"),
        ({"templates": ["{0} x"]}, "exactly one"),
        ({"templates": []}, "at least one template"),
        ({"templates": ["{}", "{}"]}, "repeated"),
        ({"classes": {}}, "at least one class"),
        ({"classes": {"a": []}}, "class 'a' has no descriptions"),
        ({"classes": {"a": [" "]}}, "empty description"),
        ({"classes": {"a": [3]}}, r"classes.a.0: Input should be a valid string"),
        ({"negative": " "}, "`negative` is empty"),
        ({"tempaltes": ["{}"]}, r"tempaltes: unknown key. Did you mean 'templates'"),
    ],
)
def test_malformed_sets_name_the_key(change: dict, message: str) -> None:
    from histovl.prompts import prompt_set_from_mapping

    with pytest.raises(PromptSetError, match=message):
        prompt_set_from_mapping({**BASE, **change})


def test_missing_key_and_non_mapping() -> None:
    from histovl.prompts import prompt_set_from_mapping

    with pytest.raises(PromptSetError, match="templates: required key is missing"):
        prompt_set_from_mapping({"name": "t", "classes": {"a": "x"}})
    with pytest.raises(PromptSetError, match="must be a mapping"):
        prompt_set_from_mapping(["a"])


def test_load_from_yaml_path(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("classes:\n  a: [alpha]\n  b: beta\ntemplates: ['{}.']\n")
    ps = load_prompt_set(f)
    assert ps.name == "mine" and ps.all_prompts() == ["alpha.", "beta."]
    assert load_prompt_set(ps) is ps


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nclasses:\n  a: [alpha\ntemplates: ['{}']\n")
    with pytest.raises(PromptSetError, match=r"not valid YAML at line \d+, column \d+"):
        load_prompt_set(f)


def test_yaml_schema_error_names_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nclasses: {a: alpha}\ntemplates: ['no slot']\n")
    with pytest.raises(PromptSetError, match=r"prompt file .*bad.yaml is invalid:\n  templates:"):
        load_prompt_set(f)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_set(tmp_path / "gone.yaml")


def test_unknown_name_suggests_and_says_how_to_list() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean 'lung-he-v1'.*list_prompt_sets") as info:
        load_prompt_set("lung-he")
    assert isinstance(info.value, KeyError)


def test_list_prompt_sets_sorted() -> None:
    names = list_prompt_sets()
    assert names == sorted(names) and "lung-he-v1" in names
