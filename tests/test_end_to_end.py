"""The whole spine on the CPU: data -> train (2 folds x 1 epoch) -> submit, through the CLI."""

import json

import pandas as pd

from kagglecv.cli import main


def test_data_train_submit(workdir, capsys):
    assert main(["data", "digits-demo"]) == 0
    assert (workdir / "data" / ".last-competition").read_text().strip() == "digits-demo"
    assert main(["train", "--config", "configs/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert "using competition digits-demo" in out
    (run_dir,) = (workdir / "runs" / "digits-demo").iterdir()
    for name in (
        "config.yaml",
        "lr_find.png",
        "lr_find.json",
        "metrics.csv",
        "fold0.pt",
        "fold1.pt",
        "oof.csv",
    ):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "competition",
        "run",
        "model",
        "folds",
        "metric",
        "cv_mean",
        "cv_std",
        "fold_scores",
        "seconds",
    ):
        assert key in summary
    assert summary["folds"] == 2 and len(summary["fold_scores"]) == 2
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert (
        list(metrics.columns) == ["fold", "epoch", "lr", "train_loss", "val_loss", "metric"]
        and len(metrics) == 2
    )
    oof = pd.read_csv(run_dir / "oof.csv")
    assert set(oof["fold"]) == {0, 1} and {f"p_{d}" for d in range(10)} <= set(oof.columns)

    assert main(["submit"]) == 0
    out = capsys.readouterr().out
    sub = pd.read_csv(workdir / "submissions" / f"digits-demo-{run_dir.name}.csv")
    sample = pd.read_csv(workdir / "data" / "digits-demo" / "sample_submission.csv")
    assert list(sub.columns) == ["ImageId", "Label"] and sub["ImageId"].tolist() == sample["ImageId"].tolist()
    assert sub["Label"].between(0, 9).all()
    record = json.loads((workdir / "submissions" / f"digits-demo-{run_dir.name}.json").read_text())
    solution = pd.read_csv(workdir / "data" / "digits-demo" / "solution.csv")
    assert record["test_score"] == (sub["Label"].astype(str) == solution["label"].astype(str)).mean()
    assert "test accuracy" in out


def test_same_seed_same_cv(digits):
    from kagglecv.competition import load_competition
    from kagglecv.config import load_config
    from kagglecv.train import train

    comp = load_competition("digits-demo")
    cfg = load_config("configs/smoke.yaml", ["lr=0.002", "folds=2"])
    a = json.loads((train(comp, cfg) / "summary.json").read_text())
    b = json.loads((train(comp, cfg) / "summary.json").read_text())
    assert a["fold_scores"] == b["fold_scores"]
