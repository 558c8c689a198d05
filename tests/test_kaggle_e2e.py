"""data -> train -> submit --upload for every shipped competition, against a fake Kaggle on loopback:
what the server receives is the competition's exact format, and every upload is logged."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.runs import make_run
from kagglecv.cli import main
from kagglecv.compete import upload as upload_mod
from kagglecv.compete.upload import read_log
from kagglecv.core.errors import UserError

# slug -> (columns of the file Kaggle receives, check on the value columns)
FORMATS = {
    "dogs-vs-cats": (["id", "label"], lambda v: set(v["label"]) <= {0, 1}),
    "dogs-vs-cats-redux-kernels-edition": (["id", "label"], lambda v: v["label"].between(0, 1).all()),
    "digit-recognizer": (["ImageId", "Label"], lambda v: v["Label"].between(0, 9).all()),
    "dog-breed-identification": (
        ["id", "affenpinscher", "afghan_hound", "yorkshire_terrier"],
        lambda v: np.allclose(v.iloc[:, 1:].sum(axis=1), 1, atol=1e-4),
    ),
    "plant-seedlings-classification": (
        ["file", "species"],
        lambda v: set(v["species"]) <= {"Black-grass", "Common Chickweed", "Shepherds Purse"},
    ),
    "histopathologic-cancer-detection": (["id", "label"], lambda v: v["label"].between(0, 1).all()),
    "aerial-cactus-identification": (["id", "has_cactus"], lambda v: v["has_cactus"].between(0, 1).all()),
    "cassava-leaf-disease-classification": (
        ["image_id", "label"],
        lambda v: set(v["label"]) <= {0, 1, 2, 3, 4},
    ),
    "paddy-disease-classification": (
        ["image_id", "label"],
        lambda v: set(v["label"]) <= {"bacterial_leaf_blight", "blast", "normal"},
    ),
    "siim-isic-melanoma-classification": (
        ["image_name", "target"],
        lambda v: v["target"].between(0, 1).all(),
    ),
    "plant-pathology-2020-fgvc7": (
        ["image_id", "healthy", "multiple_diseases", "rust", "scab"],
        lambda v: np.allclose(v.iloc[:, 1:].sum(axis=1), 1, atol=1e-4),
    ),
}
# Kaggle takes these only from notebooks: make submit UPLOAD=1 is an error pointing to make kernel
NOTEBOOK_ONLY = {"aerial-cactus-identification", "cassava-leaf-disease-classification"}
# slug -> (train CSV in raw/, its id and group columns): every group must lie in one fold
GROUPED = {"siim-isic-melanoma-classification": ("train.csv", "image_name", "patient_id")}


@pytest.mark.parametrize("slug", sorted(FORMATS))
def test_data_train_submit_upload(fake, workdir, slug, capsys):
    assert main(["data", slug]) == 0, cli_text(capsys)
    if slug in GROUPED:
        _assert_grouped_folds(workdir / "data" / slug, *GROUPED[slug])
    # one fold is enough to prove the format: the submission is checked, not the model
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002", "train_folds=1"]) == 0, cli_text(
        capsys
    )
    capsys.readouterr()
    code = main(["submit", "--upload", "--message", "first try"])
    text = cli_text(capsys)
    assert code == (2 if slug in NOTEBOOK_ONLY else 0), text
    (run_dir,) = (workdir / "runs" / slug).iterdir()
    written = workdir / "submissions" / f"{slug}-{run_dir.name}.csv"
    sample = pd.read_csv(workdir / "data" / slug / "sample_submission.csv")
    columns, check = FORMATS[slug]

    if slug in NOTEBOOK_ONLY:  # an error, not 0
        assert fake.submissions == [] and "takes submissions only from Kaggle notebooks" in text
        assert f"make kernel PUSH=1 RUN={run_dir.name}" in text and "nothing was uploaded" in text
        received = written.read_bytes()
    else:
        (sub,) = fake.submissions
        received = sub["data"]
        assert sub["slug"] == slug and sub["file_name"] == written.name
        assert received == written.read_bytes()
        cv = json.loads((run_dir / "summary.json").read_text())["cv_mean"]
        assert sub["description"].startswith("first try (kagglecv run " + run_dir.name)
        assert f"{cv:.4f}" in sub["description"]
        log = pd.read_csv(workdir / "submissions" / "log.csv")
        assert log.loc[0, "competition"] == slug and log.loc[0, "ref"] == sub["ref"]
        assert log.loc[0, "response"] == f"Successfully submitted to {slug}"
        assert "submitted to" in text
    df = pd.read_csv(io.BytesIO(received))
    assert list(df.columns) == columns == list(sample.columns)
    assert df[columns[0]].astype(str).tolist() == sample[columns[0]].astype(str).tolist()
    assert check(df)


def _assert_grouped_folds(root: Path, csv: str, id_column: str, group_column: str) -> None:
    """folds.csv names each image's group as the raw CSV does, and no group is in two folds."""
    truth = pd.read_csv(root / "raw" / csv, dtype=str).set_index(id_column)[group_column]
    folds = pd.read_csv(root / "folds.csv", dtype=str)
    ids = folds["image"].map(lambda p: Path(p).stem)
    assert folds["group"].tolist() == truth[ids].tolist()
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert folds["group"].value_counts().max() > 1  # real groups, not one image each


