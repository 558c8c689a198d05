"""One pass per fold model over the images it held out (and over the test images): penultimate
features for the data map and Grad-CAM heatmaps for the galleries, plus the per-image costs that
the time estimate is made of.

Images are decoded and resized as training did (kagglecv.ml.data: the run's cache mode, read_image)
and normalised with the checkpoint's own mean and std, so each model sees what it saw in training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kagglecv.core.checkpoint import CheckpointMeta
from kagglecv.core.errors import UserError
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.run_files import is_blend, read_blend
from kagglecv.ml.data import ImageDataset, cached_images, default_workers, make_loader, read_image, to_input
from kagglecv.report.look.cam import CamTarget, cam_target, heatmaps, overlay
from kagglecv.report.look.datamap import features

BATCH = 64
ANCHORS = 512  # test images every fold model embeds, to map its feature space onto the first fold's


def anchor_rows(n_test: int) -> np.ndarray:
    """Evenly spaced test rows: the images each fold's feature space is aligned on."""
    return (
        np.unique(np.linspace(0, n_test - 1, min(ANCHORS, n_test)).astype(int))
        if n_test
        else np.zeros(0, int)
    )


CAM_BATCH = 16


@dataclass
class Context:
    """A run and its images, checked once, and the fold models as they get loaded."""

    run: object  # report.Run
    data_dir: Path
    fold_ids: list[int]
    folds: np.ndarray  # the fold that held out each oof.csv row
    train_paths: list[Path]
    test_paths: list[Path]
    suspects: set[str]
    meta: CheckpointMeta | None  # the first fold checkpoint's (set once the first fold is loaded)
    device: torch.device
    models: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.meta.img_size

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.meta.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.meta.std, device=self.device).view(1, -1, 1, 1)
        return to_input(x, mean, std, self.device, False)


