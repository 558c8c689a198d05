"""Runs made up for tests, and a training interrupted on purpose: what `finished_run` (conftest.py)
trains with, a run folder as train leaves it but with untrained models (`make_run`, torch imported
only there), one with made-up OOF and metrics and no models at all (`write_synthetic_run`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

# what `finished_run` trained: configs/smoke.yaml as it is (LR range test, 2 folds x 1 epoch) on the CPU
FINISHED_RUN_ARGS = ["device=cpu"]


MADE_RUN = "made"


def make_run(root: Path, fold_ids=(0, 1), listed=None, slug: str = "digits-demo", recipe=()) -> Path:
    """runs/<slug>/made/ as train leaves it (fold<k>.pt + oof_fold<k>.csv, gathered), with two
    randomly initialised test_resnet folds: no training, so it takes a second."""
    import torch

    from kagglecv.core.checkpoint import CheckpointMeta, save_checkpoint
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config
    from kagglecv.core.runs import gather
    from kagglecv.ml.model import create_model

    comp = load_competition(slug)
    info = json.loads((root / "data" / slug / "prepared.json").read_text())
    classes = [str(c) for c in info["classes"]]
    folds = pd.read_csv(root / "data" / slug / "folds.csv")
    cfg = load_config(root / "configs" / "smoke.yaml", list(recipe))
    run = root / "runs" / slug / MADE_RUN
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    rng = np.random.default_rng(0)
    for k in fold_ids:
        torch.manual_seed(k)
        model = create_model("test_resnet", num_classes=len(classes), in_chans=3)
        meta = {"competition": slug, "model": "test_resnet", "num_classes": len(classes),
                "classes": classes, "in_chans": 3, "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                "fold": k, "best_epoch": 0, "metric": "accuracy", "score": 0.1 * (k + 1), "lr": 0.002,
                "ema": False, "config": cfg.to_dict()}  # fmt: skip
        save_checkpoint(run / f"fold{k}.pt", model.state_dict(), CheckpointMeta.from_json(meta))
        part = folds[folds["fold"] == k].copy()
        probs = rng.dirichlet(np.ones(len(classes)), size=len(part))
        for j, c in enumerate(classes):
            part[f"p_{c}"] = probs[:, j]
        part["pred"] = [classes[j] for j in probs.argmax(1)]
        part.to_csv(run / f"oof_fold{k}.csv", index=True, index_label="row")
    gather(run, comp)
    if listed is not None:  # a summary gathered before the other folds were copied in
        summary = json.loads((run / "summary.json").read_text())
        summary["fold_ids"], summary["folds"] = list(listed), len(listed)
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def write_synthetic_run(
    run_dir: Path, n_classes: int, per_class: int = 5, seed: int = 0, classes=None, signal: float = 3.0
) -> None:
    """A run folder as train writes it, with fixed LR (no lr_find.json), no test score and no images."""
    rng = np.random.default_rng(seed)
    classes = classes or [f"breed_{i:03d}" for i in range(n_classes)]
    y = np.repeat(np.arange(n_classes), per_class)
    logits = rng.normal(0, 1, (len(y), n_classes))
    logits[np.arange(len(y)), y] += signal
    logits[np.arange(len(y)), (y + 1) % n_classes] += 2.5 * (y % 7 == 0)  # some classes get confused
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    oof = pd.DataFrame(
        {
            "image": [f"train/{classes[c]}/{i}.jpg" for i, c in enumerate(y)],
            "label": [classes[c] for c in y],
            "fold": np.arange(len(y)) % 2,
            **{f"p_{c}": probs[:, j] for j, c in enumerate(classes)},
            "pred": [classes[j] for j in probs.argmax(1)],
        }
    )
    run_dir.mkdir(parents=True)
    oof.to_csv(run_dir / "oof.csv", index=False)
    pd.DataFrame(
        [(f, e, 1e-3, 2 - e / 2, 2.1 - e / 3, 0.3 + e / 10) for f in (0, 1) for e in range(3)],
        columns=["fold", "epoch", "lr", "train_loss", "val_loss", "metric"],
    ).to_csv(run_dir / "metrics.csv", index=False)
    (run_dir / "config.yaml").write_text("model: resnet50\nlr: 0.001\nepochs: 3\n")
    summary = {
        "competition": "dogs",
        "run": run_dir.name,
        "model": "resnet50",
        "folds": 2,
        "fold_ids": [0, 1],
        "metric": "accuracy",
        "higher_is_better": True,
        "cv_mean": 0.5,
        "cv_std": 0.01,
        "fold_scores": [0.49, 0.51],
        "oof_score": 0.5,
        "best_epochs": [2, 1],
        "lr": 0.001,
        "img_size": 224,
        "device": "cuda",
        "seconds": 100.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


@contextlib.contextmanager
def interrupted_at_validation(monkeypatch, n: int):
    """Ctrl-C at training's n-th validation (the end of epoch n), as train() sees a user's interrupt."""
    import kagglecv.train.one_fold as fold_mod

    real, calls = fold_mod.validate, {"n": 0}

    def validate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fold_mod, "validate", validate)
    try:
        yield
    finally:
        monkeypatch.setattr(fold_mod, "validate", real)