def test_submit_rejected_403_points_at_late_submission(fake, workdir, capsys):
    slug = "dogs-vs-cats"
    assert main(["data", slug]) == 0
    make_run(workdir, slug=slug)  # a finished run, untrained: only the upload is under test
    fake.status[slug] = 403
    capsys.readouterr()
    assert main(["submit", "--upload"]) == 2
    text = cli_text(capsys)
    assert "https://www.kaggle.com/competitions/dogs-vs-cats/rules" in text and "Late Submission" in text
    assert list((workdir / "submissions").glob("dogs-vs-cats-*.csv"))  # the file itself is written
    assert [r["status"] for r in read_log()] == ["not sent"]


def test_failed_upload_is_not_success(fake, checked_file, monkeypatch, capsys):
    """kaggle 2.x returns ref 0 instead of raising when the file PUT fails."""
    comp, file = checked_file
    monkeypatch.setattr(fake, "_uploads", _NoUploads())
    with pytest.raises(UserError, match="Kaggle did not accept the upload"):
        upload_mod.upload(comp, file, "run1", 0.9, None)
    log = pd.read_csv(file.parent / "log.csv")
    assert log.loc[0, "ref"] == 0 and log.loc[0, "status"] == "not sent" and fake.submissions == []


def test_lost_answer_is_not_submitted_twice(fake, checked_file, capsys):
    """Kaggle kept the submission but the answer came back 502: the retry finds it instead of resubmitting."""
    comp, file = checked_file
    upload_mod.upload(comp, file, "run1", 0.9, "first")  # an earlier, unrelated submission
    fake.lost_answers[comp.slug] = 1
    capsys.readouterr()
    upload_mod.upload(comp, file, "run1", 0.9, "second", again=True)  # the same bytes, on purpose
    text = cli_text(capsys)
    assert "retrying" in text and "the last attempt did arrive; not submitting again" in text
    assert [s["description"].split(" (")[0] for s in fake.submissions] == ["first", "second"]
    log = pd.read_csv(file.parent / "log.csv")
    assert log["ref"].tolist() == [1, 2]


def test_lost_answer_on_the_last_attempt_is_found_too(fake, checked_file, monkeypatch, capsys):
    from kagglecv.prepare.sources import kaggle as ksrc

    comp, file = checked_file
    monkeypatch.setattr(ksrc, "RETRY_DELAYS", ())  # no retries: the first answer is the last
    fake.lost_answers[comp.slug] = 1
    upload_mod.upload(comp, file, "run1", 0.9, None)
    assert "the last attempt did arrive" in cli_text(capsys)
    assert len(fake.submissions) == 1


class _NoUploads(dict):
    """Upload tokens are handed out, but the PUT finds none (-> 404), as a failed storage upload."""

    def get(self, key, default=None):
        return default


