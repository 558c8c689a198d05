"""Submission files (format, check, score) and `kagglecv submit` end to end on a run folder made
without training: its own record, a read-only run folder, the prediction cache, unreadable test
images, folds copied in, disks that fail."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.repo import REPO
from helpers.runs import MADE_RUN, make_run
from kagglecv.cli import main
from kagglecv.compete.submit import format_submission, score_submission, validate_submission
from kagglecv.core.competition import Submission, load_competition
from kagglecv.core.errors import UserError

CLASSES = ["cat", "dog"]


@pytest.fixture
def comp(workdir):
    return load_competition("digits-demo")


def _sample(n=4):
    return pd.DataFrame({"id": range(1, n + 1), "label": 0})


def _probs():
    return np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])


@pytest.mark.parametrize(
    "kind, extra, expected",
    [
        ("class_name", {}, ["cat", "dog", "cat", "dog"]),
        ("class_index", {"classes": ["dog", "cat"]}, [1, 0, 1, 0]),
        ("probability", {"positive_class": "dog"}, [0.1, 0.8, 0.4, 0.7]),
    ],
)
def test_format_validate_score(comp, kind, extra, expected):
    comp.submission = Submission(id_column="id", label_columns=["label"], kind=kind, **extra)
    comp.metric = "accuracy" if kind != "probability" else "roc_auc"
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    assert (
        df["label"].tolist() == pytest.approx(expected)
        if kind == "probability"
        else df["label"].tolist() == expected
    )
    validate_submission(df, _sample(), comp, CLASSES)
    solution = pd.DataFrame({"id": [1, 2, 3, 4], "label": ["cat", "dog", "dog", "dog"]})
    assert score_submission(df, solution, comp, CLASSES) == (0.75 if kind != "probability" else 1.0)


def test_class_probabilities_follow_sample_order(comp):
    comp.submission = Submission(id_column="id", kind="class_probabilities")
    comp.metric = "log_loss"
    sample = pd.DataFrame({"id": ["a", "b"], "dog": 0.5, "cat": 0.5})
    df = format_submission(comp, sample, np.array([[0.9, 0.1], [0.2, 0.8]]), CLASSES)
    assert list(df.columns) == ["id", "dog", "cat"] and df["dog"].tolist() == [0.1, 0.8]
    validate_submission(df, sample, comp, CLASSES)
    loss = score_submission(df, pd.DataFrame({"id": ["a", "b"], "label": ["cat", "dog"]}), comp, CLASSES)
    assert loss == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)


def _class_name(comp):
    comp.submission = Submission(id_column="id", label_columns=["label"], kind="class_name")
    return format_submission(comp, _sample(), _probs(), CLASSES)


def test_catches_wrong_columns(comp):
    df = _class_name(comp).rename(columns={"label": "Label"})
    with pytest.raises(UserError, match="columns"):
        validate_submission(df, _sample(), comp, CLASSES)


def test_catches_wrong_ids(comp):
    df = _class_name(comp)
    df.loc[2, "id"] = 99
    with pytest.raises(UserError, match=r"ids differ from sample_submission's at row 4: '99' vs '3'"):
        validate_submission(df, _sample(), comp, CLASSES)
    with pytest.raises(UserError, match="4 rows, sample_submission has 5"):
        validate_submission(_class_name(comp), _sample(5), comp, CLASSES)
    swapped = _class_name(comp).iloc[[1, 0, 2, 3]]
    with pytest.raises(UserError, match="ids differ"):
        validate_submission(swapped, _sample(), comp, CLASSES)


def test_catches_wrong_values(comp):
    df = _class_name(comp)
    df.loc[0, "label"] = "cow"
    with pytest.raises(UserError, match="unknown classes"):
        validate_submission(df, _sample(), comp, CLASSES)
    comp.submission = Submission(
        id_column="id", label_columns=["label"], kind="probability", positive_class="dog"
    )
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    df.loc[1, "label"] = 1.5
    with pytest.raises(UserError, match=r"probabilities in \[0, 1\]"):
        validate_submission(df, _sample(), comp, CLASSES)
    df.loc[1, "label"] = None
    with pytest.raises(UserError, match="empty values"):
        validate_submission(df, _sample(), comp, CLASSES)
    comp.submission = Submission(id_column="id", label_columns=["label"], kind="class_index")
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    df.loc[0, "label"] = 2
    with pytest.raises(UserError, match=r"class indices 0..1"):
        validate_submission(df, _sample(), comp, CLASSES)


# ---- submit through the CLI, on a run folder made without training -----------------------------


@pytest.fixture(scope="module")
def made_run(tmp_path_factory, digits_prepared):
    root = tmp_path_factory.mktemp("made")
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "competitions", root / "competitions")
    shutil.copytree(digits_prepared, root / "data")
    return make_run(root)


@pytest.fixture(scope="module")
def made_run_tta(tmp_path_factory, made_run):
    """made_run with the TTA choice `make submit` makes for it already made and cached (tta_oof.json,
    keyed by the folds' mtimes, which a copy keeps): submit reads it instead of predicting every OOF
    view again, for the tests whose subject is not the TTA choice."""
    from kagglecv.ml.engine import pick_device
    from kagglecv.predict.ensemble import load_fold_models
    from kagglecv.predict.tta import choose_tta

    run = shutil.copytree(made_run, tmp_path_factory.mktemp("made-tta") / MADE_RUN)
    old = os.getcwd()
    os.chdir(made_run.parents[2])  # the prepared data/digits-demo/, only read
    try:
        choose_tta(load_competition("digits-demo"), run, load_fold_models(run, [0, 1], pick_device("cpu")))
    finally:
        os.chdir(old)
    return run


@pytest.fixture
def made_cold(digits, made_run):
    """The working folder with the prepared digits and a copy of the made run, as make_run left it."""
    shutil.copytree(made_run, digits / "runs" / "digits-demo" / MADE_RUN)
    return digits


@pytest.fixture
def made(digits, made_run_tta):
    """The working folder with the prepared digits and a copy of the made run, its TTA choice cached."""
    shutil.copytree(made_run_tta, digits / "runs" / "digits-demo" / MADE_RUN)
    return digits


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_submit_writes_its_own_record_and_never_edits_the_run(made_cold, capsys, monkeypatch):
    made = made_cold
    run = made / "runs" / "digits-demo" / MADE_RUN
    before = snapshot(run)
    assert main(["submit", "--comp", "digits-demo"]) == 0
    text = cli_text(capsys)
    after = snapshot(run)
    assert set(after) - set(before) == {"test_probs.npz", "tta_oof.json"}  # prediction caches, nothing else
    assert {k: after[k] for k in before} == before  # summary.json and the rest untouched
    csv = made / "submissions" / f"digits-demo-{MADE_RUN}.csv"
    record = json.loads(csv.with_suffix(".json").read_text())
    sub = pd.read_csv(csv)
    solution = pd.read_csv(made / "data" / "digits-demo" / "solution.csv")
    expected = (sub["Label"].astype(str) == solution["label"].astype(str)).mean()
    assert record["test_score"] == pytest.approx(expected) and f"test accuracy: {expected:.4f}" in text
    summary = json.loads((run / "summary.json").read_text())
    assert record["run"] == MADE_RUN and record["folds"] == [0, 1]
    assert record["tta"]["name"] in record["tta"]["scores"] and "none" in record["tta"]["scores"]
    assert (record["cv_mean"], record["cv_std"]) == (summary["cv_mean"], summary["cv_std"])
    assert record["file"] == f"submissions/digits-demo-{MADE_RUN}.csv" and record["uploads"] == []
    assert record["prior_rows"] == [] and record["model"] == "test_resnet"

    from kagglecv.core.run_files import read_test_cache

    cached = read_test_cache(run)
    assert cached["folds"] == [0, 1] and cached["classes"] == [str(d) for d in range(10)]
    assert cached["probs"].shape == (len(sub), 10) and len(cached["images"]) == len(sub)
    assert (np.array(cached["classes"])[cached["probs"].argmax(1)] == sub["Label"].astype(str)).all()

    # the report (and `kagglecv report`) finds the test score in the record; its look-inside section,
    # which would take most of a minute here, is tested in test_look.py
    monkeypatch.setattr("kagglecv.report.page.LOOK_BUDGET_S", 0)
    assert main(["report", MADE_RUN, "--comp", "digits-demo"]) == 0
    assert f"test {expected:.4f}" in " ".join(cli_text(capsys).replace("│", " ").split())
    assert f"test accuracy <b>{expected:.4f}</b>" in (run / "report.html").read_text()


def test_prediction_cache_is_used_only_while_it_matches(made, capsys):
    run = made / "runs" / "digits-demo" / MADE_RUN
    assert main(["submit", "--comp", "digits-demo"]) == 0
    first = (made / "submissions" / f"digits-demo-{MADE_RUN}.csv").read_bytes()
    capsys.readouterr()
    assert main(["submit", "--comp", "digits-demo"]) == 0
    assert "read from its cache" in cli_text(capsys)
    assert (made / "submissions" / f"digits-demo-{MADE_RUN}.csv").read_bytes() == first
    # a test image replaced after prediction: the cache is stale and is not used
    some = sorted((made / "data" / "digits-demo" / "test").iterdir())[0]
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 10**9))
    assert main(["submit", "--comp", "digits-demo"]) == 0
    text = cli_text(capsys)
    assert "read from its cache" not in text and "predicting 360 test images" in text
    from kagglecv.core.run_files import read_test_cache

    assert read_test_cache(run, key="not the key") is None and read_test_cache(run) is not None
    assert not list(run.glob("*.tmp*"))


def test_folds_copied_in_but_not_gathered_are_refused(digits, capsys):
    run = make_run(digits, fold_ids=(0, 1), listed=[0])
    before = (run / "summary.json").read_bytes()
    assert main(["submit", "--comp", "digits-demo", "--run", MADE_RUN]) == 2
    text = cli_text(capsys)
    assert f"run {MADE_RUN} has finished fold(s) [1] that its summary.json does not list" in text
    assert f"`make train RUN={MADE_RUN} RESUME=1`" in text
    assert (run / "summary.json").read_bytes() == before and not (digits / "submissions").exists()


def test_a_run_being_trained_is_not_submitted(made, capsys):
    from kagglecv.core.locks import run_lock

    with run_lock(made / "runs" / "digits-demo" / MADE_RUN, "make train"):
        assert main(["submit", "--comp", "digits-demo"]) == 2
    assert f"run {MADE_RUN} is being trained right now" in cli_text(capsys)


def test_submit_waits_for_make_data(made, capsys):
    from kagglecv.core.locks import data_lock

    with data_lock(made / "data" / "digits-demo", exclusive=True, what="make data"):
        assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "is being written by `make data`" in cli_text(capsys)
    assert not (made / "submissions").exists()


def test_uploads_are_recorded_and_kept_for_the_same_file(fake, workdir, capsys):
    slug = "digit-recognizer"
    assert main(["data", slug]) == 0
    make_run(workdir, slug=slug)
    assert main(["submit", "--upload", "--message", "first"]) == 0
    (sent,) = fake.submissions
    record_path = workdir / "submissions" / f"{slug}-{MADE_RUN}.json"
    (up,) = json.loads(record_path.read_text())["uploads"]
    assert up["ref"] == sent["ref"] and up["message"] == sent["description"]
    assert up["response"] == f"Successfully submitted to {slug}"
    capsys.readouterr()
    assert main(["submit"]) == 0  # the same file again, not uploaded: the record keeps its upload
    assert "not uploaded; to send it to Kaggle: make submit UPLOAD=1 RUN=made" in cli_text(capsys)
    assert json.loads(record_path.read_text())["uploads"] == [up]


def test_deleted_test_folder_is_one_line(made, capsys):
    shutil.rmtree(made / "data" / "digits-demo" / "test")
    assert main(["submit", "--comp", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert "data/digits-demo/test/ is missing" in text and "`make data COMP=digits-demo FORCE=1`" in text


@pytest.mark.parametrize("how", ["listed by make data", "corrupted after make data", "corrupted, disk cache"])
def test_unreadable_test_images_keep_their_rows_with_the_class_prior(made, capsys, how):
    data = made / "data" / "digits-demo"
    if how == "corrupted, disk cache":  # the other decode path: resized copies on disk, not in RAM
        shutil.rmtree(made / "runs")
        make_run(made, recipe=["cache=disk"])
    bad = ["7.png", "42.png"]
    if how == "listed by make data":
        info = json.loads((data / "prepared.json").read_text())
        info["unreadable_test"] = bad
        (data / "prepared.json").write_text(json.dumps(info))
        (data / "test" / bad[0]).unlink()  # one left out of test/, one still there
        (data / "test" / bad[1]).write_bytes(b"\x89PNG broken")
    else:
        for name in bad:
            (data / "test" / name).write_bytes((data / "test" / name).read_bytes()[:40])  # truncated
    assert main(["submit", "--comp", "digits-demo"]) == 0
    text = cli_text(capsys)
    assert "2 test image(s) could not be read (ids 7, 42)" in text and "training class prior" in text
    sub = pd.read_csv(made / "submissions" / f"digits-demo-{MADE_RUN}.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    assert sub["ImageId"].tolist() == sample["ImageId"].tolist()  # every id keeps its row
    counts = pd.read_csv(data / "folds.csv")["label"].value_counts()
    majority = int(counts.idxmax())  # the prior's most likely class
    assert sub.set_index("ImageId").loc[[7, 42], "Label"].tolist() == [majority, majority]
    record = json.loads((made / "submissions" / f"digits-demo-{MADE_RUN}.json").read_text())
    assert record["prior_rows"] == ["7", "42"]
    cached = (data / "cache" / "32").exists()
    assert cached == (how == "corrupted, disk cache")


def test_class_prior_fills_probability_rows(comp):
    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]])
    from kagglecv.compete.submit import class_prior, fill_unreadable

    prior = class_prior(comp, {"cat": 30, "dog": 10}, CLASSES)
    filled, ids = fill_unreadable(probs, prior, pd.Series(["a", "b", "c"]))
    assert ids == ["b"] and filled[1].tolist() == [0.75, 0.25] and filled[0].tolist() == [0.9, 0.1]


def _failing_write_text(monkeypatch, err: int, suffix: str):
    """Path.write_text that writes half the text into a file ending in `suffix`, then fails like a
    full or read-only disk."""
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.endswith(suffix):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(err, os.strerror(err), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_full_or_read_only_submissions_leave_no_half_file(made, capsys, monkeypatch):
    out = made / "submissions" / f"digits-demo-{MADE_RUN}.csv"
    _failing_write_text(monkeypatch, errno.ENOSPC, ".csv")
    assert main(["submit", "--comp", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert f"cannot write submissions/digits-demo-{MADE_RUN}.csv: the disk is full" in text
    assert ".tmp" not in text and list((made / "submissions").iterdir()) == []  # no half CSV, no record
    monkeypatch.undo()
    monkeypatch.chdir(made)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    shutil.rmtree(made / "submissions")
    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "cannot write submissions: it is on a read-only file system" in cli_text(capsys)
    assert not out.exists()


def test_read_only_run_folder_only_costs_the_cache(made, capsys, monkeypatch):
    def savez(path, **arrays):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(np, "savez", savez)
    assert main(["submit", "--comp", "digits-demo"]) == 0
    text = cli_text(capsys)
    assert "warning: test predictions not cached (cannot write runs/digits-demo/made/" in text
    assert "read-only file system" in text
    assert (made / "submissions" / f"digits-demo-{MADE_RUN}.csv").exists()
    assert not list((made / "runs" / "digits-demo" / MADE_RUN).glob("test_probs*"))
