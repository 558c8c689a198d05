"""The same k-fold training through fastai, for `kagglecv bench --fastai` (needs the `bench` extra).

Same prepared images, same folds.csv, same timm model (through fastai's vision_learner), same image
size, epochs, batch size, augmentation (as fastai's batch transforms), label smoothing and one-cycle
policy; each side finds its own LR. We report both wall times and CV scores.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from rich.table import Table

from kagglecv.core.competition import Competition
from kagglecv.core.config import TrainConfig
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.runs import read_summary
from kagglecv.ml.augment import Augment
from kagglecv.prepare.layout import FOLDS, read_prepared

FASTAI_MISSING = "fastai is not installed: `.venv/bin/pip install -e '.[bench]'` adds it"


def fastai_cv(comp: Competition, cfg: TrainConfig, img_size: int, fold_ids: list[int]) -> dict:
    """k-fold through fastai the way its users write it for images that already share one size: no
    per-item Resize (the batch transforms resize on the batch), aug_transforms with our rotation,
    zoom and flips, our label smoothing and weight decay, bs from the recipe, and fastai's own
    lr_find (once, on fold 0, as ours runs its range test once per run)."""
    try:
        import fastai.vision.all as fa
    except ImportError:
        raise UserError(FASTAI_MISSING) from None
    read_prepared(comp)
    folds = pd.read_csv(comp.data_dir / FOLDS)
    folds["label"] = folds["label"].astype(str)
    same_size = _one_size(comp.data_dir, folds["image"])
    t0 = time.time()
    scores, lr = [], None
    for k in fold_ids:
        dls = _datablock(fa, comp, cfg, folds, k, img_size, same_size).dataloaders(
            folds, bs=cfg.batch_size, num_workers=0
        )
        learn = fa.vision_learner(
            dls,
            cfg.model,
            pretrained=cfg.pretrained,
            metrics=fa.accuracy,
            loss_func=fa.LabelSmoothingCrossEntropyFlat(eps=cfg.label_smoothing),
            wd=cfg.weight_decay,
        )
        with learn.no_bar(), learn.no_logging():
            if lr is None:
                lr = float(learn.lr_find(show_plot=False).valley)
            learn.fit_one_cycle(cfg.epochs, lr)
            scores.append(float(learn.validate()[1]))
        console.print(f"fastai fold {k}: accuracy {scores[-1]:.4f} (lr {lr:.2e})")
    return {"seconds": time.time() - t0, "cv_mean": float(np.mean(scores)), "fold_scores": scores, "lr": lr}


def _datablock(fa, comp: Competition, cfg: TrainConfig, folds: pd.DataFrame, k: int, img_size: int,
               same_size: bool):  # fmt: skip
    """fastai's DataBlock for fold k held out: our augmentations through aug_transforms on the batch."""
    mean, std = cfg.mean or [0.5] * 3, cfg.std or [0.5] * 3
    aug = Augment.from_recipe(cfg, hflip=comp.hflip, vflip=comp.vflip)
    augment = fa.aug_transforms(size=img_size, do_flip=aug.hflip, flip_vert=aug.vflip, max_rotate=aug.rotate,
                                min_zoom=1 - aug.scale, max_zoom=1 + aug.scale, max_lighting=0.0, max_warp=0.0,
                                p_affine=1.0)  # fmt: skip
    return fa.DataBlock(
        blocks=(fa.ImageBlock, fa.CategoryBlock),
        get_x=fa.ColReader("image", pref=f"{comp.data_dir}/"),
        get_y=fa.ColReader("label"),
        splitter=fa.IndexSplitter(np.flatnonzero(folds["fold"].to_numpy() == k)),
        item_tfms=None if same_size else fa.Resize(img_size),
        batch_tfms=[*augment, fa.Normalize.from_stats(mean, std)],
    )


def _one_size(root, images) -> bool:
    """Do the images share one size (then fastai needs no per-item Resize)? A sample of 50 says."""
    from PIL import Image

    sizes = {Image.open(root / p).size for p in list(images)[:: max(1, len(images) // 50)]}
    return len(sizes) == 1


def bench_fastai(overrides: list[str]) -> None:
    """`kagglecv bench --fastai`: digits-demo with configs/demo.yaml (+ overrides), ours then fastai's,
    the figures in bench/fastai.json."""
    import json

    from kagglecv.bench.throughput import BENCH_DIR
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config
    from kagglecv.prepare.layout import prepare

    comp = load_competition("digits-demo")
    prepare(comp)
    result = compare(comp, load_config("configs/demo.yaml", overrides))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "fastai.json").write_text(json.dumps(result, indent=2))


def compare(comp: Competition, cfg: TrainConfig) -> dict:
    """Train ours, then fastai, on the same folds; print and return both. Our run goes to
    runs/bench/<time>-kagglecv-vs-fastai/, so it never becomes the competition's latest run."""
    import importlib.util

    from kagglecv.core.runs import RUNS_DIR
    from kagglecv.train.run import train

    if importlib.util.find_spec("fastai") is None:  # before minutes of our own training, not after
        raise UserError(FASTAI_MISSING)
    t0 = time.time()
    run_dir = train(comp, cfg, run_dir=RUNS_DIR / "bench" / time.strftime("%Y%m%d-%H%M%S-kagglecv-vs-fastai"))
    ours_seconds = time.time() - t0
    summary = read_summary(run_dir)
    theirs = fastai_cv(comp, cfg, summary["img_size"], summary["fold_ids"])
    table = Table(
        title=f"{comp.slug}: kagglecv vs fastai · {cfg.model} · {cfg.epochs} epochs × "
        f"{len(summary['fold_ids'])} folds",
        title_justify="left",
    )
    for col in ("", "wall time (s)", "CV accuracy"):
        table.add_column(col, justify="right")
    table.add_row("kagglecv", f"{ours_seconds:.0f}", f"{summary['cv_mean']:.4f}")
    table.add_row("fastai", f"{theirs['seconds']:.0f}", f"{theirs['cv_mean']:.4f}")  # lr_find included
    table.add_row("ratio", f"[bold]{ours_seconds / theirs['seconds']:.2f}[/]", "")
    console.print(table)
    return {
        "ours_seconds": ours_seconds,
        "ours_cv": summary["cv_mean"],
        "fastai": theirs,
        "time_ratio": ours_seconds / theirs["seconds"],
    }
