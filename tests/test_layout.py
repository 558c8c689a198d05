import cv2
import numpy as np
import pandas as pd
import pytest

from kagglecv.competition import load_competition
from kagglecv.errors import UserError
from kagglecv.layout import list_train_images, make_folds, prepare


def _pixel_csvs(raw, n=40, side=4, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, side * side))
    labels = np.arange(n) % 4
    cols = [f"pixel{i}" for i in range(side * side)]
    train = pd.DataFrame(pixels, columns=cols)
    train.insert(0, "label", labels)
    test = pd.DataFrame(pixels[:6], columns=cols)
    raw.mkdir(parents=True)
    train.to_csv(raw / "train.csv", index=False)
    test.to_csv(raw / "test.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 7), "Label": 0}).to_csv(raw / "sample_submission.csv", index=False)
    return pixels, labels


def test_csv_pixels_to_class_folders(workdir):
    comp = load_competition("digits-demo")
    comp.source = {"kind": "builtin", "dataset": "none"}  # raw/ already there: the source is not asked
    pixels, labels = _pixel_csvs(workdir / "data" / "digits-demo" / "raw")
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


def test_prepare_is_idempotent_and_force_redoes(workdir, capsys):
    comp = load_competition("digits-demo")
    prepare(comp)
    root = workdir / "data" / "digits-demo"
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
    _pixel_csvs(raw)
    (raw / "test.csv").write_text("pixel0,pixel1\n1,2\n")  # wrong columns
    with pytest.raises(UserError, match="columns differ"):
        prepare(comp)
    assert not (workdir / "data" / "digits-demo" / "prepared.json").exists()


def _images(n_per_class):
    rows = [(f"train/{c}/{i}.png", c) for c, n in n_per_class.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image", "label"])


def test_folds_are_stratified_and_stable():
    images = _images({"a": 50, "b": 25, "c": 10})
    folds = make_folds(images, 5, seed=1)
    per_fold = folds.groupby(["fold", "label"]).size().unstack()
    assert (per_fold["a"] == 10).all() and (per_fold["b"] == 5).all() and (per_fold["c"] == 2).all()
    shuffled = images.sample(frac=1, random_state=3)
    again = make_folds(shuffled, 5, seed=1)
    assert folds.equals(again)  # input order does not matter
    other = make_folds(images, 5, seed=2)
    assert not folds["fold"].equals(other["fold"])


def test_groups_share_a_fold_whatever_the_input_order():
    images = _images({"b": 30, "a": 30})  # not sorted by path: b's rows come first
    groups = images["image"].str.extract(r"/(\d+)\.png$")[0].astype(int) // 3  # triples of near copies
    groups = groups.astype(str) + images["label"]
    folds = make_folds(images, 5, seed=0, groups=groups)
    by_image = dict(zip(images["image"], groups, strict=True))
    per_group = folds.groupby(folds["image"].map(by_image))["fold"].nunique()
    assert (per_group == 1).all() and len(per_group) == 20


def test_too_few_images_for_folds():
    with pytest.raises(UserError, match=r"too few images for 5 folds in class\(es\) c \(3\)"):
        make_folds(_images({"a": 10, "c": 3}), 5, seed=0)


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
