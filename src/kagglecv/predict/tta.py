"""Test-time augmentation chosen on out-of-fold predictions, not on the public leaderboard.

    plan = choose_tta(comp, run_dir, models)   # TTAPlan(name="hflip", flips=["hflip"], scales=[1.0], ...)

Each fold model predicts the validation images it held out under every primitive view: the image
as trained, its horizontal / vertical flip (only where the competition allows flips) and the image
at a larger scale (1.15x the training size, FixRes-style). Candidate sets are averages of views;
each is scored with the competition's metric over all OOF rows, and the best is kept only where it
beats plain prediction (ties keep the cheaper set). The choice and the table of scores are cached
in the run folder (tta_oof.json, keyed by the fold checkpoints), so later submits and blends reuse
it; submit records it and the report shows the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.metrics import HIGHER_IS_BETTER, score
from kagglecv.core.run_files import TTA_PLAN, TTAPlan, read_tta_plan
from kagglecv.ml.data import ImageDataset, cached_images, default_workers, make_loader
from kagglecv.ml.engine import predict_views
from kagglecv.predict.ensemble import fold_stepper

CACHE = TTA_PLAN
SCALE = 1.15


NO_TTA = TTAPlan(name="none (TTA=none)")  # submit --tta none


def tta_flips(cfg, hflip: bool, vflip: bool) -> list[str]:
    """The flips averaged at test time: those the competition allows, when the recipe asks for TTA."""
    return [f for f, ok in (("hflip", hflip), ("vflip", vflip)) if ok and cfg.tta]


def candidate_sets(hflip: bool, vflip: bool) -> dict[str, list[tuple[str | None, float]]]:
    """name -> the views it averages: (flip or None, scale)."""
    flips = [f for f, ok in (("hflip", hflip), ("vflip", vflip)) if ok]
    plain: list[tuple[str | None, float]] = [(None, 1.0)]
    sets = {"none": plain}
    for f in flips:
        sets[f] = plain + [(f, 1.0)]
    if len(flips) == 2:
        sets["hflip+vflip"] = plain + [("hflip", 1.0), ("vflip", 1.0)]
    sets[f"scale{SCALE:g}"] = plain + [(None, SCALE)]
    if flips:
        sets[f"{'+'.join(flips)}+scale{SCALE:g}"] = sets.get("hflip+vflip", sets[flips[0]]) + [(None, SCALE)]
    return sets


def _key(run_dir: Path, fold_ids: list[int], sets: dict) -> str:
    parts = [f"{k}:{(run_dir / f'fold{k}.pt').stat().st_mtime_ns}" for k in fold_ids]
    return json.dumps([parts, sorted(sets)])


def _view_probs(fm, ds: ImageDataset, views: list[str | None]) -> dict[str | None, np.ndarray]:
    """Softmax probabilities of one fold model for each flip view of `ds` (one decode per batch)."""
    stepper = fold_stepper(fm)
    cuda = stepper.device.type == "cuda"
    workers = default_workers(fm.config.workers, ds.images is not None, cuda)
    loader = make_loader(ds, batch_size=128, shuffle=False, workers=workers, pin=cuda)
    return predict_views(stepper, loader, views)


def oof_views(models, oof: pd.DataFrame, data_root: Path, sets: dict) -> dict:
    """(flip, scale) -> N x C OOF probabilities, each row from the fold model that held it out."""
    wanted = sorted({v for views in sets.values() for v in views}, key=lambda v: (v[1], str(v[0])))
    n, c = len(oof), models[0].meta.num_classes
    probs = {v: np.zeros((n, c)) for v in wanted}
    for fm in models:
        rows = np.flatnonzero(oof["fold"].to_numpy() == fm.fold)
        paths = [data_root / p for p in oof["image"].iloc[rows]]
        size = fm.meta.predict_size  # as the test set is predicted (progressive runs: per fold)
        for scale in sorted({s for _, s in wanted}):
            s = int(round(size * scale))
            read, images = cached_images(
                paths, data_root, s, fm.config.cache, fm.config.cache_mb, f"TTA views at {s}px"
            )
            ds = ImageDataset(read, np.zeros(len(paths)), s, images)
            flips = [f for f, sc in wanted if sc == scale]
            for f, p in _view_probs(fm, ds, flips).items():
                probs[(f, scale)][rows] = p
    return probs


def choose_tta(comp, run_dir: Path, models) -> TTAPlan:
    """The TTA set with the best OOF score (plain prediction unless a set beats it), cached."""
    sets = candidate_sets(comp.hflip, comp.vflip)
    if not models[0].config.tta:
        sets = {"none": sets["none"]}
    fold_ids = [fm.fold for fm in models]
    key = _key(run_dir, fold_ids, sets)
    cached = read_tta_plan(run_dir)
    if cached is not None and cached.key == key:
        return cached
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"image": str, "label": str})
    classes = models[0].meta.classes
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    try:
        try:
            views = oof_views(models, oof, comp.data_dir, sets)
        except RuntimeError as e:  # e.g. a ViT fixed to its input size: no larger-scale views
            console.print(f"[yellow]TTA:[/] larger-scale views skipped ({str(e).splitlines()[0][:120]})")
            sets = {k: v for k, v in sets.items() if all(s == 1.0 for _, s in v)}
            views = oof_views(models, oof, comp.data_dir, sets)
    except UserError as e:  # the training images are gone or unreadable: the recipe's flips, unchosen
        flips = tta_flips(models[0].config, comp.hflip, comp.vflip)
        console.print(f"[yellow]TTA not chosen on OOF[/] ({e}); using the flips the competition allows")
        return TTAPlan(name="+".join(flips) or "none", flips=flips, metric=comp.metric)
    scores = {
        name: score(comp.metric, y, np.mean([views[v] for v in vs], axis=0)) for name, vs in sets.items()
    }
    sign = 1 if HIGHER_IS_BETTER[comp.metric] else -1
    best = max(sets, key=lambda k: (round(sign * scores[k], 6), -len(sets[k])))
    plan = TTAPlan(
        name=best,
        flips=sorted({f for f, _ in sets[best] if f}),
        scales=sorted({s for _, s in sets[best]}),
        scores={k: round(float(v), 6) for k, v in scores.items()},
        metric=comp.metric,
        key=key,
    )
    try:
        atomic_write(run_dir / CACHE, lambda p: p.write_text(json.dumps(plan.to_json(), indent=2)))
    except OSError:
        pass  # a read-only run folder only costs the cache
    table = ", ".join(f"{k} {v:.4f}" for k, v in plan.scores.items())
    console.print(f"TTA chosen on OOF {comp.metric}: [bold]{best}[/] ({table})")
    return plan
