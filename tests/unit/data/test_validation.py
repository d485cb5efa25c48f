"""validate_labels: labels without prompts, prompt classes without images, counts and hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.data import ImageRecord, ImageSet, load_image_set, validate_labels


def make_set(labels: list[str], *, multilabel: bool = False) -> ImageSet:
    recs = tuple(
        ImageRecord(path=Path(f"/d/{i}.png"), label=None if multilabel else lab,
                    labels=tuple(lab.split(";")) if multilabel else None)
        for i, lab in enumerate(labels)
    )
    return ImageSet(records=recs, root=Path("/d"), source=Path("/d"), multilabel=multilabel)


def test_ok_returns_counts(class_folder: Path) -> None:
    counts = validate_labels(load_image_set(class_folder), ["lung_aca", "lung_n", "lung_scc"])
    assert counts == {"lung_aca": 4, "lung_n": 4, "lung_scc": 4}


def test_label_without_prompt_names_it_with_close_match_and_count() -> None:
    s = make_set(["lung_ACA", "lung_ACA", "lung_n"])
    with pytest.raises(ValueError) as info:
        validate_labels(s, ["lung_aca", "lung_n"])
    msg = str(info.value)
    assert "'lung_ACA': 2 image(s). Did you mean 'lung_aca'" in msg
    assert "Prompt-set classes: ['lung_aca', 'lung_n']" in msg


def test_class_without_images_needs_the_flag() -> None:
    s = make_set(["a", "a", "b"])
    with pytest.raises(ValueError, match=r"\['c'\]. Images per class: \{'a': 2, 'b': 1\}.*--allow-missing-classes"):
        validate_labels(s, ["a", "b", "c"])
    assert validate_labels(s, ["a", "b", "c"], allow_missing_classes=True) == {"a": 2, "b": 1, "c": 0}


def test_multilabel_counts() -> None:
    s = make_set(["a;b", "b"], multilabel=True)
    assert validate_labels(s, ["a", "b"]) == {"a": 1, "b": 2}


def test_unlabelled_data() -> None:
    recs = (ImageRecord(path=Path("/d/0.png")),)
    s = ImageSet(records=recs, root=Path("/d"), source=Path("/d/m.csv"), kind="manifest")
    with pytest.raises(ValueError, match="has no labels"):
        validate_labels(s, ["a"])


def test_no_classes() -> None:
    with pytest.raises(ValueError, match="no classes"):
        validate_labels(make_set(["a"]), [])


def test_prompt_set_accepted_directly(class_folder: Path) -> None:
    from histovl.prompts import load_prompt_set

    counts = validate_labels(load_image_set(class_folder), load_prompt_set("lung-he-v1"))
    assert counts == {"lung_aca": 4, "lung_n": 4, "lung_scc": 4}
