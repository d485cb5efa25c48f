"""load_image_set: class folders, manifests, and every up-front validation error."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from histovl.data import ImageSet, ManifestError, UnsafePathError, load_image_set
from tests.data.bad import manifests as bad


def tile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 90)).save(path)


def test_class_folder(class_folder: Path) -> None:
    s = load_image_set(class_folder)
    assert isinstance(s, ImageSet) and s.kind == "folder" and not s.multilabel
    assert len(s) == 12 and s.classes == ["lung_aca", "lung_n", "lung_scc"]
    assert s.labels == ["lung_aca"] * 4 + ["lung_n"] * 4 + ["lung_scc"] * 4
    assert all(p.is_absolute() and p.is_file() for p in s.paths)
    assert s.paths == sorted(s.paths)
    assert s.groups == [None] * 12
    assert load_image_set(s) is s


def test_class_folder_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in ["x/b.png", "x/a.PNG", "x/sub/c.jpg", "x/.hidden.png", "y/z.tif"]:
        tile(tmp_path / rel)
    (tmp_path / "x" / "readme.txt").write_text("not an image")
    s = load_image_set(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in s.paths]
    assert names == ["x/a.PNG", "x/b.png", "x/sub/c.jpg", "y/z.tif"]
    assert s.labels == ["x", "x", "x", "y"]


def test_extensions_filter(tmp_path: Path) -> None:
    for rel in ["x/a.png", "x/b.jpg", "y/c.png"]:
        tile(tmp_path / rel)
    s = load_image_set(tmp_path, extensions=["PNG"])
    assert [p.name for p in s.paths] == ["a.png", "c.png"]


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    tile(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"'b'.*contain no images.*\{'a': 1, 'b': 0\}"):
        load_image_set(tmp_path)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    tile(tmp_path / "1.png")
    with pytest.raises(ValueError, match="no class sub-folders. It holds 1 image"):
        load_image_set(tmp_path)


def test_missing_spec(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_set(tmp_path / "nope")


def test_manifest_single_label_with_group_and_extra(tmp_path: Path) -> None:
    tile(tmp_path / "imgs" / "1.png")
    tile(tmp_path / "imgs" / "2.png")
    m = tmp_path / "m.csv"
    m.write_text('path,label,group,caption\nimgs/2.png,tumor,p1,"a tumour, with comma"\nimgs/1.png,normal,,x\n')
    s = load_image_set(m)
    assert s.kind == "manifest" and s.root == tmp_path and s.source == m
    assert [p.name for p in s.paths] == ["2.png", "1.png"]  # file order kept
    assert s.labels == ["tumor", "normal"] and s.classes == ["normal", "tumor"]
    assert s.groups == ["p1", None]
    assert s.extra_column("caption") == ["a tumour, with comma", "x"]
    sub = s.subset([1])
    assert sub.labels == ["normal"] and sub.root == s.root and sub.kind == "manifest"


def test_manifest_multilabel(tmp_path: Path) -> None:
    for i in range(3):
        tile(tmp_path / f"{i}.png")
    m = tmp_path / "m.csv"
    m.write_text("\ufeffpath,labels\n0.png,tumor; stroma\n1.png,\n2.png,stroma;stroma\n")  # BOM from Excel
    s = load_image_set(m)
    assert s.multilabel
    assert s.label_sets == [("tumor", "stroma"), (), ("stroma",)]
    assert s.classes == ["stroma", "tumor"]
    with pytest.raises(ValueError, match="label_sets"):
        _ = s.labels


def test_manifest_unlabelled_allowed_unless_required(tmp_path: Path) -> None:
    tile(tmp_path / "0.png")
    m = tmp_path / "m.csv"
    m.write_text("path\n0.png\n")
    s = load_image_set(m)
    assert not s.has_labels and s.classes == []
    with pytest.raises(ManifestError, match="no `label` or `labels` column"):
        load_image_set(m, require_labels=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,label\n0.png,a\n", "no `path` column"),
        ("path\tlabel\n0.png\ta\n", "tab- or semicolon-separated"),
        ("path,label,labels\n0.png,a,a\n", "both `label` and `labels`"),
        ("path,label,label\n0.png,a,a\n", "repeats column"),
        ("path,label\n0.png,a,extra\n", "line 2 has 3 field"),
        ("path,label\n0.png,\n", r"1 row\(s\) with an empty `label` \(lines 2\)"),
        ("path,label\n,a\n", "empty `path`"),
        ("path,label\n0.png,a\n0.png,a\n", "more than once"),
        ("", "is empty"),
    ],
)
def test_manifest_format_errors(tmp_path: Path, text: str, message: str) -> None:
    tile(tmp_path / "0.png")
    m = tmp_path / "m.csv"
    m.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_image_set(m)


def test_manifest_without_rows_is_empty_data(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,label\n\n")
    with pytest.raises(ValueError, match="no rows: the data set is empty"):
        load_image_set(m)


def test_missing_files_listed_with_count(tmp_path: Path) -> None:
    tile(tmp_path / "ok.png")
    rows = "".join(f"gone{i}.png,a\n" for i in range(7))
    m = tmp_path / "m.csv"
    m.write_text("path,label\nok.png,a\n" + rows)
    with pytest.raises(FileNotFoundError, match=r"7 image file\(s\).*'gone0.png'.*'gone4.png'") as info:
        load_image_set(m)
    assert "gone5.png" not in str(info.value)


def test_folder_path_in_manifest_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    m = tmp_path / "m.csv"
    m.write_text("path,label\nd,a\n")
    with pytest.raises(FileNotFoundError, match="not regular files"):
        load_image_set(m)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_traversal_rejected_then_allowed(tmp_path: Path, kind: str) -> None:
    manifest = bad.traversal_manifest(tmp_path, kind=kind)
    expected = {"dotdot": "'..'", "absolute": "absolute path outside", "symlink": "symlink resolving outside"}[kind]
    with pytest.raises(UnsafePathError, match="allow-absolute-paths") as info:
        load_image_set(manifest)
    assert expected in str(info.value) and "1 image path(s)" in str(info.value)
    allowed = load_image_set(manifest, allow_absolute_paths=True)
    assert len(allowed) == 2
    assert allowed.paths[1].is_file()


def test_absolute_path_inside_root_is_fine(tmp_path: Path) -> None:
    tile(tmp_path / "a.png")
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{tmp_path / 'a.png'},x\n")
    assert load_image_set(m).paths == [tmp_path / "a.png"]


def test_dotdot_that_stays_inside_is_fine(tmp_path: Path) -> None:
    tile(tmp_path / "a" / "x.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label\nb/../a/x.png,x\n")
    assert load_image_set(m).paths == [tmp_path / "a" / "x.png"]


def test_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    tile(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "y.png").symlink_to(tmp_path / "a" / "x.png")
    s = load_image_set(tmp_path)
    assert [p.name for p in s.paths] == ["x.png", "y.png"]


def test_class_folder_symlink_out_rejected(tmp_path: Path) -> None:
    root = bad.class_folder_with_symlink_out(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink resolving outside"):
        load_image_set(root)
    assert load_image_set(root, allow_absolute_paths=True).labels == ["a", "b"]


def test_class_folder_that_is_a_symlink_out_is_rejected(tmp_path: Path) -> None:
    root, outside = bad.data_root_with_outside_file(tmp_path)
    (root / "b").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symlink resolving outside"):
        load_image_set(root)


def test_broken_symlink_is_missing(tmp_path: Path) -> None:
    tile(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "dead.png").symlink_to(tmp_path / "a" / "gone.png")
    with pytest.raises(FileNotFoundError, match="broken symlink"):
        load_image_set(tmp_path)


def test_not_a_manifest(tmp_path: Path) -> None:
    f = tmp_path / "list.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="neither a folder nor a .csv"):
        load_image_set(f)