def test_upload_of_builtin_competition_is_refused(workdir):
    from kagglecv.core.competition import load_competition

    file = workdir / "submissions" / "digits-demo-run1.csv"
    with pytest.raises(UserError, match=r"not a Kaggle competition \(source: builtin\)"):
        upload_mod.upload(load_competition("digits-demo"), file, "run1", 0.9, None)


# --- crash-safe upload, without training: a checked file, sent as make submit UPLOAD=1 sends it ---------

KILLED_AFTER_KAGGLE_TOOK_IT = """
import os, signal, sys
from pathlib import Path
from kagglecv.compete import upload
from kagglecv.core.competition import load_competition

real = upload.settle
def killed(token, after, **changes):  # kill -9 between Kaggle's answer and the log row
    if changes.get("status") == upload.DONE:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(token, after, **changes)
upload.settle = killed
upload.upload(load_competition("digit-recognizer"), Path(sys.argv[1]), "run1", 0.9, "first")
"""


@pytest.fixture
def checked_file(fake, workdir):
    from kagglecv.core.competition import load_competition

    file = workdir / "submissions" / "digit-recognizer-run1.csv"
    file.parent.mkdir()
    file.write_text("ImageId,Label\n1,0\n")
    return load_competition("digit-recognizer"), file


def test_killed_between_accept_and_log_is_not_sent_twice(fake, checked_file, workdir, capsys):
    import os
    import subprocess
    import sys

    from helpers.kaggle_fake import client_env

    comp, file = checked_file
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env = {**base, **client_env(fake, workdir / "home2")}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_KAGGLE_TOOK_IT, str(file.relative_to(workdir))], env=env
    )
    assert proc.returncode == -9 and len(fake.submissions) == 1
    (row,) = read_log()
    assert row["status"] == "pending" and row["token"] in fake.submissions[0]["description"]
    # the rerun finds the token on Kaggle: the row is settled, nothing is sent again
    again = upload_mod.upload(comp, Path(row["file"]), "run1", 0.9, "first")
    assert len(fake.submissions) == 1 and again["ref"] == "1"
    assert "interrupted after Kaggle took it (ref 1)" in cli_text(capsys)
    assert [(r["status"], r["ref"]) for r in read_log()] == [("done", "1")]


