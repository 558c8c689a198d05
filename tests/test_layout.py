import errno
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers.images import labelled_images, pixel_csvs
from kagglecv.core.competition import check_class_name, inside, load_competition
from kagglecv.core.errors import UserError
from kagglecv.prepare.folds import list_train_images, make_folds
from kagglecv.prepare.layout import prepare, read_folds, read_prepared


def test_csv_pixels_to_class_folders(workdir):
    comp = load_competition("digits-demo")
    comp.source = {"kind": "builtin", "dataset": "none"}  # raw/ already there: the source is not asked
    pixels, labels = pixel_csvs(workdir / "data" / "digits-demo" / "raw")
    prepare(comp)
    root = workdir / "data" / "digits-demo"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["0", "1", "2", "3"]
    for i in (0, 5, 39):
        img = cv2.imread(str(root / "train" / str(labels[i]) / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(img, pixels[i].reshape(4, 4))
    assert sorted(int(p.stem) for p in (root / "test").iterdir()) == [1, 2, 3, 4, 5, 6]
    test1 = cv2.imread(str(root / "test" / "1.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(test1, pixels[0].reshape(4, 4))
    folds = pd.read_csv(root / "folds.csv")
    assert len(folds) == 40 and set(folds["fold"]) == set(range(5))
    assert (root / "prepared.json").exists() and not (root / ".staging").exists()


def test_prepare_is_idempotent_and_force_redoes(digits, capsys):
    comp = load_competition("digits-demo")  # prepared once per session by the same prepare(), copied here
    root = digits / "data" / "digits-demo"
    stamp = (root / "prepared.json").stat().st_mtime_ns
    prepare(comp)
    assert (root / "prepared.json").stat().st_mtime_ns == stamp
    assert "already prepared" in capsys.readouterr().out
    prepare(comp, force=True)
    assert (root / "prepared.json").stat().st_mtime_ns != stamp
    assert len(list((root / "train").rglob("*.png"))) == 1437
    assert len(list((root / "test").glob("*.png"))) == 360
    solution = pd.read_csv(root / "solution.csv")
    assert list(solution.columns) == ["ImageId", "label"] and len(solution) == 360


def test_failed_layout_leaves_nothing_looking_complete(workdir):
    comp = load_competition("digits-demo")
    raw = workdir / "data" / "digits-demo" / "raw"
    pixel_csvs(raw)
    (raw / "test.csv").write_text("pixel0,pixel1\n1,2\n")  # wrong columns
    with pytest.raises(UserError, match="columns differ"):
        prepare(comp)
    assert not (workdir / "data" / "digits-demo" / "prepared.json").exists()


def test_folds_are_stratified_and_stable():
    images = labelled_images({"a": 50, "b": 25, "c": 10})
    folds = make_folds(images, 5, seed=1)
    per_fold = folds.groupby(["fold", "label"]).size().unstack()
    assert (per_fold["a"] == 10).all() and (per_fold["b"] == 5).all() and (per_fold["c"] == 2).all()
    shuffled = images.sample(frac=1, random_state=3)
    again = make_folds(shuffled, 5, seed=1)
    assert folds.equals(again)  # input order does not matter
    other = make_folds(images, 5, seed=2)
    assert not folds["fold"].equals(other["fold"])


def test_groups_share_a_fold_whatever_the_input_order():
    images = labelled_images({"b": 30, "a": 30})  # not sorted by path: b's rows come first
    groups = images["image"].str.extract(r"/(\d+)\.png$")[0].astype(int) // 3  # triples of near copies
    groups = groups.astype(str) + images["label"]
    folds = make_folds(images, 5, seed=0, groups=groups)
    by_image = dict(zip(images["image"], groups, strict=True))
    per_group = folds.groupby(folds["image"].map(by_image))["fold"].nunique()
    assert (per_group == 1).all() and len(per_group) == 20


def test_too_few_images_for_folds():
    with pytest.raises(UserError, match=r"too few images for 5 folds in class\(es\) c \(3\)"):
        make_folds(labelled_images({"a": 10, "c": 3}), 5, seed=0)


def test_list_train_images_nested(tmp_path):
    for rel in ("train/cat/a.jpg", "train/cat/sub/b.png", "train/dog/c.jpeg", "train/dog/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    df = list_train_images(tmp_path / "train")
    assert df.values.tolist() == [
        ["train/cat/a.jpg", "cat"],
        ["train/cat/sub/b.png", "cat"],
        ["train/dog/c.jpeg", "dog"],
    ]


# --- the user's files: every image kept, raw/ never written, no name escapes ----------------------


def _png(path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.imencode(".png", np.full((8, 8, 3), value, np.uint8))[1].tobytes()
    path.write_bytes(data)
    return data


def _own_competition(workdir, slug: str, layout: dict, n_folds: int = 2):
    """competitions/<slug>.yaml (a Kaggle source whose raw/ is already there, so nothing is fetched)."""
    spec = {
        "slug": slug,
        "title": slug,
        "source": {"kind": "kaggle"},
        "layout": layout,
        "submission": {"id_column": "id", "label_columns": ["label"]},
        "metric": "accuracy",
        "n_folds": n_folds,
    }
    (workdir / "competitions" / f"{slug}.yaml").write_text(yaml.safe_dump(spec))
    raw = workdir / "data" / slug / "raw"
    raw.mkdir(parents=True)
    pd.DataFrame({"id": ["t"], "label": ["cat"]}).to_csv(raw / "sample_submission.csv", index=False)
    return raw


def test_same_names_in_sub_folders_are_all_kept_and_raw_is_never_written(workdir, monkeypatch):
    """train/cat/a/x.png and train/cat/b/x.png (and the same in test/) were merged into one, and the
    copy made where a hard link fails wrote the second image through the first one's link into raw/."""
    raw = _own_competition(workdir, "nested", {"kind": "class_folders"})
    value = iter(range(10, 250, 10))
    for rel in ("cat/a/x.png", "cat/b/x.png", "cat/a__x.png", "dog/a/x.png", "dog/b/x.png", "dog/z.png"):
        _png(raw / "train" / rel, next(value))
    _png(raw / "test" / "a" / "x.png", 1), _png(raw / "test" / "b" / "x.png", 2)
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    real_link = os.link

    def link_once(src, dst):  # the first link works, then the disk refuses (as across devices)
        if link_once.done:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        link_once.done = True
        real_link(src, dst)

    link_once.done = False
    monkeypatch.setattr(os, "link", link_once)
    prepare(load_competition("nested"))
    root = workdir / "data" / "nested"
    cat = sorted(p.name for p in (root / "train" / "cat").iterdir())
    assert cat == ["a__x.png", "a__x~2.png", "b__x.png"]  # a real a__x.png meets a/x.png flattened
    assert sorted(p.name for p in (root / "test").iterdir()) == ["a__x.png", "b__x.png"]
    assert len(pd.read_csv(root / "folds.csv")) == 6
    assert {p: p.read_bytes() for p in before} == before  # raw/ byte for byte as it was


def test_a_label_cannot_write_outside_data(workdir, tmp_path):
    raw = _own_competition(workdir, "evil", {"kind": "csv_labels", "labels_csv": "labels.csv"})
    for i in range(4):
        _png(raw / "train" / f"{i}.png", i * 10)
    _png(raw / "test" / "t.png", 1)
    labels = ["cat", "cat", "../../../../x", "../../../../x"]
    pd.DataFrame({"id": range(4), "label": labels}).to_csv(raw / "labels.csv", index=False)
    with pytest.raises(UserError, match=r"labels.csv: id 2: class '../../../../x' cannot be a folder name"):
        prepare(load_competition("evil"))
    assert not list(tmp_path.rglob("x")) and not (workdir / "data" / "evil" / ".staging").exists()


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a\\b", "tab\there", "x" * 201])
def test_class_name_rule(name):
    with pytest.raises(UserError, match="cannot be a folder name"):
        check_class_name(name, "labels.csv")
    assert check_class_name("Black-grass 2", "x") == "Black-grass 2"
    assert check_class_name(3, "x") == "3"


def test_inside_refuses_a_path_leading_out(tmp_path):
    assert inside(tmp_path, tmp_path / "a" / "b") == tmp_path / "a" / "b"
    with pytest.raises(UserError, match="would lie outside"):
        inside(tmp_path / "train", tmp_path / "train" / ".." / "x")


def test_an_image_labelled_twice_is_an_error(workdir):
    raw = _own_competition(workdir, "twice", {"kind": "csv_labels", "labels_csv": "labels.csv"})
    for i in range(4):
        _png(raw / "train" / f"{i}.png", i * 10)
    _png(raw / "test" / "t.png", 1)
    pd.DataFrame({"id": [0, 1, 2, 3, 1], "label": list("ababb")}).to_csv(raw / "labels.csv", index=False)
    with pytest.raises(UserError, match=r"id '1' appears 2 times .* each image needs exactly one label"):
        prepare(load_competition("twice"))


def test_csv_ids_find_nested_images_by_path_or_by_a_name_only_one_has(workdir):
    raw = _own_competition(workdir, "ids", {"kind": "csv_labels", "labels_csv": "labels.csv"})
    for i, rel in enumerate(("a/x.png", "b/x.png", "c/y.png", "z.png")):
        _png(raw / "train" / rel, i * 40)
    _png(raw / "test" / "t.png", 1)
    pd.DataFrame({"id": ["a/x", "b/x.png", "y", "z"], "label": list("abab")}).to_csv(
        raw / "labels.csv", index=False
    )
    prepare(load_competition("ids"))
    folds = pd.read_csv(workdir / "data" / "ids" / "folds.csv")
    assert sorted(folds["image"]) == [
        "train/a/a__x.png",
        "train/a/c__y.png",
        "train/b/b__x.png",
        "train/b/z.png",
    ]
    (raw / "labels.csv").write_text("id,label\nx,a\ny,b\nz,a\nc/y,b\n")  # bare x: two images share it
    (workdir / "data" / "ids" / "prepared.json").unlink()
    with pytest.raises(UserError, match=r"1 ids of labels.csv have no image .* \(e.g. x\)"):
        prepare(load_competition("ids"))


# --- prepared.json ---------------------------------------------------------------------------------

TINY = 40  # training images in `tiny_digits`


@pytest.fixture
def tiny_digits(workdir):
    """digits-demo as the competition file has it, prepared from a raw/ of 40 4x4 pixel rows in its
    csv_pixels format (already there: nothing is fetched): the same layout, a fortieth of the images."""
    pixel_csvs(workdir / "data" / "digits-demo" / "raw", n=TINY)
    prepare(load_competition("digits-demo"))
    return workdir


def test_prepared_json_is_written_atomically_and_synced(tiny_digits, monkeypatch):
    root = tiny_digits / "data" / "digits-demo"
    (root / "prepared.json").unlink()

    def disk_gone(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_gone)  # the marker cannot reach the disk: no marker at all
    with pytest.raises(OSError):
        prepare(load_competition("digits-demo"))
    assert not (root / "prepared.json").exists() and not list(root.glob("prepared.json*"))


def test_a_damaged_prepared_json_is_not_prepared(tiny_digits, capsys):
    root = tiny_digits / "data" / "digits-demo"
    (root / "prepared.json").write_text("")  # a power cut before the old write reached the disk
    comp = load_competition("digits-demo")
    with pytest.raises(UserError, match="not prepared yet: run `make data COMP=digits-demo` first"):
        read_prepared(comp)
    prepare(comp)
    assert "already prepared" not in capsys.readouterr().out and read_prepared(comp).n_train == TINY


def test_new_n_folds_splits_again_without_force(tiny_digits, capsys):
    spec = tiny_digits / "competitions" / "digits-demo.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 3"))
    comp = load_competition("digits-demo")
    prepare(comp)
    out = capsys.readouterr().out
    assert "n_folds is now 3 (was 5)" in out and "fetching" not in out
    assert set(read_folds(comp, read_prepared(comp))["fold"]) == {0, 1, 2}


# --- folds.csv as the stages read it ---------------------------------------------------------------


@pytest.fixture
def folds_only(workdir, digits_prepared):
    """digits-demo's folds.csv and prepared.json alone: all read_folds reads (no 1,800 images copied)."""
    root = workdir / "data" / "digits-demo"
    root.mkdir(parents=True)
    for name in ("folds.csv", "prepared.json"):
        shutil.copyfile(digits_prepared / "digits-demo" / name, root / name)
    return workdir


def _edit_folds(digits, edit):
    comp = load_competition("digits-demo")
    path = digits / "data" / "digits-demo" / "folds.csv"
    folds = pd.read_csv(path)
    edit(folds).to_csv(path, index=False)
    return comp, read_prepared(comp)


def _move_class(folds, label, fold):
    folds.loc[folds["label"] == label, "fold"] = fold
    return folds


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda f: _move_class(f, 3, 1),
            r"class '3' has no training images when fold 1 is held out .* could never predict it",
        ),
        (
            lambda f: f.assign(fold=f["fold"].replace(4, 7)),
            r"fold 7 is not a fold number: .* n_folds: 5, so folds are 0..4",
        ),
        (lambda f: f.assign(fold=f["fold"].replace(4, 3)), r"fold 4 has no images"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), r"is listed 2 times \(1 repeated rows\)"),
        (
            lambda f: pd.concat([f, f.iloc[[0]].assign(fold=(f["fold"].iloc[0] + 1) % 5)]),
            r"is listed 2 times .* each image belongs to exactly one fold",
        ),
        (lambda f: f.assign(fold="x"), r"fold 'x' is not a fold number"),
        (lambda f: f.drop(columns="label"), r"lacks column\(s\) \['label'\]"),
    ],
)
def test_folds_that_cannot_be_trusted_are_refused(folds_only, edit, message):
    """A class missing from a training split gave CV 1.0000 and exit 0; the rest were accepted."""
    comp, info = _edit_folds(folds_only, edit)
    with pytest.raises(UserError, match=message):
        read_folds(comp, info)


