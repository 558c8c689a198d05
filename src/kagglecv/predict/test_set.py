"""Test-set prediction for a finished run: every fold model, averaged, with test-time flips, cached.

    models = load_fold_models(run_dir, [0, 1, 2, 3, 4], pick_device("auto"))
    out = predict_test(models, run_dir=run_dir, paths=paths, data_root=comp.data_dir, hflip=True, vflip=False)
    cached = read_test_cache(run_dir)  # core/run_files.py: later stages read it without predicting

Owns loading a run's fold models (each checkpoint carries its model name, classes, input size,
mean/std and its typed config, so nothing is guessed; a fold predicts at its checkpoint's test_size
when the recipe set one (FixRes: test larger than trained), else at the size its best epoch trained at), decoding the test images once for all folds,
TTA, and the prediction cache runs/<comp>/<run>/test_probs.npz. The cache is keyed by the test
images (names, sizes, times), the flips, the fold checkpoints and the prediction sizes, so a changed test set, other TTA
or a retrained fold never reads a stale cache; it is written atomically. An image that cannot be
decoded gets no model prediction: its row is NaN and the caller decides what stands in for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kagglecv.core.config import TrainConfig, config_from_dict
from kagglecv.core.console import console, track
from kagglecv.core.errors import UserError
from kagglecv.core.run_files import TEST_CACHE, read_test_cache, write_test_cache
from kagglecv.core.runs import load_checkpoint
from kagglecv.ml.data import ImageDataset, cached_images, default_workers, make_loader, read_image
from kagglecv.ml.engine import Stepper, predict
from kagglecv.ml.model import create_model, place


@dataclass
class FoldModel:
    """One fold's network, ready to predict, with what its checkpoint says about it."""

    fold: int
    model: torch.nn.Module
    meta: dict
    config: TrainConfig


def load_fold_models(run_dir: Path, fold_ids: list[int], device: torch.device) -> list[FoldModel]:
    """fold<k>.pt for each fold id, rebuilt from the checkpoint's own model name and config."""
    models = []
    for fold in fold_ids:
        path = run_dir / f"fold{fold}.pt"
        if not path.exists():
            raise UserError(
                f"run {run_dir.name} is missing {path.name} (its summary lists folds {list(fold_ids)}); "
                f"copy the fold back, or retrain it with `make train RUN={run_dir.name} RESUME=1`"
            )
        state, meta = load_checkpoint(path)
        try:
            cfg = config_from_dict(meta.get("config") or {})
        except UserError as e:
            raise UserError(f"{path}: {e} (the checkpoint's recipe is not one this kagglecv reads)") from None
        model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"{path}: weights do not fit {meta['model']}; the checkpoint is damaged, retrain"
            ) from None
        models.append(FoldModel(fold, place(model, device).eval(), meta, cfg))
    return models


def tta_flips(cfg: TrainConfig, hflip: bool, vflip: bool) -> list[str]:
    """The flips averaged at test time: those the competition allows, when the recipe asks for TTA."""
    return [f for f, ok in (("hflip", hflip), ("vflip", vflip)) if ok and cfg.tta]


def predict_size(meta: dict) -> int:
    """The size a fold model predicts at: its recipe's test_size, else the size it was validated at."""
    return int(meta.get("test_size") or meta["img_size"])


