"""Test-set prediction for a finished run (`make submit`): every fold model, averaged, with the TTA
views chosen on OOF, cached.

    models = load_fold_models(run_dir, [0, 1, 2, 3, 4], pick_device("auto"))   # ensemble.py
    out = predict_test(models, run_dir=run_dir, paths=paths, data_root=comp.data_dir, hflip=True, vflip=False)
    cached = read_test_cache(run_dir)  # core/run_files.py: later stages read it without predicting

The fold models predict through the one inference core (ensemble.py); each predicts at its
checkpoint's predict size (the recipe's test_size, FixRes, else the size its best epoch trained at),
so folds are grouped by size. Owns decoding the test images once for all folds of a size (in RAM or
through the disk cache, for test sets of any size) and the prediction cache
runs/<comp>/<run>/test_probs.npz. The cache is keyed by the test
images (names, sizes, times), the flips, the fold checkpoints and the prediction sizes, so a changed test set, other TTA
or a retrained fold never reads a stale cache; it is written atomically. An image that cannot be
decoded gets no model prediction: its row is NaN and the caller decides what stands in for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kagglecv.core.config import TrainConfig
from kagglecv.core.console import console, track
from kagglecv.core.errors import UserError
from kagglecv.core.run_files import TEST_CACHE, read_test_cache, write_test_cache
from kagglecv.ml.data import ImageDataset, cached_images, default_workers, make_loader, read_image
from kagglecv.predict.ensemble import Ensemble, FoldModel, mix_scale_view
from kagglecv.predict.tta import TTAPlan, tta_flips


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


def _probs(
    ens: Ensemble, ds: ImageDataset, flips: list[str], cfg: TrainConfig, batch_size: int
) -> np.ndarray:
    cuda = next(ens.models[0].parameters()).device.type == "cuda"
    workers = default_workers(cfg.workers, ds.images is not None, cuda)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, pin=cuda)
    return ens.probs(loader, flips)


def _views(group: list[FoldModel], paths, size, plan: TTAPlan, data_root, batch_size):
    """(probabilities of one group of same-size folds, averaged over the flips and any larger-scale
    view, indices that failed to decode)."""
    cfg = group[0].config
    ens = Ensemble.from_folds(group, flips=plan.flips, scales=plan.scales)
    read_paths, images, bad = decode_test(paths, size, cfg, data_root)
    if len(bad) == len(paths):
        return np.zeros((len(paths), ens.meta.num_classes)), bad
    probs = _probs(
        ens, ImageDataset(read_paths, np.zeros(len(paths)), size, images), plan.flips, cfg, batch_size
    )
    for s in ens.extra_scales:  # a larger-scale view (FixRes): one more view in the average
        big = int(round(size * s))
        read_s, images_s, _ = decode_test(paths, big, cfg, data_root)
        scaled = _probs(ens, ImageDataset(read_s, np.zeros(len(paths)), big, images_s), [], cfg, batch_size)
        probs = mix_scale_view(probs, scaled, len(plan.flips))
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
    tta: TTAPlan | None = None,
) -> dict:
    """N x C probabilities for `paths` (rows of undecodable images are NaN), from the cache when it
    matches, else predicted with every fold model and cached. Returns the cache's fields. `tta`
    (tta.choose_tta's plan) gives the flips and scales; without it, the flips the competition allows."""
    meta = models[0].meta
    fold_ids = [fm.fold for fm in models]
    plan = tta or TTAPlan(name="flips", flips=tta_flips(models[0].config, hflip, vflip))
    flips, extra = plan.flips, plan.extra_scales
    sizes = [fm.meta.predict_size for fm in models]
    key = cache_key(paths, data_root, flips + [f"scale{s:g}" for s in extra], run_dir, fold_ids, sizes)
    cached = read_test_cache(run_dir, key)
    if cached is not None:
        console.print(f"test predictions of {run_dir.name} read from its cache ({TEST_CACHE})")
        return cached
    console.print(
        f"predicting {len(paths)} test images with {len(models)} fold model(s) of run {run_dir.name}"
        + (f", TTA {'+'.join(flips + [f'scale{s:g}' for s in extra])}" if flips or extra else "")
    )
    probs, bad = np.zeros((len(paths), meta.num_classes)), []
    for size in sorted(set(sizes)):  # folds whose best epochs came from different stages differ
        group = [fm for fm, s in zip(models, sizes, strict=True) if s == size]
        p, bad = _views(group, paths, size, plan, data_root, batch_size)
        probs = probs + p * len(group) / len(models)
    probs[bad] = np.nan
    result = {
        "key": key,
        "images": [str(p.relative_to(data_root)) for p in paths],
        "classes": meta.classes,
        "flips": flips,
        "scales": [1.0, *extra],
        "folds": list(fold_ids),
        "unreadable": [str(paths[i].relative_to(data_root)) for i in bad],
    }
    write_test_cache(run_dir, probs, result)
    return {**result, "probs": probs}