def test_killed_before_sending_is_sent_on_the_rerun(fake, checked_file, monkeypatch, capsys):
    comp, file = checked_file
    real = upload_mod._send
    monkeypatch.setattr(upload_mod, "_send", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        upload_mod.upload(comp, file, "run1", 0.9, "first")
    assert fake.submissions == [] and read_log()[0]["status"] == "pending"
    monkeypatch.setattr(upload_mod, "_send", real)
    upload_mod.upload(comp, file, "run1", 0.9, "first")
    assert len(fake.submissions) == 1
    assert [(r["status"], r["ref"]) for r in read_log()] == [("not sent", "0"), ("done", "1")]


@pytest.mark.parametrize("when", ["before", "after"])
def test_log_on_a_full_or_read_only_disk_says_what_was_sent(fake, checked_file, monkeypatch, capsys, when):
    import errno

    comp, file = checked_file
    real, calls = upload_mod.atomic_write, {"n": 0}

    def refuse(path, write):
        calls["n"] += 1
        if (when == "before") == (calls["n"] == 1):
            code = errno.EROFS if when == "before" else errno.ENOSPC
            raise OSError(code, os.strerror(code), f"{path}.123.tmp.csv")
        return real(path, write)

    monkeypatch.setattr(upload_mod, "atomic_write", refuse)
    with pytest.raises(UserError) as e:
        upload_mod.upload(comp, file, "run1", 0.9, None)
    said = str(e.value)
    if when == "before":
        assert said.startswith("cannot write submissions/log.csv: it is on a read-only file system")
        assert said.endswith("(nothing was uploaded)") and fake.submissions == []
    else:
        assert said.startswith("cannot write submissions/log.csv: the disk is full") and "free in" in said
        assert "Kaggle took it as ref 1; the row stays pending" in said and len(fake.submissions) == 1


def test_upload_whose_fate_is_unknown_stays_pending(fake, checked_file, capsys):
    """Kaggle down even for the listing: nobody can tell whether the file arrived, so the row stays
    pending, and the next upload looks it up before sending."""
    comp, file = checked_file
    fake.flaky["digit-recognizer"] = 100
    with pytest.raises(UserError, match="whether it arrived is unknown"):
        upload_mod.upload(comp, file, "run1", 0.9, None)
    assert read_log()[0]["status"] == "pending"
    fake.flaky["digit-recognizer"] = 0
    upload_mod.upload(comp, file, "run1", 0.9, None)
    assert [r["status"] for r in read_log()] == ["not sent", "done"] and len(fake.submissions) == 1


def test_refused_upload_is_logged_not_sent(fake, checked_file):
    comp, file = checked_file
    fake.status["digit-recognizer"] = 403
    with pytest.raises(UserError, match="Late Submission"):
        upload_mod.upload(comp, file, "run1", 0.9, None)
    assert [r["status"] for r in read_log()] == ["not sent"] and fake.submissions == []


def test_two_uploads_at_once_the_second_waits_its_turn(fake, checked_file):
    """The second would take the first's pending row for an interrupted upload."""
    from kagglecv.core.locks import hold

    comp, file = checked_file
    with hold(file.parent / ".upload.lock", True, "the first upload", "busy"):
        with pytest.raises(UserError, match="another upload is running .*the first upload"):
            upload_mod.upload(comp, file, "run1", 0.9, None)
    assert fake.submissions == [] and read_log() == []


# --- the same bytes again -----------------------------------------------------------------------------


class _Terminal(io.StringIO):
    """stdin as a person at a terminal answers."""

    def isatty(self) -> bool:
        return True


def test_identical_file_is_not_uploaded_twice_without_a_yes(fake, checked_file, monkeypatch, capsys):
    """UPLOAD=1 run twice on the same file (or its bytes under another name): a second submission of
    the day spent on nothing. Refused in one line where nobody can answer, asked on a terminal."""
    comp, file = checked_file
    upload_mod.upload(comp, file, "run1", 0.9, None)
    twin = file.with_name("digit-recognizer-run2.csv")
    twin.write_bytes(file.read_bytes())
    capsys.readouterr()
    for same in (file, twin):
        with pytest.raises(UserError) as e:
            upload_mod.upload(comp, same, "run1", 0.9, None)
        said = str(e.value)
        assert "already took from you (ref 1" in said and "AGAIN=1" in said and "\n" not in said
    assert len(fake.submissions) == 1
    monkeypatch.setattr("sys.stdin", _Terminal("\n"))  # Enter: the default is no
    assert upload_mod.upload(comp, twin, "run1", 0.9, None) is None
    assert "not sent" in cli_text(capsys) and len(fake.submissions) == 1
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert upload_mod.upload(comp, twin, "run1", 0.9, None)["ref"] == "2"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert upload_mod.upload(comp, file, "run1", 0.9, None, again=True)["ref"] == "3"
    file.write_text("ImageId,Label\n1,7\n")  # other bytes: sent without a question
    assert upload_mod.upload(comp, file, "run1", 0.9, None)["ref"] == "4"
    assert len(fake.submissions) == 4


def test_an_upload_logged_before_the_log_kept_hashes_is_found_through_the_record(fake, checked_file):
    """log.csv rows written by an older kagglecv have no sha256; the submission record beside the
    file lists its uploads while its bytes are unchanged."""
    comp, file = checked_file
    row = upload_mod.upload(comp, file, "run1", 0.9, None)
    rows = read_log()
    for r in rows:
        r["sha256"] = ""
    upload_mod._write_log(rows, "test")
    sha = upload_mod._sha256(file)
    record = {"file": str(file), "sha256": sha, "uploads": [{**row, "ref": int(row["ref"])}]}
    file.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="already took from you"):
        upload_mod.upload(comp, file, "run1", 0.9, None)
    assert len(fake.submissions) == 1
