"""The same k-fold training through fastai, for `kagglecv bench --fastai` (needs the `bench` extra).

Same prepared images, same folds.csv, same timm model (through fastai's vision_learner), same image
size, epochs, LR and one-cycle policy; we report both wall times and CV scores.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from rich.table import Table

from .competition import Competition
from .config import TrainConfig
from .console import console
from .errors import UserError
from .layout import FOLDS, read_prepared
from .runs import read_summary

FASTAI_MISSING = "fastai is not installed: `.venv/bin/pip install -e '.[bench]'` adds it"


def fastai_cv(comp: Competition, cfg: TrainConfig, lr: float, img_size: int, fold_ids: list[int]) -> dict:
    try:
        from fastai.vision.all import (
            CategoryBlock,
            ColReader,
            DataBlock,
            ImageBlock,
            IndexSplitter,
            Normalize,
            Resize,
            accuracy,
            vision_learner,
        )
    except ImportError:
        raise UserError(FASTAI_MISSING) from None
    read_prepared(comp)
    folds = pd.read_csv(comp.data_dir / FOLDS)
    folds["label"] = folds["label"].astype(str)
    t0 = time.time()
    scores = []
    for k in fold_ids:
        block = DataBlock(
            blocks=(ImageBlock, CategoryBlock),
            get_x=ColReader("image", pref=f"{comp.data_dir}/"),
            get_y=ColReader("label"),
            splitter=IndexSplitter(np.flatnonzero(folds["fold"].to_numpy() == k)),
            item_tfms=Resize(img_size),
            batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3),
        )
        dls = block.dataloaders(folds, bs=cfg.batch_size, num_workers=0)
        learn = vision_learner(dls, cfg.model, pretrained=False, metrics=accuracy)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(cfg.epochs, lr)
            scores.append(float(learn.validate()[1]))
        console.print(f"fastai fold {k}: accuracy {scores[-1]:.4f}")
    return {"seconds": time.time() - t0, "cv_mean": float(np.mean(scores)), "fold_scores": scores}


def compare(comp: Competition, cfg: TrainConfig) -> dict:
    """Train ours, then fastai, on the same folds; print and return both. Our run goes to
    runs/bench/<time>-kagglecv-vs-fastai/, so it never becomes the competition's latest run."""
    import importlib.util

    from .runs import RUNS_DIR
    from .train import train

    if importlib.util.find_spec("fastai") is None:  # before minutes of our own training, not after
        raise UserError(FASTAI_MISSING)
    t0 = time.time()
    run_dir = train(comp, cfg, run_dir=RUNS_DIR / "bench" / time.strftime("%Y%m%d-%H%M%S-kagglecv-vs-fastai"))
    ours_seconds = time.time() - t0
    summary = read_summary(run_dir)
    theirs = fastai_cv(comp, cfg, summary["lr"], summary["img_size"], summary["fold_ids"])
    table = Table(
        title=f"{comp.slug}: kagglecv vs fastai · {cfg.model} · {cfg.epochs} epochs × "
        f"{len(summary['fold_ids'])} folds",
        title_justify="left",
    )
    for col in ("", "wall time (s)", "CV accuracy"):
        table.add_column(col, justify="right")
    table.add_row("kagglecv", f"{ours_seconds:.0f}", f"{summary['cv_mean']:.4f}")
    table.add_row("fastai", f"{theirs['seconds']:.0f}", f"{theirs['cv_mean']:.4f}")
    table.add_row("ratio", f"[bold]{ours_seconds / theirs['seconds']:.2f}[/]", "")
    console.print(table)
    return {
        "ours_seconds": ours_seconds,
        "ours_cv": summary["cv_mean"],
        "fastai": theirs,
        "time_ratio": ours_seconds / theirs["seconds"],
    }