def test_the_way_back_from_bad_folds_needs_no_fetch(tiny_digits, capsys):
    comp, info = _edit_folds(tiny_digits, lambda f: _move_class(f, 3, 1))
    with pytest.raises(UserError, match="delete it and run `make data COMP=digits-demo` to split again"):
        read_folds(comp, info)
    (tiny_digits / "data" / "digits-demo" / "folds.csv").unlink()
    capsys.readouterr()
    prepare(comp)
    assert "fetching" not in capsys.readouterr().out
    assert len(read_folds(comp, read_prepared(comp))) == TINY


def test_a_class_missing_from_one_validation_fold_is_a_warning(folds_only, capsys):
    def thin(folds):  # every image of class 3 in fold 0 goes to fold 1: fold 0 validates no 3s
        folds.loc[(folds["label"] == 3) & (folds["fold"] == 0), "fold"] = 1
        return folds

    comp, info = _edit_folds(folds_only, thin)
    folds = read_folds(comp, info)
    out = " ".join(capsys.readouterr().out.split())
    assert "warning:" in out and "no validation images of '3' in fold 0" in out
    assert out.count("warning:") == 1 and len(folds) == 1437


def test_layout_paths_stay_inside_raw(workdir):
    raw = _own_competition(workdir, "out", {"kind": "class_folders", "train_dir": "../../../elsewhere"})
    _png(raw / "train" / "cat" / "a.png", 1)
    with pytest.raises(UserError, match=r"elsewhere would lie outside data/out/raw/"):
        prepare(load_competition("out"))


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "file link", "folder link", "empty"])
def test_folds_listing_an_image_outside_the_data_folder_are_refused(folds_only, tmp_path, escape):
    """folds.csv is read from a shared data/ folder: a row naming ../../etc/passwd, an absolute path
    or a link leading out would be read (and with cache=disk, written beside) outside data/<comp>/."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cv2.imwrite(str(outside / "secret.png"), np.zeros((8, 8, 3), np.uint8))
    root = folds_only / "data" / "digits-demo"
    image = {
        "dotdot": "../../elsewhere/secret.png",
        "absolute": str(outside / "secret.png"),
        "file link": "train/3/secret.png",
        "folder link": "train/out/secret.png",
        "empty": "",
    }[escape]
    (root / "train" / "3").mkdir(parents=True)
    (root / "train" / "3" / "secret.png").symlink_to(outside / "secret.png")
    (root / "train" / "out").symlink_to(outside)

    def plant(folds):
        folds["image"] = folds["image"].astype(object)
        folds.loc[0, "image"] = image
        return folds

    comp, info = _edit_folds(folds_only, plant)
    with pytest.raises(
        UserError, match=r"folds.csv: image .* is not a path inside data/digits-demo/ .* split again"
    ):
        read_folds(comp, info)


def test_links_inside_the_data_folder_are_still_read(folds_only):
    root = folds_only / "data" / "digits-demo"
    (root / "train" / "3").mkdir(parents=True)
    (root / "train" / "3" / "a.png").write_bytes(b"")
    (root / "train" / "3" / "b.png").symlink_to(root / "train" / "3" / "a.png")
    comp, info = _edit_folds(
        folds_only, lambda f: f.assign(image=f["image"].where(f.index > 0, "train/3/b.png"))
    )
    assert read_folds(comp, info)["image"].iloc[0] == "train/3/b.png"


def test_disk_cache_never_writes_outside_its_folder(workdir, tmp_path):
    from kagglecv.ml.data import disk_cache

    root = Path("data/c")  # as the stages name it, relative to the project
    (root / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(UserError, match=r"lies outside data/c/; refusing to cache it"):
        disk_cache([root / ".." / ".." / "x.png"], root, 16)
    (root / "cache" / "16").mkdir(parents=True)
    (root / "cache" / "16" / "train").symlink_to(outside)  # planted in a shared cache
    with pytest.raises(UserError, match=r"would lie outside data/c/cache/16/"):
        disk_cache([root / "train" / "a.png"], root, 16)
    assert list(outside.iterdir()) == [] and not (workdir / "x.jpg").exists()
    (root / "cache" / "16" / "train").unlink()
    (cached,) = disk_cache([root / "train" / "a.png"], root, 16)
    assert cached == root / "cache" / "16" / "train" / "a.jpg" and cached.is_file()


def test_inspect_refuses_folds_listing_an_image_outside_in_one_line(folds_only, capsys):
    from helpers.cli import cli_text
    from kagglecv.cli import main

    _edit_folds(folds_only, lambda f: f.assign(image=f["image"].where(f.index > 0, "../../../etc/passwd")))
    assert main(["inspect", "--comp", "digits-demo"]) == 2
    assert "folds.csv: image '../../../etc/passwd' is not a path inside data/digits-demo/" in cli_text(capsys)