def open_context(run, data_dir: Path) -> Context:
    """Check that the run's fold models and images are all there; nothing is decoded yet."""
    if is_blend(run.dir):  # its OOF is a weighted mix: no model of its own produced it
        members = ", ".join(str(m) for m in read_blend(run.dir).get("members", []))
        raise UserError(
            f"{run.dir.name} is a blend of {members}: it has no fold models to look inside; "
            "look inside a member instead (`make report RUN=<member> LOOK=1`)"
        )
    if "fold" not in run.oof:
        raise UserError(f"{run.dir / 'oof.csv'} has no fold column, so no image has its fold model; retrain")
    folds = run.oof["fold"].to_numpy(dtype=int)
    fold_ids = sorted(set(folds.tolist()))
    for k in fold_ids:
        if not (run.dir / f"fold{k}.pt").is_file():
            raise UserError(f"run {run.dir.name} has no fold{k}.pt (oof.csv has fold {k}); retrain it")
    train_paths = [data_dir / p for p in run.oof["image"]]
    missing = [p for p in train_paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} images of {run.dir / 'oof.csv'} are not under {data_dir}/ (e.g. {missing[0]}); "
            "run from the project folder with the data prepared (make data)"
        )
    test_dir = data_dir / "test"
    test_paths = (
        sorted(p for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS) if test_dir.is_dir() else []
    )
    suspects = set()
    sus_path = run.dir / "suspect_labels.csv"
    if sus_path.is_file():
        try:
            suspects = set(pd.read_csv(sus_path, dtype={"image": str})["image"])
        except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
            suspects = set()
    ctx = Context(run, data_dir, fold_ids, folds, train_paths, test_paths, suspects, None,
                  torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
    ctx.meta = load_fold(ctx, fold_ids[0])[1]
    return ctx


def load_fold(ctx: Context, k: int):
    """fold<k>.pt rebuilt from its own meta as prediction rebuilds it (predict/ensemble.load_fold_models), in
    eval mode; one model in memory at a time."""
    from kagglecv.predict.ensemble import load_fold_models

    if k not in ctx.models:
        (fm,) = load_fold_models(ctx.run.dir, [k], ctx.device)
        ctx.models = {k: (fm.model, fm.meta)}
    return ctx.models[k]


def cost_per_image(ctx: Context, n: int = 16) -> dict:
    """Seconds per image to decode, to compute features and a heatmap, and to load one fold model."""
    k = ctx.fold_ids[0]
    t = time.perf_counter()
    ctx.models.pop(k, None)
    model, meta = load_fold(ctx, k)
    load = time.perf_counter() - t
    paths = ctx.train_paths[:n]
    t = time.perf_counter()
    batch = torch.from_numpy(np.stack([read_image(p, ctx.size) for p in paths])).permute(0, 3, 1, 2)
    decode = (time.perf_counter() - t) / len(paths)
    x = ctx.inputs(batch)
    features(model, x[:2])  # the first call pays one-off costs
    t = time.perf_counter()
    features(model, x)
    feats = (time.perf_counter() - t) / len(paths)
    cam = 0.0
    try:
        target = cam_target(model, meta.model, ctx.size, meta.in_chans)
        heatmaps(model, target, x[:1], [0])  # the first call pays the imports
        t = time.perf_counter()
        heatmaps(model, target, x[:4], [0] * len(x[:4]))
        cam = (time.perf_counter() - t) / len(x[:4])
    except UserError:
        pass  # the pass says so, once
    return {"load": load, "decode": decode, "features": feats, "cam": cam}


@dataclass
class FoldPasses:
    train_feats: dict  # fold -> features of the rows it held out, in oof.csv order
    test_feats: dict  # first fold -> features of every test image; other folds -> of the anchors
    images: dict  # oof row -> RGB uint8 as the model saw it (gallery and top-loss images)
    cams: dict  # oof row -> heatmap overlaid on that image (None: no positive evidence anywhere)
    heat: dict = field(default_factory=dict)  # oof row -> the heatmap itself (H x W, 0..1)
    cam_what: str = ""
    notes: list[str] = field(default_factory=list)


def _dataset(ctx: Context, paths: list[Path], desc: str) -> ImageDataset:
    cfg = ctx.run.config
    read, images = cached_images(
        paths, ctx.data_dir, ctx.size, cfg.get("cache", "auto"), int(cfg.get("cache_mb", 2048)), desc
    )
    return ImageDataset(read, np.zeros(len(paths), dtype=np.int64), ctx.size, images)


def _features_of(ctx: Context, model, ds: ImageDataset) -> np.ndarray:
    cuda = ctx.device.type == "cuda"
    workers = default_workers(ctx.run.config.get("workers"), ds.images is not None, cuda)
    loader = make_loader(
        ds, batch_size=BATCH, shuffle=False, workers=workers, seed=0, pin=cuda, persistent=False
    )
    out = [features(model, ctx.inputs(x)) for x, _ in loader]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def fold_passes(ctx: Context, cam_rows: pd.DataFrame) -> FoldPasses:
    """Each fold model once: features of its held-out images and of the test images, heatmaps of
    the gallery images it held out."""
    train_ds = _dataset(ctx, ctx.train_paths, "decoding train images")
    test_ds = _dataset(ctx, ctx.test_paths, "decoding test images") if ctx.test_paths else None
    fp = FoldPasses({}, {}, {}, {})
    anchors = anchor_rows(len(ctx.test_paths))
    cam_ok = True
    for k in ctx.fold_ids:
        model, meta = load_fold(ctx, k)
        idx = np.flatnonzero(ctx.folds == k)
        fp.train_feats[k] = _features_of(ctx, model, train_ds.subset(idx))
        dim = fp.train_feats[k].shape[1]
        if test_ds is None:
            fp.test_feats[k] = np.zeros((0, dim), np.float32)
        else:  # the first fold model embeds every test image; the others only the anchors
            fp.test_feats[k] = _features_of(
                ctx, model, test_ds if k == ctx.fold_ids[0] else test_ds.subset(anchors)
            )
        rows = cam_rows[cam_rows["fold"] == k]
        for r in rows["row"]:
            fp.images[int(r)] = train_ds[int(r)][0].permute(1, 2, 0).numpy()
        if not cam_ok:
            continue
        try:
            target = cam_target(model, meta.model, ctx.size, meta.in_chans)
        except UserError as e:  # the same architecture in every fold: said once
            cam_ok, fp.cam_what = False, "not available for this model"
            fp.notes.append(str(e))
            continue
        fp.cam_what = f"{meta.model}: {target.what}"
        _cams(ctx, model, target, rows, fp)
    return fp


def _cams(ctx: Context, model, target: CamTarget, rows: pd.DataFrame, fp: FoldPasses) -> None:
    for start in range(0, len(rows), CAM_BATCH):
        part = rows.iloc[start : start + CAM_BATCH]
        rgb = [fp.images[int(r)] for r in part["row"]]
        x = ctx.inputs(torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2))
        pred = [ctx.run.classes.index(p) for p in part["pred"]]
        heat = heatmaps(model, target, x, pred)
        for r, img, h in zip(part["row"], rgb, heat, strict=True):
            # all zero: Grad-CAM's ReLU found no positive evidence for the class anywhere (said in the grid)
            fp.cams[int(r)] = overlay(img, h) if h.max() > 0 else None
            fp.heat[int(r)] = h
