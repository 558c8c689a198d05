"""The whole spine on the CPU: data -> train (2 folds x 1 epoch) -> submit, through the CLI."""

import json

import pandas as pd

from conftest import FINISHED_RUN_ARGS
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
        list(metrics.columns) == ["fold", "epoch", "lr", "train_loss", "val_loss", "metric", "img_size"]
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


def test_same_seed_same_cv(finished_run):
    from kagglecv.competition import load_competition
    from kagglecv.config import load_config
    from kagglecv.train import train

    cfg = load_config("configs/smoke.yaml", FINISHED_RUN_ARGS)
    a = json.loads((finished_run / "summary.json").read_text())
    b = json.loads((train(load_competition("digits-demo"), cfg) / "summary.json").read_text())
    assert a["fold_scores"] == b["fold_scores"] and len(a["fold_scores"]) == 2


def test_the_default_recipe_shrunk_trains_on_the_cpu(digits):
    """configs/default.yaml as a GPU run uses it (head-only epoch with frozen BatchNorm, then layer-decayed
    LRs for everything, LR range test), shrunk: a tiny model, 32 px, 1+1 epochs, 2 folds, on the CPU."""
    from kagglecv.competition import load_competition
    from kagglecv.config import load_config
    from kagglecv.train import train

    shrink = ["model=test_resnet", "pretrained=false", "img_size=32", "epochs=1", "train_folds=2"]
    shrink += ["batch_size=32", "lr_find_iters=20", "device=cpu", "workers=0"]
    cfg = load_config("configs/default.yaml", shrink)
    assert cfg.freeze_epochs == 1 and cfg.layer_decay == 0.8 and cfg.lr == "auto"  # the recipe's own
    run = train(load_competition("digits-demo"), cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fold_ids"] == [0, 1] and summary["device"] == "cpu"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.groupby("fold")["epoch"].apply(list).tolist() == [[0, 1], [0, 1]]  # head, then all
    assert (run / "lr_find.json").exists()
