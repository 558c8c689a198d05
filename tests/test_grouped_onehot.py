"""Labels CSVs that say more than one class per row: task.group_column (siim-isic's patient_id) keeps
each group's images in one fold, recorded and checked in folds.csv; layout.label_columns reads
one-hot class columns (plant-pathology-2020), and a row that is not one-hot is a multi-label row."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.prepare.folds import make_folds
from kagglecv.prepare.layout import prepare, read_folds, read_prepared

# 24 images, 2 classes, 8 patients of 1 to 5 images each
PATIENTS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 5, 6, 6, 7, 7, 7]


def _competition(workdir, slug: str, columns: dict, layout: dict, task: dict | None = None) -> None:
    """competitions/<slug>.yaml (csv_labels from train.csv) and raw/ with one 8x8 PNG per row of
    `columns` (its `id` column names the images): nothing is fetched."""
    spec = {
        "slug": slug,
        "title": slug,
        "source": {"kind": "kaggle"},
        "layout": {"kind": "csv_labels", "labels_csv": "train.csv", "image_ext": ".png", **layout},
        "submission": {"id_column": "id", "label_columns": ["label"]},
        "metric": "accuracy",
        "n_folds": 3,
        **({"task": task} if task else {}),
    }
    (workdir / "competitions" / f"{slug}.yaml").write_text(yaml.safe_dump(spec))
    raw = workdir / "data" / slug / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    for n, image_id in enumerate(columns["id"]):
        cv2.imwrite(str(raw / "train" / f"{image_id}.png"), np.full((8, 8, 3), 10 * n, np.uint8))
    cv2.imwrite(str(raw / "test" / "t.png"), np.zeros((8, 8, 3), np.uint8))
    pd.DataFrame(columns).to_csv(raw / "train.csv", index=False)
    pd.DataFrame({"id": ["t"], "label": ["a"]}).to_csv(raw / "sample_submission.csv", index=False)


def _patients(workdir, slug: str = "moles", patients=PATIENTS, **extra) -> None:
    columns = {
        "id": [f"img{i}" for i in range(len(patients))],
        "patient": [f"P{p}" if p is not None else None for p in patients],
        "label": ["ab"[i % 2] for i in range(len(patients))],
        **extra,
    }
    _competition(workdir, slug, columns, {"label_column": "label"}, {"group_column": "patient"})


# --- grouped folds --------------------------------------------------------------------------------


def test_group_column_keeps_each_patient_in_one_fold(workdir, capsys):
    """task.group_column was parsed but never read: images of one patient landed in several folds."""
    _patients(workdir)
    prepare(load_competition("moles"))
    out = " ".join(capsys.readouterr().out.split())
    assert "folds: 8 groups of patient (the largest: 5 images), each in one fold" in out
    folds = pd.read_csv(workdir / "data" / "moles" / "folds.csv")
    patient_of = {f"img{i}": f"P{p}" for i, p in enumerate(PATIENTS)}
    assert folds["group"].tolist() == [patient_of[p.split("/")[-1][:-4]] for p in folds["image"]]
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert set(folds["fold"]) == {0, 1, 2}
    comp = load_competition("moles")
    assert len(read_folds(comp, read_prepared(comp))) == len(PATIENTS)


def test_a_group_split_across_folds_in_folds_csv_is_refused(workdir):
    _patients(workdir)
    comp = load_competition("moles")
    prepare(comp)
    path = workdir / "data" / "moles" / "folds.csv"
    folds = pd.read_csv(path)
    first = folds.index[folds["group"] == "P0"][0]
    was = folds.loc[first, "fold"]
    folds.loc[first, "fold"] = (was + 1) % 3  # a hand edit moves one of P0's images
    folds.to_csv(path, index=False)
    with pytest.raises(UserError) as e:
        read_folds(comp, read_prepared(comp))
    said = str(e.value)
    want = ", ".join(map(str, sorted([was, (was + 1) % 3])))
    assert f"group 'P0' has images in folds {want}" in said and "\n" not in said
    assert "delete it and run `make data COMP=moles`" in said
    folds.drop(columns="group").to_csv(path, index=False)  # an older folds.csv: no groups at all
    with pytest.raises(UserError, match=r"has no group column, but .* task.group_column: patient"):
        read_folds(comp, read_prepared(comp))
    folds.assign(group="").to_csv(path, index=False)
    with pytest.raises(UserError, match=r"has an empty group"):
        read_folds(comp, read_prepared(comp))


def test_a_missing_group_column_is_one_line(workdir, capsys):
    _patients(workdir)
    raw = workdir / "data" / "moles" / "raw"
    pd.read_csv(raw / "train.csv").drop(columns="patient").to_csv(raw / "train.csv", index=False)
    assert main(["data", "moles"]) == 2
    text = cli_text(capsys)
    assert "raw/train.csv: no 'patient' column (task.group_column; columns: id, label)" in text
    assert not (workdir / "data" / "moles" / "folds.csv").exists()


def test_empty_group_values_are_one_line(workdir, capsys):
    _patients(workdir, patients=[*PATIENTS[:-2], None, None])
    assert main(["data", "moles"]) == 2
    text = cli_text(capsys)
    assert "train.csv: column patient (task.group_column) is empty on line 24 (2 empty rows)" in text
    assert not (workdir / "data" / "moles" / "prepared.json").exists()


def test_too_few_groups_for_the_folds_is_one_line(workdir, capsys):
    _patients(workdir, patients=[0] * 12 + [1] * 12)
    assert main(["data", "moles"]) == 2
    assert "2 patient group(s) cannot fill n_folds: 3 folds" in cli_text(capsys)


def test_a_class_from_one_group_only_is_refused_when_the_folds_are_made():
    images = pd.DataFrame({"image": [f"train/x/{i}.png" for i in range(9)], "label": ["a"] * 6 + ["b"] * 3})
    groups = pd.Series(["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p7", "p7"])
    with pytest.raises(UserError, match=r"class 'b': all its 3 images come from 1 patient group\(s\)"):
        make_folds(images, 3, seed=0, groups=groups, group_name="patient")


def test_group_column_needs_a_labels_csv(workdir):
    spec = yaml.safe_load((workdir / "competitions" / "plant-seedlings-classification.yaml").read_text())
    spec["task"] = {"group_column": "patient"}
    (workdir / "competitions" / "plant-seedlings-classification.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(
        UserError, match="task.group_column is a column of the labels CSV of layout kind csv_labels"
    ):
        load_competition("plant-seedlings-classification")


# --- one-hot label columns -----------------------------------------------------------------------

ONE_HOT = ["healthy", "rust", "scab"]


def _leaves(workdir, rows: list[list[int]]) -> None:
    columns = {"id": [f"Train_{i}" for i in range(len(rows))]}
    columns.update({c: [r[k] for r in rows] for k, c in enumerate(ONE_HOT)})
    _competition(workdir, "leaves", columns, {"label_columns": ONE_HOT})


def test_one_hot_columns_give_the_class(workdir):
    rows = [[int(i % 3 == k) for k in range(3)] for i in range(9)]
    _leaves(workdir, rows)
    prepare(load_competition("leaves"))
    folds = pd.read_csv(workdir / "data" / "leaves" / "folds.csv")
    label_of = dict(zip(folds["image"].str.split("/").str[-1], folds["label"], strict=True))
    assert [label_of[f"Train_{i}.png"] for i in range(9)] == [ONE_HOT[i % 3] for i in range(9)]
    assert read_prepared(load_competition("leaves")).classes == ONE_HOT


@pytest.mark.parametrize(("row", "has"), [([0, 0, 0], "no 1"), ([0, 1, 1], "2 1s")])
def test_a_row_that_is_not_one_hot_is_a_multi_label_row(workdir, capsys, row, has):
    rows = [[int(i % 3 == k) for k in range(3)] for i in range(9)]
    rows[4] = row
    _leaves(workdir, rows)
    assert main(["data", "leaves"]) == 2
    text = cli_text(capsys)
    assert f"train.csv: line 6 (id Train_4) has {has} among healthy, rust, scab (1 such rows)" in text
    assert "looks like a multi-label task" in text and "does not train yet" in text
    assert not (workdir / "data" / "leaves" / "prepared.json").exists()


def test_a_one_hot_value_other_than_0_or_1_is_one_line(workdir, capsys):
    rows = [[int(i % 3 == k) for k in range(3)] for i in range(9)]
    rows[2][0] = 0.5
    _leaves(workdir, rows)
    assert main(["data", "leaves"]) == 2
    assert "line 4 (id Train_2): healthy is 0.5; layout.label_columns hold 0 or 1" in cli_text(capsys)


def test_label_column_or_label_columns_not_both(workdir):
    _leaves(workdir, [[1, 0, 0]])
    path = workdir / "competitions" / "leaves.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["layout"]["label_column"] = "healthy"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="give label_column .* or label_columns .*, not both"):
        load_competition("leaves")
    spec["layout"].pop("label_column")
    spec["layout"]["label_columns"] = ["healthy"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="label_columns must name two or more different columns"):
        load_competition("leaves")


def test_one_folder_for_train_and_test_gives_test_the_sample_ids(workdir):
    """plant-pathology-2020 keeps images/Train_*.jpg and images/Test_*.jpg together: test/ must hold
    the ids the sample submission lists, not every image of the folder."""
    rows = [[int(i % 3 == k) for k in range(3)] for i in range(9)]
    _leaves(workdir, rows)
    raw = workdir / "data" / "leaves" / "raw"
    for i in range(2):
        cv2.imwrite(str(raw / "train" / f"Test_{i}.png"), np.full((8, 8, 3), 200 + i, np.uint8))
    pd.DataFrame({"id": ["Test_0", "Test_1"], "label": "healthy"}).to_csv(
        raw / "sample_submission.csv", index=False
    )
    path = workdir / "competitions" / "leaves.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["layout"]["test_dir"] = "train"
    path.write_text(yaml.safe_dump(spec))
    prepare(load_competition("leaves"))
    root = workdir / "data" / "leaves"
    assert sorted(p.name for p in (root / "test").iterdir()) == ["Test_0.png", "Test_1.png"]
    assert read_prepared(load_competition("leaves")).n_test == 2


def test_the_notebook_lays_out_only_the_sample_ids_from_a_shared_folder(workdir, monkeypatch):
    """On Kaggle, images/ of plant-pathology-2020 holds Train_* and Test_*: the notebook's test/ must
    hold the five test images, as `make data` lays them out, not all 29."""
    import io
    import zipfile

    from helpers.kaggle_fake import competition_zip
    from kagglecv.ship import notebook

    comp = load_competition("plant-pathology-2020-fgvc7")
    source = workdir / "input" / comp.slug
    source.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(competition_zip(comp.slug))) as z:
        z.extractall(source)
    monkeypatch.chdir(workdir / "input")
    raw = notebook.raw_view(comp, source, workdir / "scratch" / "raw")
    notebook.lay_out_test(comp, raw)
    names = sorted(p.name for p in (comp.data_dir / "test").iterdir())
    assert names == [f"Test_{i}.jpg" for i in range(5)]


def test_a_group_column_added_later_splits_again_without_a_fetch(workdir, capsys):
    _patients(workdir)
    path = workdir / "competitions" / "moles.yaml"
    spec = yaml.safe_load(path.read_text())
    grouped = dict(spec)
    spec.pop("task")
    path.write_text(yaml.safe_dump(spec))
    prepare(load_competition("moles"))
    assert "group" not in pd.read_csv(workdir / "data" / "moles" / "folds.csv").columns
    path.write_text(yaml.safe_dump(grouped))
    capsys.readouterr()
    prepare(load_competition("moles"))
    out = " ".join(capsys.readouterr().out.split())
    assert "task.group_column: patient is new: splitting moles again" in out and "fetching" not in out
    folds = pd.read_csv(workdir / "data" / "moles" / "folds.csv")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
