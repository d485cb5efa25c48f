"""load_image_set(folder, folder_labels=False): a plain folder of images, flat or nested, no labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from histovl.data import load_image_set


def tile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 90)).save(path)


def test_flat_and_nested_images_without_labels(tmp_path: Path) -> None:
    for rel in ["b.png", "a.JPG", "s1/c.png", "s1/deep/d.tif", ".hidden.png", "s2/.x.png"]:
        tile(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    s = load_image_set(tmp_path, folder_labels=False)
    assert [p.relative_to(tmp_path).as_posix() for p in s.paths] == ["a.JPG", "b.png", "s1/c.png", "s1/deep/d.tif"]
    assert s.kind == "folder" and not s.has_labels and s.classes == [] and s.root == tmp_path
    with pytest.raises(ValueError, match="has no label"):
        _ = s.labels


def test_class_folder_tree_read_unlabelled(class_folder: Path) -> None:
    s = load_image_set(class_folder, folder_labels=False)
    assert len(s) == 12 and not s.has_labels
    assert s.paths == load_image_set(class_folder).paths  # same images, same order, no labels


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_set(tmp_path, folder_labels=False)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    tile(outside / "secret.png")
    root = tmp_path / "data"
    tile(root / "ok.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    from histovl.data import UnsafePathError

    with pytest.raises(UnsafePathError):
        load_image_set(root, folder_labels=False)
    assert len(load_image_set(root, folder_labels=False, allow_absolute_paths=True)) == 2


def test_default_still_needs_class_folders(tmp_path: Path) -> None:
    tile(tmp_path / "1.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_set(tmp_path)
