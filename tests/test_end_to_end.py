"""The whole spine on the CPU: data -> train (2 folds x 1 epoch) -> submit, through the CLI."""

import contextlib
import io
import json
import shutil

import pandas as pd
import pytest

from helpers.repo import REPO
from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.cli import main


@pytest.fixture(scope="module")
def spine(tmp_path_factory):
    """`kagglecv data digits-demo`, then `kagglecv train --config configs/smoke.yaml device=cpu` (the
    competition prepared last), once for this module in a folder laid out as `workdir` does it.
    Returns (that folder, data's and train's exit codes, what train printed). test_data_train_submit
    checks this run and submits it; test_same_seed_same_cv compares it with conftest's finished_run,
    trained apart with the same recipe and seed."""
    root = tmp_path_factory.mktemp("spine")
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, root / name)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as m:
        m.chdir(root)
        m.setenv("KAGGLECV_NO_PROGRESS", "1")
        data_rc = main(["data", "digits-demo"])
        with contextlib.redirect_stdout(printed):
            train_rc = main(["train", "--config", "configs/smoke.yaml", *FINISHED_RUN_ARGS])
    return root, data_rc, train_rc, printed.getvalue()


@pytest.mark.slow  # `spine` prepares and trains digits-demo for this module: ~13 s
def test_data_train_submit(spine, monkeypatch, capsys):
    workdir, data_rc, train_rc, out = spine
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("KAGGLECV_NO_PROGRESS", "1")
    assert data_rc == 0
    assert (workdir / "data" / ".last-competition").read_text().strip() == "digits-demo"
    assert train_rc == 0
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


@pytest.mark.slow  # needs `spine` (a training, ~13 s)
def test_same_seed_same_cv(finished_run, spine):
    """Two trainings of configs/smoke.yaml + FINISHED_RUN_ARGS (LR range test, 2 folds, seed 0): conftest's
    (in-process train() on digits-demo prepared by layout.prepare) and this module's spine (the CLI,
    after `kagglecv data`), in two folders, score every fold alike."""
    (run_b,) = (spine[0] / "runs" / "digits-demo").glob("*/summary.json")
    a = json.loads((finished_run / "summary.json").read_text())
    b = json.loads(run_b.read_text())
    assert a["fold_scores"] == b["fold_scores"] and len(a["fold_scores"]) == 2


def test_the_default_recipe_shrunk_trains_on_the_cpu(digits_small):
    """configs/default.yaml as a GPU run uses it (head-only epoch with frozen BatchNorm, then layer-decayed
    LRs for everything, LR range test), shrunk: a tiny model, 32 px, 1+1 epochs, 2 folds, on the CPU
    (digits-small: it checks how the recipe trains, not how well)."""
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config
    from kagglecv.train.run import train

    shrink = ["model=test_resnet", "pretrained=false", "img_size=32", "epochs=1", "train_folds=2"]
    shrink += ["batch_size=32", "lr_find_iters=20", "device=cpu", "workers=0"]
    cfg = load_config("configs/default.yaml", shrink)
    assert cfg.freeze_epochs == 1 and cfg.layer_decay == 0.8 and cfg.lr == "auto"  # the recipe's own
    run = train(load_competition("digits-small"), cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fold_ids"] == [0, 1] and summary["device"] == "cpu"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.groupby("fold")["epoch"].apply(list).tolist() == [[0, 1], [0, 1]]  # head, then all
    assert (run / "lr_find.json").exists()