def cache_key(
    paths: list[Path],
    data_root: Path,
    flips: list[str],
    run_dir: Path,
    fold_ids: list[int],
    sizes: list[int] | None = None,
) -> str:
    """A digest of everything the predictions depend on: a different key means the cache is stale."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(data_root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for fold in fold_ids:
        st = (run_dir / f"fold{fold}.pt").stat()
        h.update(f"fold{fold}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(flips).encode())
    if sizes:
        h.update(f"sizes {sizes}".encode())
    return h.hexdigest()


def _decode_one(path: Path, size: int) -> np.ndarray | None:
    try:
        return read_image(path, size)
    except UserError:
        return None


def decode_test(paths: list[Path], size: int, cfg: TrainConfig, data_root: Path):
    """(paths to read, images in RAM or None, indices that failed to decode). Every image is decoded
    once here, in parallel; one that fails is left out of what the models see instead of ending the run."""
    fits = len(paths) * size * size * 3 <= cfg.cache_mb * 2**20
    in_memory = cfg.cache == "memory" or (cfg.cache == "auto" and fits)
    images = np.zeros((len(paths), size, size, 3), np.uint8) if in_memory else None
    bad = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # cv2 releases the GIL
        jobs = [pool.submit(_decode_one, p, size) for p in paths]
        for i, job in track(list(enumerate(jobs)), "decoding test images"):
            img = job.result()
            if img is None:
                bad.append(i)
            elif images is not None:
                images[i] = img
    if images is not None:
        return paths, images, bad
    skip = set(bad)
    good = [p for i, p in enumerate(paths) if i not in skip]
    read, _ = cached_images(good, data_root, size, cfg.cache, cfg.cache_mb, "caching test images")
    fill = iter(read)  # unreadable rows read a good image; their predictions are dropped
    read_paths = [read[0] if i in skip else next(fill) for i in range(len(paths))] if read else paths
    return read_paths, None, bad


def _ensemble(models: list[FoldModel], ds: ImageDataset, flips: list[str], batch_size: int) -> np.ndarray:
    cfg = models[0].config
    device = next(models[0].model.parameters()).device
    workers = default_workers(cfg.workers, ds.images is not None, device.type == "cuda")
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, pin=device.type == "cuda")
    probs = np.zeros((len(ds), models[0].meta["num_classes"]), np.float32)
    for fm in models:
        stepper = Stepper(
            fm.model,
            device=device,
            mean=fm.meta["mean"],
            std=fm.meta["std"],
            amp=fm.config.amp,
            amp_dtype_name=fm.config.amp_dtype,
        )
        probs = probs + predict(stepper, loader, flips)
    return probs / len(models)


def _views(group, paths, size, flips, extra, cfg, data_root, batch_size):
    """(probabilities of one group of same-size folds, averaged over the flips and any larger-scale
    view, indices that failed to decode)."""
    read_paths, images, bad = decode_test(paths, size, cfg, data_root)
    if len(bad) == len(paths):
        return np.zeros((len(paths), group[0].meta["num_classes"])), bad
    probs = _ensemble(group, ImageDataset(read_paths, np.zeros(len(paths)), size, images), flips, batch_size)
    for s in extra:  # a larger-scale view (FixRes): one more view in the average
        big = int(round(size * s))
        read_s, images_s, _ = decode_test(paths, big, cfg, data_root)
        scaled = _ensemble(group, ImageDataset(read_s, np.zeros(len(paths)), big, images_s), [], batch_size)
        probs = (probs * (1 + len(flips)) + scaled) / (2 + len(flips))
    return probs, bad


def predict_test(
    models: list[FoldModel],
    *,
    run_dir: Path,
    paths: list[Path],
    data_root: Path,
    hflip: bool,
    vflip: bool,
    batch_size: int = 128,
    tta: dict | None = None,
) -> dict:
    """N x C probabilities for `paths` (rows of undecodable images are NaN), from the cache when it
    matches, else predicted with every fold model and cached. Returns the cache's fields. `tta`
    (tta.choose_tta's plan) gives the flips and scales; without it, the flips the competition allows."""
    meta, cfg = models[0].meta, models[0].config
    fold_ids = [fm.fold for fm in models]
    flips = tta["flips"] if tta else tta_flips(cfg, hflip, vflip)
    extra = [s for s in (tta or {}).get("scales", [1.0]) if s != 1.0]
    sizes = [predict_size(fm.meta) for fm in models]
    key = cache_key(paths, data_root, flips + [f"scale{s:g}" for s in extra], run_dir, fold_ids, sizes)
    cached = read_test_cache(run_dir, key)
    if cached is not None:
        console.print(f"test predictions of {run_dir.name} read from its cache ({TEST_CACHE})")
        return cached
    console.print(
        f"predicting {len(paths)} test images with {len(models)} fold model(s) of run {run_dir.name}"
        + (f", TTA {'+'.join(flips + [f'scale{s:g}' for s in extra])}" if flips or extra else "")
    )
    probs, bad = np.zeros((len(paths), meta["num_classes"])), []
    for size in sorted(set(sizes)):  # folds whose best epochs came from different stages differ
        group = [fm for fm, s in zip(models, sizes, strict=True) if s == size]
        p, bad = _views(group, paths, size, flips, extra, cfg, data_root, batch_size)
        probs = probs + p * len(group) / len(models)
    probs[bad] = np.nan
    result = {
        "key": key,
        "images": [str(p.relative_to(data_root)) for p in paths],
        "classes": meta["classes"],
        "flips": flips,
        "scales": [1.0, *extra],
        "folds": list(fold_ids),
        "unreadable": [str(paths[i].relative_to(data_root)) for i in bad],
    }
    write_test_cache(run_dir, probs, result)
    return {**result, "probs": probs}
