"""data -> train -> submit --upload for every shipped competition, against a fake Kaggle on loopback:
what the server receives is the competition's exact format, and every upload is logged."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from conftest import cli_text
from kagglecv.cli import main

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
}


@pytest.mark.parametrize("slug", sorted(FORMATS))
def test_data_train_submit_upload(fake, workdir, slug, capsys):
    assert main(["data", slug]) == 0, cli_text(capsys)
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0, cli_text(capsys)
    capsys.readouterr()
    assert main(["submit", "--upload", "--message", "first try"]) == 0, cli_text(capsys)
    text = cli_text(capsys)
    (run_dir,) = (workdir / "runs" / slug).iterdir()
    written = workdir / "submissions" / f"{slug}-{run_dir.name}.csv"
    sample = pd.read_csv(workdir / "data" / slug / "sample_submission.csv")
    columns, check = FORMATS[slug]

    if slug == "aerial-cactus-identification":  # Kaggle takes it only from notebooks
        assert fake.submissions == [] and "takes submissions only from Kaggle notebooks" in text
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


def test_submit_rejected_403_points_at_late_submission(fake, workdir, capsys):
    slug = "dogs-vs-cats"
    assert main(["data", slug]) == 0
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    fake.status[slug] = 403
    capsys.readouterr()
    assert main(["submit", "--upload"]) == 2
    text = cli_text(capsys)
    assert "https://www.kaggle.com/competitions/dogs-vs-cats/rules" in text and "Late Submission" in text
    assert list((workdir / "submissions").glob("dogs-vs-cats-*.csv"))  # the file itself is written
    assert not (workdir / "submissions" / "log.csv").exists()


def test_failed_upload_is_not_success(fake, workdir, monkeypatch, capsys):
    """kaggle 2.x returns ref 0 instead of raising when the file PUT fails."""
    slug = "digit-recognizer"
    assert main(["data", slug]) == 0
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    monkeypatch.setattr(fake, "_uploads", _NoUploads())
    capsys.readouterr()
    assert main(["submit", "--upload"]) == 2
    assert "Kaggle did not accept the upload" in cli_text(capsys)
    log = pd.read_csv(workdir / "submissions" / "log.csv")
    assert log.loc[0, "ref"] == 0 and fake.submissions == []


def test_lost_answer_is_not_submitted_twice(fake, workdir, capsys):
    """Kaggle kept the submission but the answer came back 502: the retry finds it instead of resubmitting."""
    slug = "digit-recognizer"
    assert main(["data", slug]) == 0
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    assert main(["submit", "--upload", "--message", "first"]) == 0  # an earlier, unrelated submission
    fake.lost_answers[slug] = 1
    capsys.readouterr()
    assert main(["submit", "--upload", "--message", "second"]) == 0
    text = cli_text(capsys)
    assert "retrying" in text and "the last attempt did arrive; not submitting again" in text
    assert [s["description"].split(" (")[0] for s in fake.submissions] == ["first", "second"]
    log = pd.read_csv(workdir / "submissions" / "log.csv")
    assert log["ref"].tolist() == [1, 2]


def test_lost_answer_on_the_last_attempt_is_found_too(fake, workdir, monkeypatch, capsys):
    from kagglecv.sources import kaggle as ksrc

    slug = "digit-recognizer"
    assert main(["data", slug]) == 0
    assert main(["train", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    monkeypatch.setattr(ksrc, "RETRY_DELAYS", ())  # no retries: the first answer is the last
    fake.lost_answers[slug] = 1
    capsys.readouterr()
    assert main(["submit", "--upload"]) == 0
    assert "the last attempt did arrive" in cli_text(capsys)
    assert len(fake.submissions) == 1


class _NoUploads(dict):
    """Upload tokens are handed out, but the PUT finds none (-> 404), as a failed storage upload."""

    def get(self, key, default=None):
        return default


def test_upload_of_builtin_competition_is_refused(digits, capsys):
    assert main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    capsys.readouterr()
    assert main(["submit", "--comp", "digits-demo", "--upload"]) == 2
    assert "not a Kaggle competition (source: builtin)" in cli_text(capsys)
