"""`kagglecv lb`: public scores from the (fake) Kaggle's submissions listing, matched by ref, beside CV;
`kagglecv runs` shows them. The real kaggle client talks to the loopback fake."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.compete import upload as upload_mod
from kagglecv.core.competition import load_competition


@pytest.fixture
def three_uploads(fake, workdir):
    comp = load_competition("digit-recognizer")
    (workdir / "submissions").mkdir()
    for i, cv in enumerate((0.91, 0.95, 0.93), start=1):
        file = workdir / "submissions" / f"digit-recognizer-run{i}.csv"
        file.write_text(f"ImageId,Label\n1,{i}\n")  # three different files: none is a resend
        upload_mod.upload(comp, file, f"run{i}", cv, None)
    return comp


def test_lb_matches_public_scores_by_ref_and_names_the_two_finals(fake, three_uploads, workdir, capsys):
    fake.public_scores = {1: "0.90100", 2: "0.94800", 3: "0.92950"}
    assert main(["lb", "-c", "digit-recognizer"]) == 0
    text = cli_text(capsys)
    ledger = pd.read_csv(workdir / "runs" / "digit-recognizer" / "ledger.csv")
    assert dict(zip(ledger["ref"], ledger["public_score"], strict=True)) == {1: 0.901, 2: 0.948, 3: 0.9295}
    assert dict(zip(ledger["ref"], ledger["run"], strict=True)) == {1: "run1", 2: "run2", 3: "run3"}
    assert "Spearman 1.000" in text  # CV and public LB rank the three alike
    assert "ref 2 (run2), ref 3 (run3)" in text  # the two best CV, best first


def test_lb_shows_each_status_as_a_word_not_the_clients_enum(fake, three_uploads, workdir, capsys):
    fake.public_scores = {1: "0.90100"}
    assert main(["lb", "-c", "digit-recognizer"]) == 0
    text = cli_text(capsys)
    ledger = pd.read_csv(workdir / "runs" / "digit-recognizer" / "ledger.csv")
    assert dict(zip(ledger["ref"], ledger["status"], strict=True)) == {
        1: "complete",
        2: "pending",
        3: "pending",
    }
    assert "SubmissionStatus" not in text and "complete" in text and "pending" in text


def test_lb_keeps_unscored_submissions_and_later_fills_them(fake, three_uploads, workdir, capsys):
    fake.public_scores = {1: "0.90100"}
    assert main(["lb", "-c", "digit-recognizer"]) == 0
    ledger = pd.read_csv(workdir / "runs" / "digit-recognizer" / "ledger.csv")
    assert ledger["public_score"].isna().sum() == 2
    fake.public_scores.update({2: "0.95", 3: "0.93"})
    assert main(["lb", "-c", "digit-recognizer"]) == 0
    ledger = pd.read_csv(workdir / "runs" / "digit-recognizer" / "ledger.csv")
    assert ledger["public_score"].notna().all() and len(ledger) == 3


def test_runs_table_shows_public_lb_beside_cv(fake, three_uploads, workdir, capsys):
    fake.public_scores = {2: "0.94800"}
    assert main(["lb", "-c", "digit-recognizer"]) == 0
    run = workdir / "runs" / "digit-recognizer" / "run2"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: resnet18\nepochs: 3\n")
    (run / "summary.json").write_text(
        json.dumps({"cv_mean": 0.95, "cv_std": 0.01, "fold_ids": [0, 1, 2, 3, 4]})
    )
    (workdir / "submissions" / "digit-recognizer-run2.json").write_text(
        json.dumps({"competition": "digit-recognizer", "run": "run2", "test_score": None})
    )
    capsys.readouterr()
    assert main(["runs", "-c", "digit-recognizer"]) == 0
    frame = pd.read_csv(workdir / "runs" / "digit-recognizer" / "runs.csv")
    row = frame.set_index("run").loc["run2"]
    assert row["public_lb"] == pytest.approx(0.948) and row["state"] == "finished"
    assert "0.94800" in cli_text(capsys)
    assert (workdir / "runs" / "digit-recognizer" / "runs.html").read_text().count("<img") == 1


def test_lb_without_uploads_or_on_a_builtin_competition_is_one_line(fake, workdir, capsys):
    assert main(["lb", "-c", "digit-recognizer"]) == 2
    assert "no upload of digit-recognizer" in cli_text(capsys)
    assert main(["lb", "-c", "digits-demo"]) == 2
    assert "not a Kaggle competition" in cli_text(capsys)
